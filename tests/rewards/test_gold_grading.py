"""Acceptance: every GSM8K-test and MATH-500 gold answer is graded correct against itself in
other surface forms, through the worker pool; prints the pool's throughput."""

import collections
import json
import os
import re
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from rlcot.rewards.base import RewardInput
from rlcot.rewards.math_answer import gold_answer, math_accuracy, to_number
from rlcot.rewards.pool import RewardPool

DATA = Path(os.environ.get("RLCOT_SHARED_DATA")
            or Path(__file__).resolve().parents[2] / ".." / "shared" / "data")
GSM8K, MATH500 = DATA / "gsm8k" / "test.jsonl", DATA / "math500" / "test.jsonl"
pytestmark = pytest.mark.skipif(not (GSM8K.exists() and MATH500.exists()),
                                reason=f"benchmark data not found under {DATA}")


DEGREE = "^\\circ"


def _decimal(f: Fraction) -> str | None:
    """Terminating decimal of f, else None."""
    den = f.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return None
    scaled, digits = f, 0
    while scaled.denominator != 1:
        scaled, digits = scaled * 10, digits + 1
    text = f"{abs(scaled.numerator):0{digits + 1}d}"
    sign = "-" if f < 0 else ""
    return sign + (text[:-digits] + "." + text[-digits:] if digits else text)


def surface_forms(gold: str) -> list[str]:
    """Completions that state `gold` in other ways a model would."""
    forms = [f"So the result is \\boxed{{{gold}}}.", f"The answer is ${gold}$.",
             f"Adding up:\n#### {gold}", f"<think>work</think><answer>{gold}</answer>",
             f"The final answer is $\\boxed{{{gold}}}$"]
    if "\\frac" in gold:
        forms.append(f"\\boxed{{{gold.replace(chr(92) + 'frac', chr(92) + 'dfrac')}}}")
    # Forms only a symbolic checker can match: \frac{X}{Y} -> (X)/(Y), explicit products,
    # degrees dropped.
    fracs = re.sub(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", gold)
    if fracs != gold and not re.search(r"\d ?\\d?frac", gold):  # 1\frac{4}{5} is 9/5, not 1*4/5
        forms.append(f"\\boxed{{{fracs}}}")
    product = re.sub(r"(\d) ?\\sqrt", r"\1 \\cdot \\sqrt", gold)
    if product != gold:
        forms.append(f"\\boxed{{{product}}}")
    if gold.endswith(DEGREE):
        forms.append(f"The answer is {gold[:-len(DEGREE)]} degrees.")
    if "\\left" in gold:
        forms.append(f"\\boxed{{{gold.replace(chr(92) + 'left', '').replace(chr(92) + 'right', '')}}}")
    value = to_number(gold)
    if isinstance(value, Fraction):
        if value.denominator == 1:
            n = value.numerator
            forms += [f"The answer is {n}.", f"\\boxed{{{n}.0}}", f"#### {n:,}", f"\\boxed{{{n:,}}}"]
        else:
            forms += [f"\\boxed{{{value.numerator}/{value.denominator}}}",
                      f"\\boxed{{\\frac{{{value.numerator}}}{{{value.denominator}}}}}"]
            if _decimal(value) is not None:
                forms.append(f"The answer is {_decimal(value)}.")
    return forms


def test_surface_forms_helper():
    assert _decimal(Fraction(1, 2)) == "0.5" and _decimal(Fraction(-3, 40)) == "-0.075"
    assert _decimal(Fraction(1, 3)) is None and _decimal(Fraction(7)) == "7"
    assert "\\boxed{1/2}" in surface_forms("\\frac{1}{2}") and "#### 1,000" in surface_forms("1000")


def _golds() -> list[str]:
    gsm = [gold_answer(json.loads(line)["answer"]) for line in GSM8K.open()]
    math500 = [json.loads(line)["answer"] for line in MATH500.open()]
    return gsm + math500


def _grade_in_pool(golds: list[str], completions: list[str]):
    batch = RewardInput(["q"] * len(golds), completions, [{"answer": g} for g in golds])
    with RewardPool(2, preload=("rlcot.rewards.math_answer", "math_verify")) as pool:
        warm = math_accuracy(RewardInput(["q"] * 4, ["\\boxed{1}"] * 4, [{"answer": "1"}] * 4), pool=pool)
        assert warm.values.tolist() == [1.0] * 4  # both workers up before the clock starts
        t0 = time.monotonic()
        out = math_accuracy(batch, pool=pool, timeout_s=20.0)
        elapsed = time.monotonic() - t0
    methods = collections.Counter(d.get("method") for d in out.details)
    print(f"\ngraded {len(batch)} items in {elapsed:.2f} s: {len(batch) / elapsed:.0f} items/s "
          f"with 2 workers; decided by {dict(methods)}; timeouts {out.metrics['n_timeouts']:.0f}, "
          f"errors {out.metrics['n_errors']:.0f}")
    return out


def test_gold_answers_in_other_forms():
    golds, completions = [], []
    all_golds = _golds()
    for g in all_golds:
        for form in surface_forms(g):
            golds.append(g)
            completions.append(form)
    assert len(all_golds) > 1800 and len(completions) > 10_000  # 1319 GSM8K + 500 MATH-500
    out = _grade_in_pool(golds, completions)
    wrong = [(golds[i], completions[i], out.details[i]) for i in np.flatnonzero(out.values != 1.0)]
    assert not wrong, f"{len(wrong)} surface forms graded wrong, e.g. {wrong[:10]}"


def test_wrong_answers_are_not_accepted():
    # Guard against a grader that says yes to everything: every numeric gold shifted by one.
    # These all reach math-verify, so this also measures its throughput.
    golds = [g for g in _golds() if isinstance(to_number(g), Fraction)]
    completions = [f"\\boxed{{{to_number(g) + 1}}}" for g in golds]
    out = _grade_in_pool(golds, completions)
    assert len(golds) > 1000
    assert not out.values.any(), [(golds[i], completions[i]) for i in np.flatnonzero(out.values)][:5]


@pytest.mark.slow
def test_symbolic_wrong_answers_throughput():
    # Every MATH-500 gold G against "(G)+1": all decided by math-verify's symbolic path, the
    # slowest case (about 130 items/s on 2 cores).
    golds = [json.loads(line)["answer"] for line in MATH500.open()]
    out = _grade_in_pool(golds, [f"\\boxed{{({g})+1}}" for g in golds])
    assert out.values.sum() <= 2  # math-verify reads "(x=5)+1" as the relation x=5
