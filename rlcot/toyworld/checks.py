"""Toy-world checkers on completion text: answer correctness, strict R1-Zero format, checking
steps, second-language share, and a batch summary of them.

All are linear-time string scans (no regex backtracking), safe on arbitrary 100k-character
model output. Completions are what follows the prompt; a prompt ending in "<think>" is not
assumed (the toy world's prompts end with "Assistant:").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from rlcot.rewards.format import strict_format as _strict_format
from rlcot.toyworld.solutions import LANGUAGES, SECOND_LANGUAGE

_INTEGER = re.compile(r"[+-]?[0-9]+")
_WORD = re.compile(r"[^\W\d_]+")
_CHECK_WORDS = frozenset(words["check"] for words in LANGUAGES.values())
_WORD_LANGUAGE = {w: lang for lang, words in LANGUAGES.items()
                  for phrase in words.values() for w in _WORD.findall(phrase.lower())}


def word_languages() -> dict[str, str]:
    """Lowercase word -> language label ('en', 'xx') of every connective word in the world
    (for rlcot.rewards.language.vocabulary_detector)."""
    return dict(_WORD_LANGUAGE)


def extract_answer(completion: str) -> str | None:
    """Stripped content of the last `<answer>...</answer>` block, or None without one."""
    close = completion.rfind("</answer>")
    if close < 0:
        return None
    opened = completion.rfind("<answer>", 0, close)
    return None if opened < 0 else completion[opened + len("<answer>"):close].strip()


def _normal(text: str) -> str | None:
    """'0612' -> '612', '+5' -> '5', '-0' -> '0'; None if not an integer (ASCII digits).
    Compared as strings: no int() of a huge digit string."""
    if not _INTEGER.fullmatch(text):
        return None
    negative = text[0] == "-"
    digits = text.lstrip("+-").lstrip("0") or "0"
    return "-" + digits if negative and digits != "0" else digits


def is_correct(completion: str, answer: str | int) -> bool:
    """Whether the last <answer> block holds the gold integer (leading zeros and a '+' sign
    allowed; anything else in the block makes it wrong). No <answer> block: wrong."""
    got = extract_answer(completion)
    gold = _normal(str(answer).strip())
    if gold is None:
        raise ValueError(f"gold answer {answer!r} is not an integer")
    return got is not None and _normal(got) == gold


def strict_format(completion: str) -> bool:
    """R1-Zero format, strictly: `<think> ... </think> <answer> ... </answer>`, each tag once,
    nothing outside (rlcot.rewards.format.strict_format)."""
    return _strict_format(completion)


def chain_of_thought(completion: str) -> str:
    """The reasoning part: inside <think> (up to </think> or <answer>), or the text before
    any <answer> when there is no <think>."""
    start = completion.find("<think>")
    start = 0 if start < 0 else start + len("<think>")
    ends = [i for i in (completion.find("</think>", start), completion.find("<answer>", start))
            if i >= 0]
    return completion[start:min(ends)] if ends else completion[start:]


def has_check_step(completion: str) -> bool:
    """Whether the reasoning contains a checking step: the word "check" (in any of the
    world's languages) as a whole word."""
    return any(w in _CHECK_WORDS for w in _WORD.findall(chain_of_thought(completion).lower()))


def second_language_share(completion: str, language: str = SECOND_LANGUAGE) -> float:
    """Share of the reasoning's words that are `language`'s words; 0.0 when it has no words.
    Words are letter runs (digits and symbols are not words); unknown words count as words
    of no language."""
    found = _WORD.findall(chain_of_thought(completion).lower())
    if not found:
        return 0.0
    return sum(_WORD_LANGUAGE.get(w) == language for w in found) / len(found)


def summarize(completions: Sequence[str], answers: Sequence[str | int],
              lengths: Sequence[int] | None = None) -> dict[str, float]:
    """Rates over a batch: accuracy, format, check_rate, accuracy with / without a check,
    mean second-language share, mixed_rate (share > 0) and mean tokens (when lengths given)."""
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    if not completions:
        raise ValueError("summarize needs at least one completion")
    correct = np.array([is_correct(c, a) for c, a in zip(completions, answers)])
    checked = np.array([has_check_step(c) for c in completions])
    share = np.array([second_language_share(c) for c in completions])
    out = {
        "accuracy": float(correct.mean()),
        "format": float(np.mean([strict_format(c) for c in completions])),
        "check_rate": float(checked.mean()),
        "accuracy_with_check": float(correct[checked].mean()) if checked.any() else float("nan"),
        "accuracy_without_check": (float(correct[~checked].mean()) if (~checked).any()
                                   else float("nan")),
        "second_language_share": float(share.mean()),
        "mixed_rate": float((share > 0).mean()),
    }
    if lengths is not None:
        if len(lengths) != len(completions):
            raise ValueError(f"{len(lengths)} lengths for {len(completions)} completions")
        out["mean_tokens"] = float(np.mean(lengths))
    return out


def rates_of(labels: Sequence[Mapping[str, bool]]) -> dict[str, float]:
    """Mean of each boolean label over corpus documents (see corpus.Document.labels)."""
    if not labels:
        raise ValueError("rates_of needs at least one label dict")
    return {k: float(np.mean([bool(d[k]) for d in labels])) for k in labels[0]}
