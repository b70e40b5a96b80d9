"""The world's configuration, its prompts, its examples (rlcot's common schema) and the
pre-training corpus of worked solutions."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from rlcot.data.templates import R1_ZERO_PREAMBLE, TemplateConfig, render_prompt
from rlcot.toyworld.solutions import (TARGET_LANGUAGE, Style, StyleRates, draw_style,
                                      write_solution)
from rlcot.toyworld.tasks import Problem, TaskConfig, problems

# The prompt template the loop renders (rlcot.data.templates 'r1_zero', no instruction).
TEMPLATE = TemplateConfig(name="r1_zero", instruction="")
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# The corpus draws its problems from a stream of the train split that the RL prompts
# (seed `seed`) do not use, so RL prompts are not pre-training documents by construction.
_CORPUS_STREAM = 1_000_003


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the world: tasks, corpus behaviours and their rates, corpus
    size, tokenizer vocabulary, seed. Its `fingerprint` keys every cache."""

    task: TaskConfig = TaskConfig()
    rates: StyleRates = StyleRates()
    corpus_size: int = 40_000
    vocab_size: int = 384
    seed: int = 0

    def __post_init__(self):
        if self.corpus_size < 1:
            raise ValueError(f"corpus_size must be >= 1, got {self.corpus_size}")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size must be >= 300 (256 byte pieces + specials + "
                             f"the world's words), got {self.vocab_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def task_name(cfg: TaskConfig) -> str:
    return f"toyworld_{cfg.op}"


def prompt_text(question: str) -> str:
    """The R1-Zero prompt of a question, exactly as rlcot.data's 'r1_zero' template renders it."""
    return render_prompt(TEMPLATE, {"question": question})


def reference_solution(problem: Problem) -> str:
    """The clean worked solution (English, no flaw, no check)."""
    n = problem.num_digits
    return write_solution(problem, Style(drop_carry=(False,) * n,
                                         languages=(TARGET_LANGUAGE,) * n)).text.strip()


def example(problem: Problem, cfg: TaskConfig, split: str, index: int) -> dict[str, str]:
    """One example in rlcot's common schema (all fields strings)."""
    return {"id": f"{task_name(cfg)}/{split}/{index}", "question": problem.question,
            "answer": str(problem.answer), "solution": reference_solution(problem),
            "task": task_name(cfg)}


def examples(world: WorldConfig, split: str, n: int) -> list[dict[str, str]]:
    """The first n examples of a split (train: RL prompts; test: the held-out set)."""
    return [example(p, world.task, split, i)
            for i, p in enumerate(problems(world.task, split, n, world.seed))]


@dataclasses.dataclass(frozen=True)
class Document:
    """One pre-training document: a prompt and a completion with what the completion shows."""
    prompt: str
    completion: str
    answer: int
    labels: dict[str, bool]  # format, correct, flawed, check, mixed, verbose


def build_corpus(world: WorldConfig, size: int | None = None) -> list[Document]:
    """The first `size` (default world.corpus_size) documents of the world's corpus."""
    size = world.corpus_size if size is None else size
    rng = np.random.default_rng([world.seed, _CORPUS_STREAM])
    docs = []
    for p in problems(world.task, "train", size, world.seed + _CORPUS_STREAM):
        style = draw_style(rng, p, world.rates)
        sol = write_solution(p, style)
        labels = {"format": not style.plain, "correct": sol.correct, "flawed": sol.flawed,
                  "check": sol.checked, "mixed": sol.second_language_steps > 0,
                  "verbose": style.verbose and not style.plain}
        docs.append(Document(prompt_text(p.question), sol.text, p.answer, labels))
    return docs


def user_defined_symbols() -> list[str]:
    """Pieces the toy tokenizer keeps whole: the four tags and the whole R1-Zero preamble
    (one token, so prompts stay short; sentencepiece writes spaces as U+2581 in pieces)."""
    return [*TAGS, R1_ZERO_PREAMBLE.replace(" ", "\u2581")]
