"""Math answer extraction, equivalence and the math_accuracy reward, malformed inputs included."""

import threading
import time

import numpy as np
import pytest

from rlcot.rewards.base import RewardInput
from rlcot.rewards.math_answer import (answers_equivalent, extract_answer, gold_answer,
                                       math_accuracy, to_number)
from rlcot.rewards.pool import RewardPool

HUGE_INT = "9" * 100_000

EXTRACT = [
    ("The answer is 42.", "42"),
    ("so \\boxed{\\frac{1}{2}} and done", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\fbox{7}", "7"),
    ("\\boxed 5", "5"),
    ("<think>maybe 3</think><answer>7</answer>", "7"),
    ("<answer>so \\boxed{3}</answer>", "3"),
    ("<answer>The answer is 12.</answer>", "12"),
    ("<answer> 12 </answer>", "12"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),
    ("work\n#### 1,000\n", "1,000"),
    ("Final answer: $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("the answer is 0.5. Next sentence", "0.5"),
    ("", None),
    ("no answer here", None),
    ("\\boxed{unclosed", None),
    ("<answer>unclosed", None),
    ("The answer is \u4e09\u5341", "\u4e09\u5341"),
    ("x" * 100_000, None),
    ("\\boxed{" + "{" * 50_000, None),
    ("<answer>" * 20_000, None),
    ("y" * 100_000 + "\\boxed{12}", "12"),
]


@pytest.mark.parametrize("text,expected", EXTRACT, ids=[repr(t[:20]) for t, _ in EXTRACT])
def test_extract_answer(text, expected):
    t0 = time.monotonic()
    assert extract_answer(text) == expected
    assert time.monotonic() - t0 < 0.5


NUMBERS = [
    ("0.5", "1/2"), ("1/2", "1/2"), ("\\frac{1}{2}", "1/2"), ("\\dfrac{3}{4}", "3/4"),
    ("-\\frac{3}{4}", "-3/4"), ("1,000", "1000"), ("1{,}000", "1000"), ("\\$18", "18"),
    ("2.50", "5/2"), ("1e3", "1000"), (".5", "1/2"), ("abc", None), ("1/0", None), ("", None),
]


@pytest.mark.parametrize("text,expected", NUMBERS)
def test_to_number(text, expected):
    from fractions import Fraction
    assert to_number(text) == (None if expected is None else Fraction(expected))


EQUIV = [
    # (gold, prediction, equivalent)
    ("\\frac{1}{2}", "0.5", True), ("\\frac{1}{2}", "1/2", True), ("0.5", "\\frac{1}{2}", True),
    ("18", "18.00", True), ("1000", "1,000", True), ("18", "18 dollars", True),
    ("10", "10 \\text{ inches}", True), ("2.5\\%", "2.5", True), ("-3", "-3 m", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True), ("[1,2)", "[1, 2)", True),
    ("\\{1,2\\}", "\\{2,1\\}", True), ("\\sqrt{2}", "2^{1/2}", True), ("x=5", "5", True),
    ("18", "19", False), ("\\frac{1}{2}", "0.51", False), ("3", "3.0001", False),
    ("[1,2)", "[1,2]", False), ("\\sqrt{2}", "2", False),
    # Huge numbers decide exactly and fast, without expanding 10^100000.
    ("1e100000", "1" + "0" * 100_000, True), (HUGE_INT, HUGE_INT, True),
    (HUGE_INT, HUGE_INT[:-1] + "8", False), ("1e999999999999", "1e999999999999", True),
    ("3", HUGE_INT + "x", False), ("3", "\u4e09", False),
]


@pytest.mark.parametrize("gold,pred,expected", EQUIV, ids=[f"{g[:12]}~{p[:12]}" for g, p, _ in EQUIV])
def test_answers_equivalent(gold, pred, expected):
    t0 = time.monotonic()
    assert answers_equivalent(gold, pred)[0] is expected
    assert time.monotonic() - t0 < 3.0  # first math-verify call pays the sympy import


def test_gold_answer_reduces_worked_solutions():
    assert gold_answer("She makes 9 * 2 = $18.\n#### 18") == "18"
    assert gold_answer("so $\\boxed{\\frac{1}{2}}$") == "\\frac{1}{2}"
    assert gold_answer(" 42 ") == "42"


COMPLETIONS = [
    ("The answer is \\boxed{18}.", 1.0),
    ("#### 18", 1.0),
    ("<answer>18</answer>", 1.0),
    ("The answer is 17.", 0.0),
    ("", 0.0),
    ("<answer>18", 0.0),  # unclosed tag, no other form
    ("\\boxed{1e100000}", 0.0),
    ("\\boxed{" + HUGE_INT + "}", 0.0),
    ("\u00e9\u4e2d\U0001F600 \\boxed{18}", 1.0),
    ("z" * 100_000, 0.0),
]


def _batch(completions, gold="18"):
    n = len(completions)
    return RewardInput(["q"] * n, completions, [{"answer": gold}] * n)


def test_math_accuracy_inline_table():
    out = math_accuracy(_batch([c for c, _ in COMPLETIONS]))
    np.testing.assert_array_equal(out.values, [v for _, v in COMPLETIONS])
    assert out.values.dtype == np.float32 and out.metrics["n_errors"] == 0


def test_math_accuracy_off_main_thread_without_pool():
    # math-verify's own signal.alarm would raise off the main thread; ours is disabled there.
    box = {}
    t = threading.Thread(target=lambda: box.update(out=math_accuracy(
        _batch(["\\boxed{\\frac{1}{2}}", "\\boxed{0.4}"], gold="0.5"))))
    t.start()
    t.join()
    np.testing.assert_array_equal(box["out"].values, [1.0, 0.0])
    assert box["out"].metrics["n_errors"] == 0


def test_math_accuracy_in_pool_matches_inline():
    completions = [c for c, _ in COMPLETIONS]
    with RewardPool(2, preload=("rlcot.rewards.math_answer", "math_verify")) as pool:
        out = math_accuracy(_batch(completions), pool=pool)
    np.testing.assert_array_equal(out.values, [v for _, v in COMPLETIONS])


def test_math_accuracy_missing_answer_field_fails_loud():
    with pytest.raises(KeyError, match="'answer'"):
        math_accuracy(RewardInput(["q"], ["1"], [{"solution": "1"}]))
