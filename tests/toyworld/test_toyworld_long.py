"""'toyworld_long', the Kimi study's long-CoT data: checked solutions whose checks are repeated
1-3 times (redundant re-checking), always right, English only, prefix-stable."""

import dataclasses

import numpy as np
import pytest

from rlcot.toyworld.checks import has_check_step, is_correct, second_language_share, strict_format
from rlcot.toyworld.corpus import WorldConfig
from rlcot.toyworld.dataset import LONG_CHECK_REPEATS, repeated_checks
from rlcot.toyworld.solutions import Style, StyleRates, write_solution
from rlcot.toyworld.tasks import problems
from rlcot.world_setup import data_source

WORLD = WorldConfig(rates=StyleRates(flaw_rate=1.0), corpus_size=100)


def test_one_check_per_step_is_the_worlds_checked_solution():
    for p in problems(WORLD.task, "train", 20, WORLD.seed):
        d = p.num_digits
        for drop in ((True,) * d, (False,) * d):
            style = Style(drop_carry=drop, check=True, languages=("en",) * (2 * d))
            assert repeated_checks(p, drop, (1,) * d) == write_solution(p, style).text


def test_repeats_write_the_same_check_again():
    p = problems(WORLD.task, "train", 1, WORLD.seed)[0]
    text = repeated_checks(p, (True, True, True), (3, 1, 2))
    assert text == (
        " <think> first 5+3=8 so 8. check first 5+3=8 so 8. check first 5+3=8 so 8. check first"
        " 5+3=8 so 8. second 6+7=13 carry 1 so 38. check second 6+7=13 carry 1 so 38. third"
        " 8+6=14 so 1438. check third 8+6+1=15 so 1538. check third 8+6+1=15 so 1538. </think>"
        " <answer> 1538 </answer>")
    with pytest.raises(ValueError, match="repeats >= 1"):
        repeated_checks(p, (True,) * 3, (1, 0, 1))
    with pytest.raises(ValueError, match="3 drop flags"):
        repeated_checks(p, (True,) * 2, (1, 1, 1))


def test_long_source_rows_are_right_english_and_as_long_as_declared():
    ref = data_source(WORLD, "toyworld", "train", 400)
    src = data_source(WORLD, "toyworld_long", "train", 400)
    assert [r["question"] for r in src] == [r["question"] for r in ref]
    checks = []
    for r in src:
        sol = r["solution"]
        assert is_correct(sol, r["answer"]) and strict_format(sol) and has_check_step(sol)
        assert second_language_share(sol) == 0.0
        checks.append(sol.count("check") / 3)  # 3-digit problems: checks per column
    # Mean repeats per column near LONG_CHECK_REPEATS' mean (2.3) over 1,200 columns.
    mean = sum(r * q for r, q in LONG_CHECK_REPEATS)
    assert abs(np.mean(checks) - mean) < 0.1
    assert 1 <= min(checks) and max(checks) <= 3
    # Prefix-stable: the first 10 rows of a 10-row source are the first 10 here.
    assert [r["solution"] for r in data_source(WORLD, "toyworld_long", "train", 10)] == \
        [r["solution"] for r in src[:10]]


def test_long_solutions_need_step_checks():
    world = dataclasses.replace(WORLD, rates=StyleRates(check_mode="pass"))
    with pytest.raises(ValueError, match="check_mode"):
        data_source(world, "toyworld_long", "train", 3)
