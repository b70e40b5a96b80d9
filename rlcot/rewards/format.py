"""R1-Zero template rewards: `<think>...</think><answer>...</answer>`, strict, soft and tag count."""

from __future__ import annotations

import re

from rlcot.rewards.base import RewardInput, RewardOutput, from_values

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_SEAM = re.compile(r"</think>\s*<answer>")


def with_prompt_think(prompt: str, completion: str, think_in_prompt: bool | str) -> str:
    """R1-Zero prompts often end with "<think>": the completion then starts inside it."""
    if think_in_prompt == "auto":
        think_in_prompt = prompt.rstrip().endswith("<think>")
    if think_in_prompt and not completion.lstrip().startswith("<think>"):
        return "<think>" + completion
    return completion


def _positions(text: str) -> list[int] | None:
    """Indices of the four tags in order, each the first after the previous one; None if any
    is missing. Linear time (no regex backtracking on 100k-character completions)."""
    at, found = 0, []
    for tag in TAGS:
        at = text.find(tag, at)
        if at < 0:
            return None
        found.append(at)
        at += len(tag)
    return found


def strict_format(text: str) -> bool:
    """Exactly one of each tag, in order; nothing but whitespace around and between the two
    blocks; non-empty thinking and answer."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    pos = _positions(text)
    if pos is None:
        return False
    t0, t1, a0, a1 = pos
    return (not text[:t0].strip() and not text[a1 + len(TAGS[3]):].strip()
            and not text[t1 + len(TAGS[1]):a0].strip()
            and bool(text[t0 + len(TAGS[0]):t1].strip()) and bool(text[a0 + len(TAGS[2]):a1].strip()))


def soft_format(text: str) -> bool:
    """Like the regex `<think>.*?</think>\\s*<answer>.*?</answer>` found anywhere in the text
    (anything may surround the two blocks), in linear time."""
    first_think = text.find("<think>")
    last_close = text.rfind("</answer>")
    if first_think < 0 or last_close < 0:
        return False
    for m in _SEAM.finditer(text, first_think + len(TAGS[0])):
        return m.end() <= last_close  # the earliest seam leaves the most room for </answer>
    return False


def tag_count(text: str) -> float:
    """0.25 for each of the four tags that appears exactly once."""
    return 0.25 * sum(text.count(tag) == 1 for tag in TAGS)


_MODES = {"strict": strict_format, "soft": soft_format}


def r1_format(batch: RewardInput, *, mode: str = "strict",
              think_in_prompt: bool | str = "auto") -> RewardOutput:
    """1 if the completion follows the R1-Zero template (`mode` 'strict' or 'soft'), else 0.
    Range {0, 1}."""
    if mode not in _MODES:
        raise ValueError(f"r1_format: mode must be one of {sorted(_MODES)}, got {mode!r}")
    check = _MODES[mode]
    values = [float(check(with_prompt_think(p, c, think_in_prompt)))
              for p, c in zip(batch.prompts, batch.completions)]
    return from_values(values)


def r1_tag_count(batch: RewardInput, *, think_in_prompt: bool | str = "auto") -> RewardOutput:
    """0.25 per R1 tag present exactly once. Range [0, 1] in steps of 0.25."""
    values = [tag_count(with_prompt_think(p, c, think_in_prompt))
              for p, c in zip(batch.prompts, batch.completions)]
    return from_values(values)
