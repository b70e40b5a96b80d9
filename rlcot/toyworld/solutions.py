"""Worked solutions in the R1-Zero format: column steps, injected carry errors, checking
steps, a second "language" for the connective words, and a verbose style.

A solution to 123+489 with a dropped carry and no check (wrong), and with checks (right):

    <think> first 3+9=12 carry 1 so 2. second 2+8=10 carry 1 so 02. third 1+4+1=6 so 602.
    </think> <answer> 602 </answer>

    <think> first 3+9=12 carry 1 so 2. check first 3+9=12 carry 1 so 2. second 2+8=10 carry 1
    so 02. check second 2+8+1=11 carry 1 so 12. third 1+4+1=6 so 612. check third 1+4+1=6 so
    612. </think> <answer> 612 </answer>

Each column step names its column, adds that column's digits (and the incoming carry), then
writes the partial result so far, so the final number is copied from the last step rather
than assembled in reverse. The column name is what a tiny model keys on to fetch the right
digits from the question (without it, sampled steps fetched wrong digits far more often). A
check redoes a step without dropping the carry and the solution continues from it
(check_mode 'step'), or redoes all columns after the main pass, ending "ok."/"wrong."
(check_mode 'pass'). Checks are never flawed: a checked solution is always right. The 'step'
mode is the default because a tiny model executes it reliably: the digits to add are a few
tokens back, whereas a late checking pass must fetch them from the question far away (the
measured accuracy of sampled checked solutions was then *below* that of unchecked ones).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rlcot.toyworld.tasks import Problem

# Connective words of each language. Digits and symbols are shared: only these words tell the
# languages apart. "xx" is the second language (Cyrillic script, so script detectors see it).
# "columns" names the columns from the right (12 at most).
LANGUAGES: dict[str, dict[str, str]] = {
    "en": {"carry": "carry", "so": "so", "check": "check", "ok": "ok", "wrong": "wrong",
           "answer": "the answer is", "filler": "now I add the digits of the next column:",
           "columns": "first second third fourth fifth sixth seventh eighth ninth tenth "
                      "eleventh twelfth"},
    "xx": {"carry": "перенос", "so": "итак", "check": "проверка", "ok": "верно",
           "wrong": "ошибка", "answer": "ответ", "filler": "теперь я складываю цифры столбца:",
           "columns": "первый второй третий четвертый пятый шестой седьмой восьмой девятый "
                      "десятый одиннадцатый двенадцатый"},
}
TARGET_LANGUAGE = "en"
SECOND_LANGUAGE = "xx"
CHECK_MODES = ("step", "pass")
MIX_STEPS = ("any", "checks")


@dataclasses.dataclass(frozen=True)
class Style:
    """How one completion is written.

    plain: no tags, just "the answer is N." (the answer is right). drop_carry: for each column
    (right to left) whether the main step forgets its incoming carry (only matters where
    there is one). languages: language of each main step, then of each check step.
    """

    plain: bool = False
    drop_carry: tuple[bool, ...] = ()
    check: bool = False
    languages: tuple[str, ...] = ()
    verbose: bool = False
    reverse_check: bool = False  # checks write the operands in reverse order
    check_mode: str = "step"     # 'step': check each step right after it; 'pass': at the end

    def __post_init__(self):
        if self.check_mode not in CHECK_MODES:
            raise ValueError(f"check_mode must be one of {CHECK_MODES}, got {self.check_mode!r}")


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


def column_step(problem: Problem, i: int, carry: int, partial: str, drop: bool, reverse: bool,
                language: str, verbose: bool) -> tuple[str, int, str, bool]:
    """Column i (from the right) given the incoming carry and the digits written so far:
    (text, outgoing carry, new partial result, whether a carry was dropped)."""
    n, ops, words = problem.num_digits, problem.operands, LANGUAGES[language]
    if problem.op == "add":
        terms = [(x // 10 ** i) % 10 for x in ops]
        terms = terms[::-1] if reverse else terms
        expr, total = "+".join(str(t) for t in terms), sum(terms)
    else:
        a, m = (ops[0] // 10 ** i) % 10, ops[1]
        expr, total = (f"{m}*{a}" if reverse else f"{a}*{m}"), a * m
    dropped = bool(carry) and drop
    if carry and not drop:
        expr += f"+{carry}"
        total += carry
    last = i == n - 1
    partial = (str(total) if last else str(total % 10)) + partial
    carry = 0 if last else total // 10
    text = f"{words['columns'].split()[i]} {expr}={total} "
    if carry:
        text += f"{words['carry']} {carry} "
    text += f"{words['so']} {partial}."
    if verbose:
        text = f"{words['filler']} {text}"
    return text, carry, partial, dropped


def column_pass(problem: Problem, drop: Sequence[bool], reverse: bool,
                languages: Sequence[str], verbose: bool) -> tuple[list[str], int]:
    """The column steps of one pass and the number it arrives at."""
    carry, partial, steps = 0, "", []
    for i in range(problem.num_digits):
        text, carry, partial, _ = column_step(problem, i, carry, partial, drop[i], reverse,
                                              languages[i], verbose)
        steps.append(text)
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
    langs = style.languages
    if style.check and style.check_mode == "step":
        # Each step is followed by its check, which redoes it without dropping the carry;
        # the solution continues from the checked step.
        steps, carry, partial, flawed = [], 0, "", False
        for i in range(n):
            text, _, _, dropped = column_step(problem, i, carry, partial, style.drop_carry[i],
                                              False, langs[i], style.verbose)
            check, carry, partial, _ = column_step(problem, i, carry, partial, False,
                                                   style.reverse_check, langs[n + i],
                                                   style.verbose)
            steps += [text, f"{LANGUAGES[langs[n + i]]['check']} {check}"]
            flawed |= dropped
        stated = int(partial)
    else:
        steps, stated = column_pass(problem, style.drop_carry, False, langs[:n], style.verbose)
        flawed = stated != gold
        if style.check:  # one checking pass over all columns after the main pass
            check_steps, checked = column_pass(problem, [False] * n, style.reverse_check,
                                               langs[n:], style.verbose)
            words = LANGUAGES[langs[n]]
            verdict = words["ok"] if checked == stated else words["wrong"]
            steps.append(f"{words['check']} " + " ".join(check_steps) + f" {verdict}.")
            stated = checked
    text = f" <think> {' '.join(steps)} </think> <answer> {stated} </answer>"
    second = sum(lang != TARGET_LANGUAGE for lang in langs)
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
    main step's expression; harder for a tiny model to learn). check_mode: see the module
    docstring. check_mix_rate: when set, the mix rate of solutions with a check, mix_rate
    then being that of the others (language mixing tied to checking, as in the R1 study's
    world); None: mix_rate for all, independently of checking. mix_steps: the steps of a
    mixed solution that may be in the second language, each with probability mix_share:
    'any' step, or only its 'checks' (a solution without checks then stays in the target
    language).
    """

    plain_rate: float = 0.1
    flaw_rate: float = 0.6
    check_rate: float = 0.2
    mix_rate: float = 0.15
    mix_share: float = 0.5
    verbose_rate: float = 0.0
    reverse_check_rate: float = 0.0
    check_mode: str = "step"
    check_mix_rate: float | None = None
    mix_steps: str = "any"

    def __post_init__(self):
        if self.check_mode not in CHECK_MODES:
            raise ValueError(f"check_mode must be one of {CHECK_MODES}, got {self.check_mode!r}")
        if self.mix_steps not in MIX_STEPS:
            raise ValueError(f"mix_steps must be one of {MIX_STEPS}, got {self.mix_steps!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("check_mode", "mix_steps") or (f.name == "check_mix_rate" and v is None):
                continue
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
    mix_rate = rates.mix_rate if rates.check_mix_rate is None or not check else \
        rates.check_mix_rate
    mixed = bool(u[2] < mix_rate)
    verbose = bool(u[3] < rates.verbose_rate)
    reverse = bool(u[4] < rates.reverse_check_rate)
    n_steps = n * (2 if check else 1)
    first = n if rates.mix_steps == "checks" else 0  # steps n.. are the checks
    langs = tuple(SECOND_LANGUAGE if mixed and mix_u[k] and k >= first else TARGET_LANGUAGE
                  for k in range(n_steps))
    return Style(plain, tuple(bool(d) for d in drop), check, langs, verbose, reverse,
                 rates.check_mode)
