"""DeepSeek-R1 language-consistency reward: the share of chain-of-thought words in the target
language, with a pluggable word -> language detector (script-based by default)."""

from __future__ import annotations

import re
from typing import Callable, Mapping

from rlcot.rewards.base import RewardInput, RewardOutput, from_values
from rlcot.rewards.format import TAGS, with_prompt_think

Detector = Callable[[str], "str | None"]  # word -> language label, None for "no language"

# (first, last, script) code-point ranges; anything else with letters is "other".
_SCRIPT_RANGES = (
    (0x0041, 0x024F, "latin"), (0x1E00, 0x1EFF, "latin"),
    (0x0370, 0x03FF, "greek"), (0x0400, 0x052F, "cyrillic"),
    (0x0590, 0x05FF, "hebrew"), (0x0600, 0x06FF, "arabic"),
    (0x0900, 0x097F, "devanagari"), (0x0E00, 0x0E7F, "thai"),
    (0x1100, 0x11FF, "cjk"), (0x3040, 0x30FF, "cjk"), (0x3400, 0x4DBF, "cjk"),
    (0x4E00, 0x9FFF, "cjk"), (0xAC00, 0xD7AF, "cjk"), (0xF900, 0xFAFF, "cjk"),
    (0x20000, 0x2FA1F, "cjk"),
)
_CJK = "\u1100-\u11ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
# A CJK character is a word on its own (no spaces between words); other words are letter runs.
_WORDS = re.compile(f"[{_CJK}]|[^\\W\\d_{_CJK}]+")


def script_of(word: str) -> str | None:
    """Script of a word's first letter: 'latin', 'cjk', 'cyrillic', ... or 'other'."""
    cp = ord(word[0])
    for lo, hi, script in _SCRIPT_RANGES:
        if lo <= cp <= hi:
            return script
    return "other"


def vocabulary_detector(vocab: Mapping[str, str], default: str | None = None) -> Detector:
    """Detector from a word list (e.g. a synthetic second language): lowercase word -> label."""
    table = {w.lower(): lang for w, lang in vocab.items()}
    return lambda word: table.get(word.lower(), default)


DETECTORS: dict[str, Detector] = {"script": script_of}


def words(text: str) -> list[str]:
    return _WORDS.findall(text)


def chain_of_thought(text: str) -> str:
    """Text of the <think> block (to </think>, <answer> or the end when unclosed)."""
    start = text.find("<think>")
    start = 0 if start < 0 else start + len("<think>")
    ends = [i for i in (text.find("</think>", start), text.find("<answer>", start)) if i >= 0]
    return text[start:min(ends)] if ends else text[start:]


def consistency(text: str, target: str, detector: Detector, empty_value: float) -> tuple[float, dict]:
    for tag in TAGS:  # template markup is not language
        text = text.replace(tag, " ")
    labels = [detector(w) for w in words(text)]
    labels = [lab for lab in labels if lab is not None]
    if not labels:
        return empty_value, {"n_words": 0}
    hits = sum(lab == target for lab in labels)
    return hits / len(labels), {"n_words": len(labels), "n_target": hits}


def language_consistency(batch: RewardInput, *, target: str = "latin",
                         detector: str | Detector = "script", section: str = "think",
                         empty_value: float = 0.0,
                         think_in_prompt: bool | str = "auto") -> RewardOutput:
    """Share of words (CJK: characters) of the chain of thought (`section='think'`) or of the
    whole completion (`'completion'`) whose detected language is `target`. Range [0, 1];
    `empty_value` when there are no words."""
    if isinstance(detector, str):
        if detector not in DETECTORS:
            raise ValueError(f"language_consistency: unknown detector {detector!r}; "
                             f"known: {sorted(DETECTORS)}")
        detector = DETECTORS[detector]
    if section not in ("think", "completion"):
        raise ValueError(f"language_consistency: section must be 'think' or 'completion', got {section!r}")
    values, details = [], []
    for prompt, completion in zip(batch.prompts, batch.completions):
        text = with_prompt_think(prompt, completion, think_in_prompt)
        v, d = consistency(chain_of_thought(text) if section == "think" else text, target,
                           detector, empty_value)
        values.append(v)
        details.append(d)
    return from_values(values, details)
