"""The world as data for the loop: a random-access source of examples in rlcot's common schema
(usable as rlcot.data.pipeline.PromptPipeline's source), and preference pairs for RLHF/DPO."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlcot.toyworld.corpus import WorldConfig, example, prompt_text
from rlcot.toyworld.solutions import (SECOND_LANGUAGE, TARGET_LANGUAGE, Style, write_solution)
from rlcot.toyworld.tasks import problems

DEFAULT_SIZES = {"train": 10_000, "test": 500}
# "solution" of each row: the clean reference (English, no check), or a checked solution in
# the target language only (the R1 study's cold-start data).
SOLUTIONS = ("reference", "checked")
_CHECKED_STREAM = 13


def checked_solutions(world: WorldConfig, split: str, n: int) -> list[str]:
    """Completions of the split's first n problems written as the world writes its checked
    solutions, but single-language: each main step drops its incoming carry with the world's
    flaw_rate, each step is followed by its check (which keeps the carry), every word is in
    the target language, in the R1-Zero format. Always right; a function of (world, split,
    n), prefix-stable."""
    rng = np.random.default_rng([world.seed, _CHECKED_STREAM])
    out = []
    for p in problems(world.task, split, n, world.seed):
        d = p.num_digits
        drop = tuple(bool(x) for x in rng.random(d) < world.rates.flaw_rate)
        style = Style(drop_carry=drop, check=True, languages=(TARGET_LANGUAGE,) * (2 * d),
                      check_mode=world.rates.check_mode)
        out.append(write_solution(p, style).text)
    return out


class ToyWorldSource(Sequence):
    """The first `size` examples of a split, as dicts of strings:
    {"id", "question", "answer", "solution", "task"}; `solution` picks what "solution" holds
    (SOLUTIONS).

        source = ToyWorldSource(world, "train")
        pipeline = PromptPipeline(source, tokenizer, PipelineConfig(batch_size=16,
                                  template=TemplateConfig("r1_zero", instruction="")))

    Row i of a size-n source is row i of any larger one, so a held-out set of 256 is the head
    of the one of 500.
    """

    def __init__(self, world: WorldConfig, split: str, size: int | None = None,
                 solution: str = "reference"):
        if solution not in SOLUTIONS:
            raise ValueError(f"solution must be one of {SOLUTIONS}, got {solution!r}")
        self.world, self.split = world, split
        self.size = DEFAULT_SIZES.get(split, 0) if size is None else size
        self._rows = [example(p, world.task, split, i)
                      for i, p in enumerate(problems(world.task, split, self.size, world.seed))]
        if solution == "checked":
            for row, text in zip(self._rows, checked_solutions(world, split, self.size)):
                row["solution"] = text

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):  # int or slice, like a list
        return self._rows[index]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, str]]:
        return [self._rows[i] for i in indices]

    def __repr__(self) -> str:
        return (f"ToyWorldSource(split={self.split!r}, size={self.size}, "
                f"world={self.world.fingerprint})")


PREFERENCE_CRITERIA = ("correct", "concise", "language")


def preference_pairs(world: WorldConfig, split: str, n: int, criterion: str = "correct",
                     seed: int = 0) -> list[dict[str, Any]]:
    """n (prompt, chosen, rejected) pairs on the split's first n problems.

    criterion 'correct': a clean solution over one with dropped carries (problems without a
    carry are skipped); 'concise': the terse solution over the verbose one (both correct);
    'language': an English solution over one partly in the second language (both correct).
    Which of the two holds the check pass is drawn with probability 1/2, the same for both.
    """
    if criterion not in PREFERENCE_CRITERIA:
        raise ValueError(f"criterion must be one of {PREFERENCE_CRITERIA}, got {criterion!r}")
    rng = np.random.default_rng([seed, world.seed, 11])
    out = []
    pool = problems(world.task, split, 4 * n + 64, world.seed)
    for p in pool:
        if len(out) == n:
            break
        d = p.num_digits
        check = bool(rng.random() < 0.5)
        steps = d * (2 if check else 1)
        english = (TARGET_LANGUAGE,) * steps
        good = Style(drop_carry=(False,) * d, check=False, languages=(TARGET_LANGUAGE,) * d)
        if criterion == "correct":
            bad = Style(drop_carry=(True,) * d, check=False, languages=(TARGET_LANGUAGE,) * d)
            if write_solution(p, bad).correct:
                continue  # no carry to drop
        elif criterion == "concise":
            good = dataclasses.replace(good, check=check, languages=english)
            bad = dataclasses.replace(good, verbose=True)
        else:
            good = dataclasses.replace(good, check=check, languages=english)
            mixed = tuple(SECOND_LANGUAGE if rng.random() < 0.5 else TARGET_LANGUAGE
                          for _ in range(steps))
            if all(lang == TARGET_LANGUAGE for lang in mixed):
                mixed = (SECOND_LANGUAGE,) + mixed[1:]
            bad = dataclasses.replace(good, languages=mixed)
        chosen, rejected = write_solution(p, good), write_solution(p, bad)
        ex = example(p, world.task, split, len(out))
        out.append({**ex, "prompt": prompt_text(p.question), "chosen": chosen.text,
                    "rejected": rejected.text, "criterion": criterion})
    if len(out) < n:
        raise ValueError(f"only {len(out)} of {n} {criterion!r} pairs could be made "
                         f"(too few problems with a carry?)")
    return out
