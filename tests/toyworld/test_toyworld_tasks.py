"""Toy-world problems and worked solutions: determinism, splits, and what each style does."""

import dataclasses

import numpy as np
import pytest

from rlcot.toyworld.solutions import (LANGUAGES, StyleRates, Style, column_pass, draw_style,
                                      write_solution)
from rlcot.toyworld.tasks import Problem, TaskConfig, iter_problems, problems, split_of


def test_generation_is_deterministic_and_prefix_stable():
    cfg = TaskConfig()
    a = problems(cfg, "train", 50, seed=3)
    assert a == problems(cfg, "train", 50, seed=3)
    assert a[:20] == problems(cfg, "train", 20, seed=3)
    assert a != problems(cfg, "train", 50, seed=4)
    assert len({p.question for p in a}) == 50  # distinct within a split


def test_splits_are_disjoint_by_question_hash():
    cfg = TaskConfig(min_digits=2, max_digits=2, test_permille=200)
    train = problems(cfg, "train", 3000)
    test = problems(cfg, "test", 600)
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(split_of(p.question, 200) == "train" for p in train)
    assert all(split_of(p.question, 200) == "test" for p in test)
    # Other seeds draw other problems, never the other split's.
    assert all(split_of(p.question, 200) == "test" for p in problems(cfg, "test", 100, seed=9))
    # The test share of all 8100 two-digit sums is close to 20% (a hash, not a coin per seed).
    share = np.mean([split_of(f"{a}+{b}", 200) == "test" for a in range(10, 100)
                     for b in range(10, 100)])
    assert abs(share - 0.2) < 0.02


def test_task_knobs_and_validation():
    cfg = TaskConfig(op="add", num_operands=3, min_digits=2, max_digits=4)
    ps = problems(cfg, "train", 200)
    assert {p.num_digits for p in ps} == {2, 3, 4}
    assert all(len(p.operands) == 3 and p.answer == sum(p.operands) for p in ps)
    assert all(len(str(x)) == p.num_digits for p in ps for x in p.operands)
    mul = problems(TaskConfig(op="mul"), "test", 50)
    assert all(2 <= p.operands[1] <= 9 and p.answer == p.operands[0] * p.operands[1] for p in mul)
    assert Problem("add", (12, 345)).question == "12+345"
    for bad in (dict(op="div"), dict(min_digits=3, max_digits=2), dict(num_operands=1),
                dict(op="mul", num_operands=3), dict(test_permille=0)):
        with pytest.raises(ValueError):
            TaskConfig(**bad)
    with pytest.raises(ValueError, match="split"):
        next(iter_problems(TaskConfig(), "validation"))
    with pytest.raises(ValueError, match="cannot draw"):
        problems(TaskConfig(min_digits=1, max_digits=1, num_operands=2), "test", 200)


def test_worked_solution_text_by_hand():
    p = Problem("add", (123, 489))
    en = ("en",) * 3
    clean = write_solution(p, Style(drop_carry=(False,) * 3, languages=en))
    assert clean.text == (" <think> first 3+9=12 carry 1 so 2. second 2+8+1=11 carry 1 so 12. "
                          "third 1+4+1=6 so 612. </think> <answer> 612 </answer>")
    assert (clean.stated, clean.correct, clean.flawed, clean.checked) == (612, True, False, False)
    # Dropping the carry into the tens: 2+8=10 (not 11), so 602.
    flawed = write_solution(p, Style(drop_carry=(False, True, False), languages=en))
    assert "second 2+8=10 carry 1 so 02." in flawed.text and flawed.stated == 602
    assert (flawed.correct, flawed.flawed) == (False, True)
    # Step checks redo each step without dropping the carry; the solution goes on from them.
    checked = write_solution(p, Style(drop_carry=(False, True, False), check=True,
                                      languages=en + ("en", "xx", "en")))
    assert checked.text == (
        " <think> first 3+9=12 carry 1 so 2. check first 3+9=12 carry 1 so 2. second 2+8=10 "
        "carry 1 so 02. проверка второй 2+8+1=11 перенос 1 итак 12. third 1+4+1=6 so 612. "
        "check third 1+4+1=6 so 612. </think> <answer> 612 </answer>")
    assert (checked.stated, checked.correct, checked.flawed) == (612, True, True)
    assert checked.checked and checked.second_language_steps == 1 and checked.steps == 6
    # A checking pass after the main pass, with a verdict; optionally with reversed operands.
    passed = write_solution(p, Style(drop_carry=(False, True, False), check=True,
                                     languages=en + ("xx",) * 3, check_mode="pass"))
    assert ("so 602. проверка первый 3+9=12 перенос 1 итак 2. второй 2+8+1=11 перенос 1 итак "
            "12. третий 1+4+1=6 итак 612. ошибка. </think> <answer> 612 </answer>") in passed.text
    assert (passed.stated, passed.correct, passed.flawed) == (612, True, True)
    reverse = write_solution(p, Style(drop_carry=(False,) * 3, check=True, languages=en * 2,
                                      reverse_check=True, check_mode="pass"))
    assert ("so 612. check first 9+3=12 carry 1 so 2. second 8+2+1=11 carry 1 so 12. third "
            "4+1+1=6 so 612. ok." in reverse.text)
    with pytest.raises(ValueError, match="check_mode"):
        Style(check_mode="later")
    plain = write_solution(p, Style(plain=True))
    assert plain.text == " the answer is 612." and plain.correct
    verbose = write_solution(p, Style(drop_carry=(False,) * 3, languages=en, verbose=True))
    assert verbose.text.count(LANGUAGES["en"]["filler"]) == 3 and verbose.stated == 612
    with pytest.raises(ValueError, match="3 drop_carry flags"):
        write_solution(p, Style(drop_carry=(False,), languages=en))


def test_multiplication_steps():
    steps, result = column_pass(Problem("mul", (4829, 7)), [False] * 4, False, ["en"] * 4, False)
    assert steps == ["first 9*7=63 carry 6 so 3.", "second 2*7+6=20 carry 2 so 03.",
                     "third 8*7+2=58 carry 5 so 803.", "fourth 4*7+5=33 so 33803."]
    assert result == 33803 == 4829 * 7


def test_every_clean_or_checked_solution_is_right():
    rng = np.random.default_rng(0)
    for cfg in (TaskConfig(), TaskConfig(num_operands=3, min_digits=1, max_digits=5),
                TaskConfig(op="mul", min_digits=2, max_digits=6)):
        for p in problems(cfg, "train", 300):
            style = draw_style(rng, p, StyleRates(plain_rate=0.0, flaw_rate=0.0, check_rate=0.5,
                                                  mix_rate=0.5))
            assert write_solution(p, style).stated == p.answer
            for mode in ("step", "pass"):
                style = draw_style(rng, p, StyleRates(plain_rate=0.0, flaw_rate=1.0,
                                                      check_rate=1.0, check_mode=mode,
                                                      reverse_check_rate=0.5))
                sol = write_solution(p, style)
                assert sol.stated == p.answer and sol.checked


def test_style_draws_do_not_shift_when_a_rate_changes():
    p = Problem("add", (1234, 5678))
    a = [draw_style(np.random.default_rng(s), p, StyleRates(check_rate=0.2)) for s in range(50)]
    b = [draw_style(np.random.default_rng(s), p, StyleRates(check_rate=0.6)) for s in range(50)]
    assert [x.drop_carry for x in a] == [y.drop_carry for y in b]
    assert all(y.check for x, y in zip(a, b) if x.check)  # raising a rate only adds checks
    with pytest.raises(ValueError, match="flaw_rate"):
        StyleRates(flaw_rate=1.5)
    assert dataclasses.replace(StyleRates(), mix_share=1.0).mix_share == 1.0
