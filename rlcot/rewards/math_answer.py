"""Math answer reward: final-answer extraction, math-verify equivalence, exact numeric fallback."""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from rlcot.rewards.base import RewardInput, RewardOutput, map_items
from rlcot.rewards.pool import RewardPool

WORKER_PRELOAD = ("math_verify",)

# Numbers whose digits + |exponent| exceed this are compared as exact Decimals instead of
# Fractions, so "1e100000" or a 10^5-digit integer never expands into a giant integer.
_MAX_FRACTION_SIZE = 4000
_BOX_MARKERS = ("\\boxed", "\\fbox")
_ANSWER_IS = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*", re.IGNORECASE)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Unambiguous and possessive: no backtracking blow-up on a 10^5-digit non-number.
_DECIMAL = re.compile(r"[+-]?+(?:\d++(?:\.\d*+)?+|\.\d++)(?:[eE][+-]?+\d++)?+")
# "18 dollars", "10\text{ cm}", "2.5\%": a number followed only by unit words.
_NUMBER_WITH_UNITS = re.compile(
    r"\$?([+-]?\d[\d,]*+(?:\.\d++)?+)(?:\s*+(?:\\%|%|[A-Za-z]++\.?|\\text\{[A-Za-z .]*+\}))*+")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")


def _balanced(text: str, start: int) -> str | None:
    """Content of the brace group opening at text[start] == '{', or None if unclosed."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:i]
    return None


def _last_boxed(text: str) -> str | None:
    best = None
    for marker in _BOX_MARKERS:
        at = text.rfind(marker)
        if at < 0 or (best is not None and at < best[0]):
            continue
        rest = at + len(marker)
        if rest < len(text) and text[rest] == "{":
            content = _balanced(text, rest)
        else:  # "\boxed 5"
            m = re.match(r"\s+([^\s$]+)", text[rest:rest + 200])
            content = m.group(1) if m else None
        if content is not None:
            best = (at, content)
    return None if best is None else best[1]


def _last_tag(text: str, tag: str) -> str | None:
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    opened = text.rfind(f"<{tag}>", 0, close)
    return None if opened < 0 else text[opened + len(tag) + 2:close]


def _clean(ans: str) -> str:
    ans = ans.strip()
    for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if ans.startswith(left) and ans.endswith(right) and len(ans) >= len(left) + len(right):
            ans = ans[len(left):len(ans) - len(right)].strip()
    return ans.rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """Final answer of a completion: <answer> tags (and \\boxed inside them), else the last
    \\boxed{}, else GSM8K's `#### N`, else "the answer is X"; None if there is none."""
    tagged = _last_tag(text, "answer")
    if tagged is not None:
        inner = _untagged_answer(tagged)
        return inner if inner is not None else _clean(tagged)
    return _untagged_answer(text)


def _untagged_answer(text: str) -> str | None:
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed)
    at = text.rfind("####")
    if at >= 0:
        return _clean(text[at + 4:].strip().split("\n", 1)[0])
    matches = list(_ANSWER_IS.finditer(text[-2000:]))  # the phrase sits near the end
    if matches:
        line = text[-2000:][matches[-1].end():].split("\n", 1)[0]
        line = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0]  # end of sentence, not "0.5"
        return _clean(line) or None
    return None


def _normalize(ans: str) -> str:
    ans = _THOUSANDS.sub("", ans.replace("{,}", ","))
    for junk in ("\\!", "\\,", "\\;", "\\$", "\\left", "\\right", "$"):
        ans = ans.replace(junk, "")
    return ans.replace(" ", "")


def _decimal_number(s: str) -> Fraction | Decimal | None:
    if not _DECIMAL.fullmatch(s):
        return None
    try:
        d = Decimal(s)  # exact: construction and comparison never round to the context
    except (InvalidOperation, ArithmeticError):
        return None
    digits, exponent = len(d.as_tuple().digits), d.as_tuple().exponent
    return d if digits + abs(exponent) > _MAX_FRACTION_SIZE else Fraction(d)


def to_number(ans: str) -> Fraction | Decimal | None:
    """Exact value of a plain number, a/b or \\frac{a}{b} (after normalization), else None."""
    s = _normalize(ans)
    m = _FRAC.fullmatch(s.lstrip("+-"))
    if m:
        num, den = _decimal_number(m.group(1)), _decimal_number(m.group(2))
        sign = -1 if s.startswith("-") else 1
    elif s.count("/") == 1:
        num, den = (_decimal_number(p) for p in s.split("/"))
        sign = 1
    else:
        return _decimal_number(s)
    if not (isinstance(num, Fraction) and isinstance(den, Fraction)) or den == 0:
        return None
    return sign * num / den


def _number_or_units(ans: str) -> Fraction | Decimal | None:
    value = to_number(ans)
    if value is None:
        m = _NUMBER_WITH_UNITS.fullmatch(ans.strip())
        value = to_number(m.group(1)) if m else None
    return value


def numbers_equal(a: str, b: str) -> bool | None:
    """Exact numeric equality (unit words ignored); None when either side is not a number."""
    x, y = _number_or_units(a), _number_or_units(b)
    if x is None or y is None:
        return None
    if type(x) is not type(y):
        return False  # a huge Decimal never equals a modest Fraction
    return x == y


@functools.lru_cache(maxsize=4096)
def _mv_parse(expr: str):
    import math_verify  # lazy: sympy import costs ~0.5 s
    # Timeouts are ours (pool's per-item guard); math-verify's own would reset our timer.
    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    parsed = math_verify.parse(f"${expr}$", parsing_timeout=None)
    return parsed or math_verify.parse(expr, parsing_timeout=None)


def answers_equivalent(gold: str, pred: str, *, use_math_verify: bool = True,
                       max_chars: int = 1000) -> tuple[bool, str]:
    """(equivalent?, deciding method)."""
    if _normalize(gold) == _normalize(pred):
        return True, "string"
    if numbers_equal(gold, pred):
        return True, "numeric"
    if not use_math_verify or len(gold) > max_chars or len(pred) > max_chars:
        return False, "numeric"
    if "," not in gold:  # "1,000" is a thousands separator only if the gold has no list
        pred = _THOUSANDS.sub("", pred)
    import math_verify
    ok = math_verify.verify(_mv_parse(gold), _mv_parse(pred), timeout_seconds=None)
    return bool(ok), "math_verify"


def gold_answer(gold: str) -> str:
    """A dataset's gold field may hold a worked solution (`#### N`, \\boxed{}): reduce it."""
    if "####" in gold or any(m in gold for m in _BOX_MARKERS) or "</answer>" in gold:
        found = extract_answer(gold)
        if found is not None:
            return found
    return gold.strip()


def grade_item(completion: str, gold: str, use_math_verify: bool,
               max_chars: int) -> tuple[float, dict]:
    pred = extract_answer(completion)
    gold = gold_answer(gold)
    if pred is None:
        return 0.0, {"pred": None}
    ok, method = answers_equivalent(gold, pred, use_math_verify=use_math_verify,
                                    max_chars=max_chars)
    return float(ok), {"pred": pred[:200], "method": method}


def math_accuracy(batch: RewardInput, *, pool: RewardPool | None = None, answer_key: str = "answer",
                  use_math_verify: bool = True, max_answer_chars: int = 1000,
                  timeout_s: float = 10.0, fallback: float = 0.0) -> RewardOutput:
    """1 if the completion's final answer equals example[answer_key], else 0. Range {0, 1}
    (`fallback` for items that time out or fail). Answers longer than `max_answer_chars` are
    compared by the exact numeric rule only."""
    items = []
    for i, ex in enumerate(batch.examples):
        if answer_key not in ex:
            raise KeyError(f"math_accuracy: example {i} has no {answer_key!r} field: {sorted(ex)}")
        items.append((batch.completions[i], str(ex[answer_key]), use_math_verify, max_answer_chars))
    return map_items(grade_item, items, pool=pool, timeout_s=timeout_s, fallback=fallback)
