"""Worked solutions in the R1-Zero format: column steps, injected carry errors, a checking pass,
a second "language" for the connective words, and a verbose style.

A solution to 123+489 (English, one dropped carry, then a check that catches it):

    <think> 3+9=12 carry 1 so 2. 2+8=10 carry 1 so 02. 1+4+1=6 so 602.
    check: 3+9=12 carry 1 so 2. 2+8+1=11 carry 1 so 12. 1+4+1=6 so 612. wrong.
    </think> <answer> 612 </answer>

Each column step adds that column's digits (and the incoming carry), then writes the partial
result so far, so the final number is copied from the last step rather than assembled in
reverse. The check pass redoes the columns (in the same operand order, or reversed: a knob)
and is never flawed; the answer is its result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rlcot.toyworld.tasks import Problem

# Connective words of each language. Digits and symbols are shared: only these words tell the
# languages apart. "xx" is the second language (Cyrillic script, so script detectors see it).
LANGUAGES: dict[str, dict[str, str]] = {
    "en": {"carry": "carry", "so": "so", "check": "check", "ok": "ok", "wrong": "wrong",
           "answer": "the answer is", "filler": "now I add the digits of the next column:"},
    "xx": {"carry": "перенос", "so": "итак", "check": "проверка", "ok": "верно",
           "wrong": "ошибка", "answer": "ответ", "filler": "теперь я складываю цифры столбца:"},
}
TARGET_LANGUAGE = "en"
SECOND_LANGUAGE = "xx"


@dataclasses.dataclass(frozen=True)
class Style:
    """How one completion is written.

    plain: no tags, just "the answer is N." (the answer is right). drop_carry_B: for each column
    (right to left) whether its incoming carry is forgotten (only matters where there is one).
    languages: language of each main-pass step (and then of each check step when checking).
    """

    plain: bool = False
    drop_carry: tuple[bool, ...] = ()
    check: bool = False
    languages: tuple[str, ...] = ()
    verbose: bool = False
    reverse_check: bool = False  # the check pass writes the operands in reverse order


@dataclasses.dataclass(frozen=True)
class Solution:
    text: str
    stated: int           # the number in <answer> (or after "the answer is")
    correct: bool
    flawed: bool          # the main pass dropped at least one carry
    checked: bool
    second_language_steps: int
    steps: int


def _digits(x: int, n: int) -> list[int]:
    """The n lowest digits of x, least significant first."""
    return [(x // 10 ** i) % 10 for i in range(n)]


def column_pass(problem: Problem, drop: Sequence[bool], reverse: bool,
                languages: Sequence[str], verbose: bool) -> tuple[list[str], int]:
    """The column steps of one pass and the number it arrives at."""
    n = problem.num_digits
    ops = problem.operands
    cols = [_digits(x, n) for x in ops]
    carry, partial, steps = 0, "", []
    for i in range(n):
        words = LANGUAGES[languages[i]]
        if problem.op == "add":
            terms = [c[i] for c in cols]
            terms = terms[::-1] if reverse else terms
            expr = "+".join(str(t) for t in terms)
            total = sum(terms)
        else:
            a, m = cols[0][i], ops[1]
            expr = f"{m}*{a}" if reverse else f"{a}*{m}"
            total = a * m
        if carry and not drop[i]:
            expr += f"+{carry}"
            total += carry
        last = i == n - 1
        partial = (str(total) if last else str(total % 10)) + partial
        carry = 0 if last else total // 10
        step = f"{expr}={total} "
        if carry:
            step += f"{words['carry']} {carry} "
        step += f"{words['so']} {partial}."
        if verbose:
            step = f"{words['filler']} {step}"
        steps.append(step)
    return steps, int(partial)


def write_solution(problem: Problem, style: Style) -> Solution:
    gold = problem.answer
    if style.plain:
        text = f" {LANGUAGES[TARGET_LANGUAGE]['answer']} {gold}."
        return Solution(text, gold, True, False, False, 0, 0)
    n = problem.num_digits
    n_steps = n * (2 if style.check else 1)
    if len(style.drop_carry) != n or len(style.languages) != n_steps:
        raise ValueError(f"style for a {n}-column problem needs {n} drop_carry flags and "
                         f"{n_steps} step languages, got {len(style.drop_carry)} and "
                         f"{len(style.languages)}")
    steps, result = column_pass(problem, style.drop_carry, False, style.languages[:n],
                                style.verbose)
    flawed = result != gold
    stated = result
    if style.check:
        check_steps, checked = column_pass(problem, [False] * n, style.reverse_check,
                                           style.languages[n:], style.verbose)
        words = LANGUAGES[style.languages[n]]
        verdict = words["ok"] if checked == result else words["wrong"]
        steps.append(f"{words['check']}: " + " ".join(check_steps) + f" {verdict}.")
        stated = checked
    text = f" <think> {' '.join(steps)} </think> <answer> {stated} </answer>"
    second = sum(lang != TARGET_LANGUAGE for lang in style.languages)
    return Solution(text, stated, stated == gold, flawed, style.check, second, n_steps)


@dataclasses.dataclass(frozen=True)
class StyleRates:
    """Rates at which the corpus writer picks each behaviour (each drawn independently).

    plain_rate: completions without the format. flaw_rate: per column with an incoming carry,
    the chance that the main pass forgets it. check_rate: worked solutions followed by a
    check pass. mix_rate: worked solutions partly in the second language, in which each step
    is in the second language with probability mix_share. verbose_rate: worked solutions
    with a filler phrase before each step (longer, equally correct). reverse_check_rate:
    checks that write the operands in reverse order (a re-computation that cannot copy the
    main pass's expressions; harder for a tiny model to learn).
    """

    plain_rate: float = 0.1
    flaw_rate: float = 0.6
    check_rate: float = 0.2
    mix_rate: float = 0.15
    mix_share: float = 0.5
    verbose_rate: float = 0.0
    reverse_check_rate: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"StyleRates.{f.name} must be in [0, 1], got {v}")


def draw_style(rng: np.random.Generator, problem: Problem, rates: StyleRates) -> Style:
    """A random style for one problem; consumes the same number of draws whatever comes out,
    so changing one rate does not reshuffle the other behaviours."""
    n = problem.num_digits
    u = rng.random(5)
    drop = rng.random(n) < rates.flaw_rate
    mix_u = rng.random(2 * n) < rates.mix_share
    plain = bool(u[0] < rates.plain_rate)
    check = bool(u[1] < rates.check_rate)
    mixed = bool(u[2] < rates.mix_rate)
    verbose = bool(u[3] < rates.verbose_rate)
    reverse = bool(u[4] < rates.reverse_check_rate)
    n_steps = n * (2 if check else 1)
    langs = tuple(SECOND_LANGUAGE if mixed and mix_u[k] else TARGET_LANGUAGE
                  for k in range(n_steps))
    return Style(plain, tuple(bool(d) for d in drop), check, langs, verbose, reverse)
