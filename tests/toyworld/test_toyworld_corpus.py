"""The corpus: behaviour rates match their configuration; examples follow the common schema."""

import dataclasses

import numpy as np
import pytest

from rlcot.data.templates import R1_ZERO_TEMPLATE
from rlcot.toyworld.checks import (has_check_step, is_correct, rates_of, second_language_share,
                                   strict_format)
from rlcot.toyworld.corpus import WorldConfig, build_corpus, examples, prompt_text
from rlcot.toyworld.dataset import ToyWorldSource, preference_pairs
from rlcot.toyworld.solutions import StyleRates
from rlcot.toyworld.tasks import TaskConfig

N = 3000
RATES = StyleRates(plain_rate=0.1, flaw_rate=0.6, check_rate=0.2, mix_rate=0.3, mix_share=0.5,
                   verbose_rate=0.25)
WORLD = WorldConfig(task=TaskConfig(min_digits=3, max_digits=3), rates=RATES, corpus_size=N)


def _tol(p, n=N):
    return 4 * np.sqrt(p * (1 - p) / n)  # 4 standard errors of a rate


@pytest.fixture(scope="module")
def docs():
    return build_corpus(WORLD)


def test_corpus_is_deterministic(docs):
    again = build_corpus(WORLD, 100)
    assert [d.completion for d in again] == [d.completion for d in docs[:100]]
    other = build_corpus(dataclasses.replace(WORLD, seed=1), 100)
    assert [d.completion for d in other] != [d.completion for d in docs[:100]]


def test_behaviour_rates_match_configuration(docs):
    rates = rates_of([d.labels for d in docs])
    fmt = [d for d in docs if d.labels["format"]]
    n_fmt = len(fmt)
    assert abs(rates["format"] - 0.9) < _tol(0.9)
    # Each behaviour is drawn independently of the format choice: its rate among worked
    # solutions is the configured rate.
    for key, rate in (("check", 0.2), ("verbose", 0.25)):
        got = np.mean([d.labels[key] for d in fmt])
        assert abs(got - rate) < _tol(rate, n_fmt), (key, got)
    # mixed: drawn with mix_rate, and visible when at least one of its steps (3, or 6 with a
    # check) lands in the second language: 0.3 * (0.8 * (1 - 0.5**3) + 0.2 * (1 - 0.5**6)).
    expect_mixed = 0.3 * (0.8 * (1 - 0.5 ** 3) + 0.2 * (1 - 0.5 ** 6))
    got = np.mean([d.labels["mixed"] for d in fmt])
    assert abs(got - expect_mixed) < _tol(expect_mixed, n_fmt)
    # Word share: every step has the same number of connective words in both languages, so
    # the expected share is mix_rate * mix_share = 0.15 (check headers and verdicts are
    # single words in the check pass's first step's language: same expectation).
    share = np.mean([second_language_share(d.completion) for d in fmt])
    assert abs(share - 0.15) < 0.02
    # Flaws: each drop subtracts its carry from the total, so a document is flawed iff a carry
    # was dropped. Problems with no internal carry are never flawed; with 1 or 2
    # carry-receiving columns (3 digits) the flawed rate lies in [0.6, 1 - 0.4**2 = 0.84].
    assert all(d.labels["correct"] for d in docs if d.labels["check"] or not d.labels["format"])
    plain_pass = [d for d in fmt if not d.labels["check"]]
    carries = np.array([_has_internal_carry(_question(d)) for d in plain_pass])
    flawed = np.array([d.labels["flawed"] for d in plain_pass])
    assert not flawed[~carries].any()
    n = carries.sum()
    assert 0.6 - _tol(0.6, n) < flawed[carries].mean() < 0.84 + _tol(0.84, n)
    assert all(d.labels["flawed"] != d.labels["correct"] for d in plain_pass)


def _question(doc):
    return doc.prompt.split("User: ")[1][:-len(". Assistant:")]


def _has_internal_carry(question):
    a, b = (int(x) for x in question.split("+"))
    n, carry = len(str(a)), 0
    for i in range(n - 1):  # the last column writes its whole sum
        carry = ((a // 10 ** i) % 10 + (b // 10 ** i) % 10 + carry) // 10
        if carry:
            return True
    return False


def test_labels_agree_with_checkers(docs):
    for d in docs[:500]:
        assert is_correct(d.completion, d.answer) == (d.labels["correct"] and d.labels["format"])
        assert strict_format(d.completion) == d.labels["format"]
        assert has_check_step(d.completion) == d.labels["check"]
        assert (second_language_share(d.completion) > 0) == d.labels["mixed"]
        assert d.prompt == R1_ZERO_TEMPLATE.format(prompt=_question(d))


def test_zero_and_one_rates():
    world = dataclasses.replace(WORLD, corpus_size=200, rates=StyleRates(
        plain_rate=0.0, flaw_rate=0.0, check_rate=0.0, mix_rate=0.0, verbose_rate=0.0))
    rates = rates_of([d.labels for d in build_corpus(world)])
    assert rates == {"format": 1.0, "correct": 1.0, "flawed": 0.0, "check": 0.0, "mixed": 0.0,
                     "verbose": 0.0}
    world = dataclasses.replace(world, rates=StyleRates(plain_rate=1.0))
    assert rates_of([d.labels for d in build_corpus(world)])["format"] == 0.0


def test_examples_and_source_schema():
    ex = examples(WORLD, "test", 5)
    assert set(ex[0]) == {"id", "question", "answer", "solution", "task"}
    assert all(isinstance(v, str) for e in ex for v in e.values())
    assert ex[0]["id"] == "toyworld_add/test/0" and ex[0]["task"] == "toyworld_add"
    assert is_correct(ex[0]["solution"], ex[0]["answer"])
    assert prompt_text(ex[0]["question"]) == R1_ZERO_TEMPLATE.format(prompt=ex[0]["question"])
    src = ToyWorldSource(WORLD, "test", 20)
    assert len(src) == 20 and src[:5] == ex and src.__getitems__([1, 3]) == [ex[1], ex[3]]
    train = ToyWorldSource(WORLD, "train", 200)
    test = ToyWorldSource(WORLD, "test", 200)
    assert not {e["question"] for e in train} & {e["question"] for e in test}


def test_source_feeds_the_prompt_pipeline():
    from rlcot.data.pipeline import PipelineConfig, PromptPipeline
    from rlcot.data.templates import TemplateConfig

    class CharTokenizer:
        bos_id, pad_id = None, 0

        def encode(self, text, add_bos=False):
            return [ord(c) % 250 + 1 for c in text]

    src = ToyWorldSource(WORLD, "train", 8)
    pipe = PromptPipeline(src, CharTokenizer(), PipelineConfig(
        batch_size=4, template=TemplateConfig("r1_zero", instruction=""), shuffle=False))
    batch = next(iter(pipe))
    assert batch["prompt_text"][0] == prompt_text(src[0]["question"])
    assert batch["example"][0]["answer"] == src[0]["answer"]


@pytest.mark.parametrize("criterion", ["correct", "concise", "language"])
def test_preference_pairs(criterion):
    pairs = preference_pairs(WORLD, "train", 20, criterion)
    assert len(pairs) == 20
    for p in pairs:
        assert p["chosen"] != p["rejected"] and p["prompt"] == prompt_text(p["question"])
        if criterion == "correct":
            assert is_correct(p["chosen"], p["answer"])
            assert not is_correct(p["rejected"], p["answer"])
        else:
            assert is_correct(p["chosen"], p["answer"]) and is_correct(p["rejected"], p["answer"])
        if criterion == "concise":
            assert len(p["chosen"]) < len(p["rejected"])
        if criterion == "language":
            assert second_language_share(p["chosen"]) == 0 < second_language_share(p["rejected"])
    with pytest.raises(ValueError, match="criterion"):
        preference_pairs(WORLD, "train", 1, "longer")


def test_mixing_tied_to_checking():
    """check_mix_rate (the R1 study's world): checked solutions are mixed at that rate, the
    others at mix_rate; the same documents otherwise, and None leaves the corpus as it was."""
    rates = dataclasses.replace(RATES, mix_rate=0.05, check_mix_rate=0.9)
    tied = build_corpus(dataclasses.replace(WORLD, rates=rates))
    plain = build_corpus(dataclasses.replace(WORLD, rates=dataclasses.replace(RATES,
                                                                              mix_rate=0.05)))
    assert [d.labels["check"] for d in tied] == [d.labels["check"] for d in plain]
    assert all(a.completion == b.completion for a, b in zip(tied, plain) if not a.labels["check"])
    checked = [d for d in tied if d.labels["check"]]
    others = [d for d in tied if d.labels["format"] and not d.labels["check"]]
    # Visible mixing: at least one of 6 (checked) or 3 steps in the second language.
    for group, rate, steps in ((checked, 0.9, 6), (others, 0.05, 3)):
        want = rate * (1 - 0.5 ** steps)
        got = np.mean([d.labels["mixed"] for d in group])
        assert abs(got - want) < _tol(want, len(group)), (rate, got, want)
    again = build_corpus(dataclasses.replace(WORLD, rates=dataclasses.replace(
        RATES, check_mix_rate=None)), 200)
    assert [d.completion for d in again] == [d.completion for d in build_corpus(WORLD, 200)]
    with pytest.raises(ValueError, match="check_mix_rate"):
        StyleRates(check_mix_rate=1.5)


def test_mixing_only_in_checks():
    """mix_steps='checks' (with mix_share 1): a mixed solution writes every check step, and
    only those, in the second language; the same draws decide everything else."""
    rates = dataclasses.replace(RATES, check_mix_rate=0.9, mix_steps="checks", mix_share=1.0)
    docs = build_corpus(dataclasses.replace(WORLD, rates=rates))
    free = build_corpus(dataclasses.replace(WORLD, rates=dataclasses.replace(
        rates, mix_steps="any")))
    assert [d.labels["check"] for d in docs] == [d.labels["check"] for d in free]
    assert not any(d.labels["mixed"] for d in docs if not d.labels["check"])
    checked = [d for d in docs if d.labels["check"]]
    got = np.mean([d.labels["mixed"] for d in checked])
    assert abs(got - 0.9) < _tol(0.9, len(checked))
    for d in checked:
        steps = d.completion.split(". ")
        checks = [x for x in steps if x.startswith(("check", "проверка"))]
        assert len(checks) == 3
        assert all(x.startswith("проверка") == d.labels["mixed"] for x in checks)
        # Main steps (the others) stay in English.
        assert all(second_language_share(f"<think> {x} </think>") == 0.0
                   for x in steps if x not in checks)
    with pytest.raises(ValueError, match="mix_steps"):
        StyleRates(mix_steps="main")


def test_checked_source_is_the_cold_start_data():
    """'toyworld_checked': the same problems as 'toyworld', each solution checked step by
    step, right, in the format, and in the target language only."""
    from rlcot.world_setup import data_source
    world = dataclasses.replace(WORLD, rates=dataclasses.replace(RATES, flaw_rate=1.0))
    ref = data_source(world, "toyworld", "train", 50)
    src = data_source(world, "toyworld_checked", "train", 50)
    assert [r["question"] for r in src] == [r["question"] for r in ref]
    for r in src:
        sol = r["solution"]
        assert is_correct(sol, r["answer"]) and strict_format(sol) and has_check_step(sol)
        assert second_language_share(sol) == 0.0 and sol.count("check") == 3
    # The main pass drops carries as the world's does (flaw_rate 1): its last step and its
    # check disagree wherever a carry came in.
    assert src[0]["solution"] == (
        " <think> first 5+3=8 so 8. check first 5+3=8 so 8. second 6+7=13 carry 1 so 38. check"
        " second 6+7=13 carry 1 so 38. third 8+6=14 so 1438. check third 8+6+1=15 so 1538."
        " </think> <answer> 1538 </answer>")
    assert [r["solution"] for r in data_source(world, "toyworld_checked", "train", 10)] == \
        [r["solution"] for r in src[:10]]
    with pytest.raises(ValueError, match="solution"):
        ToyWorldSource(world, "train", 5, solution="mixed")
