"""Gold-answer extraction and normalisation used by the builders."""

import json

import pytest

from rlcot.data.builders_math import gsm8k_split_answer, last_boxed, normalize_number


@pytest.mark.parametrize("value,expected", [
    ("1,080", "1080"), ("025", "25"), (" -7 ", "-7"), (27.0, "27"), (0.5, "0.5"),
    ("3.50", "3.5"), ("2.0", "2"), (12, "12"), ("\\frac{1}{2}", "\\frac{1}{2}"), ("x+1", "x+1"),
])
def test_normalize_number(value, expected):
    assert normalize_number(value) == expected


def test_normalize_number_rejects_bool():
    with pytest.raises(TypeError, match="bool"):
        normalize_number(True)


def test_gsm8k_split_answer():
    text = "He pays 2*3 = <<2*3=6>>6 dollars.\nThen 6+1,000=<<6+1000=1006>>1006.\n#### 1,006"
    assert gsm8k_split_answer(text) == ("He pays 2*3 = 6 dollars.\nThen 6+1,000=1006.", "1006")
    with pytest.raises(ValueError, match="exactly one '####'"):
        gsm8k_split_answer("no final answer")


@pytest.mark.parametrize("text,expected", [
    ("so $\\boxed{5}$.", "5"),
    ("first \\boxed{1} then \\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),  # last one, nested braces
    ("$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("answer $\\boxed 7$ done", "7"),
    ("\\fbox{12}", "12"),
    ("no box here", None),
    ("\\boxed{unclosed", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_last_boxed_agrees_with_math500_answers(shared_data):
    # MATH-500's `answer` column was extracted from the solutions; all 500 must agree.
    rows = [json.loads(line) for line in (shared_data / "math500" / "test.jsonl").open()]
    assert len(rows) == 500
    assert [last_boxed(r["solution"]) for r in rows] == [r["answer"] for r in rows]
