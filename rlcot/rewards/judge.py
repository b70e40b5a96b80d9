"""AI-judge reward (RLAIF): a model grades each completion with a rubric; its score is parsed.

The judge model is any `generate(prompts) -> texts` callable, e.g. an rlcot model behind the
rollout engine; this module only builds the rubric prompts and parses the replies.
"""

from __future__ import annotations

import json
import re
import string
from typing import Callable, Sequence

from rlcot.rewards.base import RewardInput, RewardOutput, from_values

Generate = Callable[[list[str]], Sequence[str]]

DEFAULT_RUBRIC = """You are a strict grader. Grade the answer to the question below.

Question:
{prompt}

Reference answer (may be empty):
{reference}

Answer to grade:
{completion}

Judge correctness first, then the soundness and clarity of the reasoning.
End your reply with one line of the form "Score: N/10", N an integer from 0 to 10."""

_FIELDS = {"prompt", "completion", "reference"}
_NUM = r"[-+]?\d+(?:\.\d+)?"
_KEYWORD = re.compile(
    rf"(?:score|rating|grade)\W{{0,6}}?(?:is\W{{0,3}}?|of\W{{0,3}}?)?({_NUM})(?:\s*(?:/|out of)\s*({_NUM}))?",
    re.IGNORECASE)
_FRACTION = re.compile(rf"({_NUM})\s*(?:/|out of)\s*({_NUM})", re.IGNORECASE)
_BOLD = re.compile(rf"\*\*\s*({_NUM})\s*\*\*")
_JSON = re.compile(r"\{[^{}]{0,2000}\}")
_JSON_KEYS = ("score", "rating", "grade")


def _normalize(num: str, den: str | None, scale_min: float, scale_max: float) -> float | None:
    v = float(num)
    if den is not None:
        d = float(den)
        return v / d if d > 0 and 0.0 <= v <= d else None
    if scale_max > 1 and "." in num and 0.0 <= v <= 1.0:
        return v  # "rating: 0.7" is already a fraction
    if scale_min <= v <= scale_max:
        return (v - scale_min) / (scale_max - scale_min)
    return None


def _from_json(text: str) -> tuple[str, str | None] | None:
    for m in reversed(list(_JSON.finditer(text))):
        try:
            obj = json.loads(m.group(0))
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        for key, value in obj.items():
            if str(key).lower() in _JSON_KEYS and not isinstance(value, bool):
                if isinstance(value, (int, float)):
                    return repr(value), None
                if isinstance(value, str):
                    frac = _FRACTION.fullmatch(value.strip())
                    if frac:
                        return frac.group(1), frac.group(2)
                    if re.fullmatch(_NUM, value.strip()):
                        return value.strip(), None
    return None


def parse_score(text: str, *, scale_min: float = 0.0, scale_max: float = 10.0) -> float | None:
    """Judge reply -> score in [0, 1], or None when no in-range score is found.

    Looks, in order, for: a JSON object with a score/rating/grade key; the last "score: N",
    "rating: N", "grade N/M"; the last "N/M" or "N out of M"; the last "**N**"; a reply that is
    only a number. N/M means N/M. A bare N is mapped from [scale_min, scale_max] to [0, 1],
    except a decimal in [0, 1] on a larger scale, which is taken as already normalized.
    Out-of-range scores give None.
    """
    if scale_max <= scale_min:
        raise ValueError(f"parse_score needs scale_min < scale_max, got {scale_min}, {scale_max}")
    text = text[-20000:]  # the verdict is at the end; bounds the regex work
    found = _from_json(text)
    if found is None:
        for pattern in (_KEYWORD, _FRACTION):
            matches = list(pattern.finditer(text))
            if matches:
                found = matches[-1].group(1), matches[-1].group(2)
                break
    if found is None:
        matches = list(_BOLD.finditer(text))
        stripped = text.strip().rstrip(".")
        if matches:
            found = matches[-1].group(1), None
        elif re.fullmatch(_NUM, stripped):
            found = stripped, None
    if found is None:
        return None
    return _normalize(found[0], found[1], scale_min, scale_max)


def _check_template(template: str) -> None:
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    if not fields <= _FIELDS or "completion" not in fields:
        raise ValueError(f"judge template fields {sorted(fields)} must include 'completion' and "
                         f"be among {sorted(_FIELDS)}")


def ai_judge(batch: RewardInput, *, generate: Generate, template: str = DEFAULT_RUBRIC,
             scale_min: float = 0.0, scale_max: float = 10.0, fallback: float = 0.0,
             reference_key: str = "answer", max_completion_chars: int = 8000,
             model: str | None = None, max_new_tokens: int = 16) -> RewardOutput:
    """Judge score normalized to [0, 1]; `fallback` when the reply has no in-range score or the
    judge call fails (counted as n_parse_failures / n_errors). Range [0, 1]. model: a model
    source to judge with (rlcot.rewards.models: run greedily through rlcot's sampler, replies
    of at most max_new_tokens); without it the combiner's `judge_generate` judges."""
    _check_template(template)
    prompts = [template.format(prompt=p, completion=c[-max_completion_chars:],
                               reference=str(ex.get(reference_key, "")))
               for p, c, ex in zip(batch.prompts, batch.completions, batch.examples)]
    n = len(prompts)
    try:
        replies = list(generate(prompts)) if n else []
        if len(replies) != n:
            raise ValueError(f"judge generate returned {len(replies)} texts for {n} prompts")
    except Exception as e:  # noqa: BLE001 - a failing judge must not crash the run
        details = [{"status": "error", "message": repr(e)[:500]} for _ in range(n)]
        return from_values([fallback] * n, details, n_errors=float(n), n_parse_failures=0.0)
    values, details = [], []
    for reply in replies:
        score = parse_score(str(reply), scale_min=scale_min, scale_max=scale_max)
        values.append(fallback if score is None else score)
        details.append({"judge": str(reply)[-500:], "parsed": score is not None})
    n_fail = sum(not d["parsed"] for d in details)
    return from_values(values, details, n_errors=0.0, n_parse_failures=float(n_fail))
