"""Batch signature checks, the registry, and the weighted combination of a reward spec."""

import inspect
import subprocess
import sys
import time

import numpy as np
import pytest

from rlcot.rewards.base import RewardInput, RewardOutput
from rlcot.rewards.pool import RewardPool
from rlcot.rewards.registry import REWARDS, RewardCombiner, parse_reward_spec


def test_reward_input_validation():
    with pytest.raises(ValueError, match="2 prompts, 1 completions"):
        RewardInput(["a", "b"], ["x"], [{}])
    with pytest.raises(ValueError, match="shape"):
        RewardInput(["a"], ["x"], [{}], completion_lengths=np.array([1, 2]))
    with pytest.raises(ValueError, match="integer"):
        RewardInput(["a"], ["x"], [{}], group_ids=np.array([0.5]))
    with pytest.raises(ValueError, match="negative"):
        RewardInput(["a"], ["x"], [{}], completion_lengths=[-1])
    b = RewardInput(["a"], ["x"], [{}], completion_lengths=[3], group_ids=np.array([7], np.int64))
    assert b.completion_lengths.dtype == np.int32 and b.group_ids.dtype == np.int32 and len(b) == 1


def test_reward_output_validation():
    with pytest.raises(ValueError, match="non-finite"):
        RewardOutput(np.array([np.nan]), [{}])
    with pytest.raises(ValueError, match="details"):
        RewardOutput(np.zeros(2), [{}])
    assert RewardOutput([1, 2], [{}, {}]).values.dtype == np.float32


def test_every_reward_has_the_batch_signature_and_documents_its_range():
    for name, fn in REWARDS.items():
        params = list(inspect.signature(fn).parameters.values())
        assert params[0].name == "batch", name
        assert all(p.kind == p.KEYWORD_ONLY for p in params[1:]), name
        assert "Range" in fn.__doc__, f"{name} does not document its range"


def test_spec_parsing_errors():
    with pytest.raises(ValueError, match="unknown reward 'mathh'"):
        parse_reward_spec({"mathh": 1.0})
    with pytest.raises(ValueError, match=r"unknown parameters \['modee'\]"):
        parse_reward_spec({"r1_format": {"weight": 1.0, "modee": "soft"}})
    with pytest.raises(ValueError, match="unknown parameters"):
        parse_reward_spec({"math_accuracy": {"pool": None}})  # injected, never in a spec
    with pytest.raises(ValueError, match="accuracy"):
        parse_reward_spec({"kimi_length": 1.0})
    with pytest.raises(ValueError, match="neither a label"):
        parse_reward_spec({"k": {"reward": "kimi_length", "accuracy": "nope"}})
    with pytest.raises(ValueError, match="empty"):
        parse_reward_spec({})
    with pytest.raises(ValueError, match="judge_generate"):
        RewardCombiner({"ai_judge": 1.0})


def _batch():
    completions = ["<think>a</think><answer>\\boxed{4}</answer>",  # right, formatted, 10 tokens
                   "<think>a b</think><answer>5</answer>",  # wrong, formatted, 20 tokens
                   "4",  # no extractable answer, 30 tokens
                   "The answer is 4"]  # right, unformatted, 40 tokens
    return RewardInput(["Q"] * 4, completions, [{"answer": "4"}] * 4,
                       completion_lengths=np.array([10, 20, 30, 40]),
                       group_ids=np.array([0, 0, 0, 0]))


SPEC = {"math_accuracy": 1.0,
        "fmt": {"reward": "r1_format", "weight": 0.5, "mode": "strict"},
        "len": {"reward": "kimi_length", "weight": 0.2, "accuracy": "math_accuracy"}}


def test_combiner_weighted_sum_and_components():
    comb = RewardCombiner(SPEC)
    res = comb(_batch())
    acc, fmt, kimi = (res.components[k].values for k in ("math_accuracy", "fmt", "len"))
    np.testing.assert_array_equal(acc, [1, 0, 0, 1])
    np.testing.assert_array_equal(fmt, [1, 1, 0, 0])
    # Kimi: lengths 10..40 -> lambda = 0.5, 1/6, -1/6, -0.5; wrong items clipped at 0.
    np.testing.assert_allclose(kimi, [0.5, 0.0, -1 / 6, -0.5], rtol=1e-6)
    # total = 1*acc + 0.5*fmt + 0.2*kimi
    np.testing.assert_allclose(res.total, [1 + 0.5 + 0.1, 0.5, -0.2 / 6, 1 - 0.1], rtol=1e-6)
    assert res.total.dtype == np.float32
    assert res.metrics["reward/math_accuracy/mean"] == pytest.approx(0.5)
    assert res.metrics["reward/math_accuracy/n_timeouts"] == 0
    assert res.metrics["reward/total/mean"] == pytest.approx(res.total.mean())
    assert list(res.components) == ["math_accuracy", "fmt", "len"]  # spec order
    comb.close()


def test_accuracy_by_reward_name_and_threshold():
    spec = {"len": {"reward": "cosine_length", "accuracy": "math_accuracy", "max_len": 100,
                    "exceed": None}}
    res = RewardCombiner(spec)(_batch())
    # correct at 10 tokens: 1 + 0.5 * (1 + cos(0.1 pi)); the others are scored as wrong.
    assert res.total[0] == pytest.approx(1 + 0.5 * (1 + np.cos(0.1 * np.pi)), rel=1e-6)
    assert res.total[1] == pytest.approx(-10 * 0.5 * (1 + np.cos(0.2 * np.pi)), rel=1e-6)


def test_submit_overlaps_with_caller_and_uses_pool():
    with RewardPool(2, preload=("rlcot.rewards.math_answer", "math_verify")) as pool:
        comb = RewardCombiner(SPEC, pool=pool)
        assert comb.worker_preload() == ("rlcot.rewards.math_answer", "math_verify")
        t0 = time.monotonic()
        future = comb.submit(_batch())
        assert time.monotonic() - t0 < 0.05  # returns at once; scoring runs in the background
        res = future.result(timeout=60)
        np.testing.assert_array_equal(res.components["math_accuracy"].values, [1, 0, 0, 1])
        comb.close()


def test_importing_rewards_is_light():
    code = ("import sys, rlcot.rewards.registry\n"
            "heavy = [m for m in ('jax', 'sympy', 'math_verify', 'reasoning_gym', 'torch') "
            "if m in sys.modules]\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
