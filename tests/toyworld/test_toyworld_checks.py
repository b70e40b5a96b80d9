"""Toy-world checkers on hand-made completions."""

import math

import pytest

from rlcot.toyworld.checks import (chain_of_thought, extract_answer, has_check_step, is_correct,
                                   second_language_share, strict_format, summarize, word_languages)

GOOD = (" <think> first 3+9=12 carry 1 so 2. second 2+8+1=11 carry 1 so 12. third 1+4+1=6 so "
        "612. </think> <answer> 612 </answer>")
WRONG = GOOD.replace("<answer> 612", "<answer> 602")
CHECKED = (" <think> first 3+9=12 carry 1 so 2. check first 3+9=12 carry 1 so 2. second 2+8=10 "
           "carry 1 so 02. check second 2+8+1=11 carry 1 so 12. third 1+4+1=6 so 612. check "
           "third 1+4+1=6 so 612. </think> <answer> 612 </answer>")


def test_correctness():
    assert is_correct(GOOD, "612") and is_correct(GOOD, 612)
    assert not is_correct(WRONG, "612")
    assert is_correct("<answer>0612</answer>", "612") and is_correct("<answer> +612 </answer>", 612)
    assert is_correct("<answer>-0</answer>", "0") and is_correct("<answer>-7</answer>", "-7")
    assert not is_correct("<answer>612.</answer>", "612")  # anything else in the block
    assert not is_correct("<answer>6 12</answer>", "612")
    assert not is_correct("<answer>612", "612")  # unclosed
    assert not is_correct("the answer is 612.", "612")  # no tags: no answer
    assert not is_correct("", "612")
    # The last block counts.
    assert is_correct("<answer> 1 </answer> <answer> 612 </answer>", "612")
    assert not is_correct("<answer> 612 </answer> <answer> 1 </answer>", "612")
    assert not is_correct("<answer>٦١٢</answer>", "612")  # Arabic-Indic digits are not ours
    big = "9" * 100_000  # compared as text, never converted to int
    assert is_correct(f"<answer>{big}</answer>", big)
    assert not is_correct(f"<answer>{big}</answer>", "9")
    with pytest.raises(ValueError, match="not an integer"):
        is_correct(GOOD, "six")


def test_format_and_extraction():
    assert strict_format(GOOD) and strict_format(CHECKED)
    assert not strict_format("the answer is 612.")
    assert not strict_format(GOOD + " extra")
    assert not strict_format(GOOD.replace("</think>", ""))
    assert not strict_format(" <think> a </think> <answer> 1 </answer> <answer> 2 </answer>")
    assert not strict_format(" <think> </think> <answer> 612 </answer>")  # empty thinking
    assert extract_answer(GOOD) == "612" and extract_answer("no tags") is None
    assert extract_answer("</answer> <answer>") is None


def test_checking_steps_and_languages():
    assert has_check_step(CHECKED) and not has_check_step(GOOD)
    assert has_check_step(" <think> first 1+2=3 so 3. проверка первый 1+2=3 итак 3. </think>")
    assert has_check_step("<think> Check: 1+2=3 </think>")  # any case, any punctuation
    assert not has_check_step("<think> checked checking rechecks </think>")  # whole words only
    # A "check" after the reasoning (in the answer) is not a checking step.
    assert not has_check_step(" <think> 1+2=3 so 3. </think> <answer> check 3 </answer>")
    assert has_check_step("check 1+2=3")  # untagged reasoning counts
    assert second_language_share(GOOD) == 0.0
    # Words of "first 3+9=12 carry 1 итак 2. второй 2+8=10 перенос 1 so 02.": first, carry,
    # итак, второй, перенос, so -> 3 of 6 in the second language.
    mixed = (" <think> first 3+9=12 carry 1 итак 2. второй 2+8=10 перенос 1 so 02. </think> "
             "<answer> 2 </answer>")
    assert second_language_share(mixed) == 0.5
    # Unknown words count as words of no language: 1 of 3.
    assert second_language_share("<think> итак foo bar </think>") == pytest.approx(1 / 3)
    assert second_language_share("<think> 1+1=2 </think>") == 0.0  # no words
    assert word_languages()["перенос"] == "xx" and word_languages()["carry"] == "en"
    assert chain_of_thought(GOOD).strip().startswith("first 3+9=12")


def test_unicode_and_huge_inputs_are_handled():
    weird = "<think> ✓ 😀 \u0000 \ud7ff 漢字 </think> <answer> 612 </answer>"
    assert is_correct(weird, "612") and strict_format(weird)
    assert second_language_share(weird) == 0.0  # 漢/字 are words of no language
    huge = "<think> " + "first 2+1=3 carry 1 so 2. " * 4000 + "</think> <answer> 612 </answer>"
    assert len(huge) > 100_000
    assert is_correct(huge, "612") and strict_format(huge) and not has_check_step(huge)
    assert second_language_share(huge) == 0.0
    junk = "<" * 100_000 + "answer>" + "1" * 100_000
    assert not is_correct(junk, "1") and not strict_format(junk) and extract_answer(junk) is None


def test_summarize_rates_by_hand():
    completions = [GOOD, WRONG, CHECKED, "the answer is 612."]
    s = summarize(completions, ["612"] * 4, lengths=[10, 10, 20, 5])
    assert s["accuracy"] == 0.5  # GOOD and CHECKED
    assert s["format"] == 0.75
    assert s["check_rate"] == 0.25
    assert s["accuracy_with_check"] == 1.0 and s["accuracy_without_check"] == pytest.approx(1 / 3)
    assert s["mean_tokens"] == 11.25
    assert s["second_language_share"] == 0.0 and s["mixed_rate"] == 0.0
    assert math.isnan(summarize([GOOD], ["612"])["accuracy_with_check"])
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        summarize([GOOD, GOOD], ["612"])


def test_eval_extras_per_pass_by_hand():
    """The toy world's behaviours of each evaluation pass (rlcot.world_setup.eval_extras)."""
    from types import SimpleNamespace

    from rlcot.world_setup import eval_extras
    english = "<think> first 1+2=3 so 3. check first 1+2=3 so 3. </think> <answer> 3 </answer>"
    mixed = "<think> first 1+2=3 so 3. проверка первый 1+2=3 итак 3. </think> <answer> 3 </answer>"
    plain = "the answer is 3."
    records = ([{"pass": "greedy", "completion": c} for c in (english, plain)]
               + [{"pass": "sampled", "completion": c} for c in (english, mixed, mixed, plain)])
    bench = SimpleNamespace(label="toyworld:test", records=records)
    out = eval_extras(SimpleNamespace(benchmarks={"toyworld:test": bench}))
    # mixed: 3 of its 5 words (first so | проверка первый итак) are in the second language.
    assert out == {
        "eval/toyworld:test/greedy/check_rate": 0.5,
        "eval/toyworld:test/greedy/second_language": 0.0,
        "eval/toyworld:test/greedy/mixed_rate": 0.0,
        "eval/toyworld:test/sampled/check_rate": 0.75,
        "eval/toyworld:test/sampled/second_language": pytest.approx((0.6 + 0.6) / 4),
        "eval/toyworld:test/sampled/mixed_rate": 0.5,
    }
    other = SimpleNamespace(label="gsm8k:test", records=records)
    assert eval_extras(SimpleNamespace(benchmarks={"gsm8k:test": other})) == {}
