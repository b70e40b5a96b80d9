"""Toy arithmetic problems: seeded generation, difficulty knobs, and train/test splits by hash."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator

import numpy as np

OPS = ("add", "mul")
SPLITS = ("train", "test")
# Seeds of the two streams; a question's split is decided by its hash, not by the stream, so
# the streams only need to differ to make the draws independent.
_STREAM = {"train": 0, "test": 1}


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which problems the world poses.

    op 'add': `num_operands` numbers of n digits each, n uniform in [min_digits, max_digits].
    op 'mul': an n-digit number times a one-digit number (2..9); `num_operands` must be 2.
    test_permille: share (in 1/1000) of the question space held out for the test split; a
    question belongs to the test split iff sha256(question) mod 1000 < test_permille, so no
    question can occur in both splits whatever the seeds and sizes.
    """

    op: str = "add"
    num_operands: int = 2
    min_digits: int = 3
    max_digits: int = 3
    test_permille: int = 100

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"TaskConfig.op must be one of {OPS}, got {self.op!r}")
        if not 1 <= self.min_digits <= self.max_digits <= 12:
            raise ValueError(f"need 1 <= min_digits <= max_digits <= 12, got "
                             f"min_digits={self.min_digits} max_digits={self.max_digits}")
        if self.op == "add" and not 2 <= self.num_operands <= 5:
            raise ValueError(f"op 'add' needs 2..5 operands, got num_operands={self.num_operands}")
        if self.op == "mul" and self.num_operands != 2:
            raise ValueError(f"op 'mul' multiplies two numbers, got num_operands={self.num_operands}")
        if not 0 < self.test_permille < 1000:
            raise ValueError(f"test_permille must be in (0, 1000), got {self.test_permille}")


@dataclasses.dataclass(frozen=True)
class Problem:
    op: str
    operands: tuple[int, ...]

    @property
    def question(self) -> str:
        sign = "+" if self.op == "add" else "*"
        return sign.join(str(x) for x in self.operands)

    @property
    def answer(self) -> int:
        if self.op == "add":
            return sum(self.operands)
        return self.operands[0] * self.operands[1]

    @property
    def num_digits(self) -> int:
        return len(str(self.operands[0]))


def split_of(question: str, test_permille: int) -> str:
    """'test' or 'train': a pure function of the question text."""
    h = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "little")
    return "test" if h % 1000 < test_permille else "train"


def _draw(rng: np.random.Generator, cfg: TaskConfig) -> Problem:
    n = int(rng.integers(cfg.min_digits, cfg.max_digits + 1))
    lo, hi = 10 ** (n - 1), 10 ** n
    if cfg.op == "add":
        return Problem("add", tuple(int(x) for x in rng.integers(lo, hi, cfg.num_operands)))
    return Problem("mul", (int(rng.integers(lo, hi)), int(rng.integers(2, 10))))


def iter_problems(cfg: TaskConfig, split: str, seed: int = 0) -> Iterator[Problem]:
    """An endless deterministic stream of distinct problems of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, _STREAM[split]])
    seen: set[str] = set()
    misses = 0
    while True:
        p = _draw(rng, cfg)
        q = p.question
        if q in seen or split_of(q, cfg.test_permille) != split:
            misses += 1
            if misses > 10_000:  # e.g. 1-digit problems: the space is exhausted
                raise ValueError(f"cannot draw more distinct {split} problems for {cfg} "
                                 f"(have {len(seen)})")
            continue
        misses = 0
        seen.add(q)
        yield p


def problems(cfg: TaskConfig, split: str, n: int, seed: int = 0) -> list[Problem]:
    """The first n problems of a split's stream (a prefix of any longer request)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    it = iter_problems(cfg, split, seed)
    return [next(it) for _ in range(n)]
