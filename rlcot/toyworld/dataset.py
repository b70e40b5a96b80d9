"""The world as data for the loop: a random-access source of examples in rlcot's common schema
(usable as rlcot.data.pipeline.PromptPipeline's source), and preference pairs for RLHF/DPO."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlcot.toyworld.corpus import WorldConfig, example, prompt_text
from rlcot.toyworld.solutions import (LANGUAGES, SECOND_LANGUAGE, TARGET_LANGUAGE, Style,
                                      column_step, write_solution)
from rlcot.toyworld.tasks import Problem, problems

DEFAULT_SIZES = {"train": 10_000, "test": 500}
# "solution" of each row: the clean reference (English, no check), a checked solution in the
# target language only (the R1 study's cold-start data), or a long one whose checks are
# repeated (the Kimi study's long-CoT data).
SOLUTIONS = ("reference", "checked", "long")
_CHECKED_STREAM = 13
_LONG_STREAM = 17
# How many times a long solution writes each step's check, with what probability (mean 2.3;
# one check is all a step needs): the redundant re-checking of long chains of thought.
LONG_CHECK_REPEATS = ((1, 0.2), (2, 0.3), (3, 0.5))


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


def repeated_checks(problem: Problem, drop: Sequence[bool], repeats: Sequence[int]) -> str:
    """A checked solution in the target language whose column i's check is written
    repeats[i] times (each the same re-computation that keeps the carry); all ones gives
    exactly write_solution's checked solution ('step' checks)."""
    d = problem.num_digits
    if len(drop) != d or len(repeats) != d or min(repeats) < 1:
        raise ValueError(f"a {d}-column problem needs {d} drop flags and {d} repeats >= 1, "
                         f"got {tuple(drop)} and {tuple(repeats)}")
    check_word = LANGUAGES[TARGET_LANGUAGE]["check"]
    steps, carry, partial = [], 0, ""
    for i in range(d):
        text, _, _, _ = column_step(problem, i, carry, partial, bool(drop[i]), False,
                                    TARGET_LANGUAGE, False)
        check, carry, partial, _ = column_step(problem, i, carry, partial, False, False,
                                               TARGET_LANGUAGE, False)
        steps += [text, *([f"{check_word} {check}"] * int(repeats[i]))]
    return f" <think> {' '.join(steps)} </think> <answer> {int(partial)} </answer>"


def long_solutions(world: WorldConfig, split: str, n: int) -> list[str]:
    """Completions of the split's first n problems with redundant checking (the Kimi study's
    long-CoT data): main steps drop their incoming carry with the world's flaw_rate, each
    step's check is written 1, 2 or 3 times (LONG_CHECK_REPEATS), every word in the target
    language. Always right; a function of (world, split, n), prefix-stable. Needs the
    world's check_mode 'step'."""
    if world.rates.check_mode != "step":
        raise ValueError(f"long solutions repeat 'step' checks; the world's check_mode is "
                         f"{world.rates.check_mode!r}")
    rng = np.random.default_rng([world.seed, _LONG_STREAM])
    values = np.array([r for r, _ in LONG_CHECK_REPEATS])
    probs = np.array([q for _, q in LONG_CHECK_REPEATS])
    out = []
    for p in problems(world.task, split, n, world.seed):
        d = p.num_digits
        # Fixed draws per problem (12 columns at most), so n does not reshuffle earlier rows.
        drop = rng.random(12)[:d] < world.rates.flaw_rate
        at = np.searchsorted(np.cumsum(probs), rng.random(12)[:d], side="right")
        repeats = values[np.minimum(at, len(values) - 1)]
        out.append(repeated_checks(p, drop, repeats))
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
        if solution != "reference":
            write = checked_solutions if solution == "checked" else long_solutions
            for row, text in zip(self._rows, write(world, split, self.size)):
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
