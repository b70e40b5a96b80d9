"""DeepSeek-R1 language-consistency reward: the share of chain-of-thought words in the target
language, with a pluggable word -> language detector (script-based by default).

Words: maximal runs of letters of one script (combining marks stay with their letter, so
"été" written with combining accents and "हिन्दी" are one word each; a script change starts a
new word, so "carryперенос" is two); a CJK character is a word on its own. Digits of any
script, numerals such as "½", "²" or "Ⅻ", punctuation, math operators, and letters used as math
symbols (𝑥, ℝ, ℓ, the micro sign µ) belong to no language and are not words. Greek letters are
Greek words (π counts as one).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Callable, Mapping

import numpy as np

from rlcot.rewards.base import RewardInput, RewardOutput, from_values
from rlcot.rewards.format import TAGS, with_prompt_think

Detector = Callable[[str], "str | None"]  # word -> language label, None for "no language"

# (first, last, script) code-point ranges of letters; letters elsewhere are "other". Checked in
# order: the letters used as math symbols come first and have no script.
_SCRIPT_RANGES = (
    (0x00B5, 0x00B5, None),  # micro sign
    (0x2070, 0x209F, None), (0x2100, 0x214F, None),  # super/subscripts, letterlike symbols
    (0x1D400, 0x1D7FF, None), (0x1EE00, 0x1EEFF, None),  # mathematical alphanumerics
    (0x0041, 0x024F, "latin"), (0x0250, 0x02AF, "latin"), (0x1D00, 0x1DBF, "latin"),
    (0x1E00, 0x1EFF, "latin"), (0x2C60, 0x2C7F, "latin"), (0xA720, 0xA7FF, "latin"),
    (0xFF21, 0xFF5A, "latin"),
    (0x0370, 0x03FF, "greek"), (0x1F00, 0x1FFF, "greek"),
    (0x0400, 0x052F, "cyrillic"), (0x1C80, 0x1C8F, "cyrillic"), (0x2DE0, 0x2DFF, "cyrillic"),
    (0xA640, 0xA69F, "cyrillic"),
    (0x0590, 0x05FF, "hebrew"), (0x0600, 0x06FF, "arabic"),
    (0x0900, 0x097F, "devanagari"), (0x0E00, 0x0E7F, "thai"),
    (0x1100, 0x11FF, "cjk"), (0x3040, 0x30FF, "cjk"), (0x3400, 0x4DBF, "cjk"),
    (0x4E00, 0x9FFF, "cjk"), (0xAC00, 0xD7AF, "cjk"), (0xF900, 0xFAFF, "cjk"),
    (0xFF66, 0xFF9F, "cjk"), (0x20000, 0x2FA1F, "cjk"),
)
_MARK = "mark"
# Runs of anything but whitespace, controls and ASCII digits/punctuation: an ASCII run is then
# one word of ASCII letters, any other run is split character by character.
_RUNS = re.compile(r"[^\x00-\x20\x7f!-@\[-`{-~]+")


def _script(cp: int) -> str | None:
    for lo, hi, script in _SCRIPT_RANGES:
        if lo <= cp <= hi:
            return script
    return "other"


@functools.lru_cache(maxsize=8192)
def _kind(ch: str) -> str | None:
    """A letter's script (None for letters used as math symbols), _MARK for a combining mark,
    None for anything else (digits, numerals, punctuation, symbols: word boundaries)."""
    category = unicodedata.category(ch)
    if category[0] == "M":
        return _MARK
    return _script(ord(ch)) if category[0] == "L" else None


def _split(run: str) -> list[str]:
    out, word, script = [], "", None
    for ch in run:
        kind = _kind(ch)
        if kind == _MARK:
            word += ch if word else ""
            continue
        if word and kind != script:
            out.append(word)
            word = ""
        if kind == "cjk":
            out.append(ch)
        elif kind is not None:
            word += ch
        script = kind if kind != "cjk" else None
    if word:
        out.append(word)
    return out


def words(text: str) -> list[str]:
    """The words of a text (see the module docstring), in order."""
    out: list[str] = []
    for m in _RUNS.finditer(text):
        run = m.group()
        if run.isascii():
            out.append(run)
        else:
            out += _split(run)
    return out


def script_of(word: str) -> str | None:
    """Script of a word's first letter: 'latin', 'cjk', 'cyrillic', ... 'other' (a script
    without a label here), or None (not a letter of a language: 𝑥, ℝ, a digit)."""
    kind = _kind(word[0]) if word else None
    return None if kind == _MARK else kind


def vocabulary_detector(vocab: Mapping[str, str], default: str | None = None) -> Detector:
    """Detector from a word list (e.g. a synthetic second language): lowercase word -> label."""
    table = {w.lower(): lang for w, lang in vocab.items()}
    return lambda word: table.get(word.lower(), default)


DETECTORS: dict[str, Detector] = {"script": script_of}


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
    whole completion (`'completion'`) whose detected language is `target`, among the words
    the detector gives a language. Range [0, 1]; `empty_value` when there are none. Metrics:
    mixed_share, the mean share of words not in `target` (0 for a text without words), and
    mixed_rate, the share of texts with at least one."""
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
    other_N = np.array([(d["n_words"] - d["n_target"]) / d["n_words"] if d["n_words"] else 0.0
                        for d in details])
    metrics = ({"mixed_share": float(other_N.mean()), "mixed_rate": float((other_N > 0).mean())}
               if details else {})
    return from_values(values, details, **metrics)
