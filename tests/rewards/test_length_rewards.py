"""Length rewards against hand-computed values."""

import math

import numpy as np
import pytest

from rlcot.rewards.base import RewardInput
from rlcot.rewards.length import (cosine_length, dapo_overlong, kimi_length, repeated_fraction,
                                  repetition_penalty)


def _batch(lengths, groups=None, truncated=None, completions=None):
    n = len(lengths)
    return RewardInput(["p"] * n, completions or ["c"] * n, [{}] * n,
                       completion_lengths=np.array(lengths), group_ids=groups,
                       truncated=truncated)


def test_kimi_length_hand_computed():
    # Group 0: lengths 100, 200, 300 -> lambda = 0.5, 0.0, -0.5.
    # Group 1: lengths 50, 150 -> lambda = 0.5, -0.5.  Group 2: equal lengths -> 0.
    batch = _batch([100, 200, 300, 50, 150, 70, 70], groups=np.array([0, 0, 0, 1, 1, 2, 2]))
    correct = np.array([True, False, True, False, False, True, False])
    out = kimi_length(batch, correct=correct)
    # correct keeps lambda; wrong gets min(0, lambda): 0.5->0, -0.5 stays.
    np.testing.assert_allclose(out.values, [0.5, 0.0, -0.5, 0.0, -0.5, 0.0, 0.0])
    # Groups need not be contiguous: the same numbers interleaved.
    perm = np.array([3, 0, 5, 1, 4, 2, 6])
    shuffled = _batch(np.array([100, 200, 300, 50, 150, 70, 70])[perm],
                      groups=np.array([0, 0, 0, 1, 1, 2, 2])[perm])
    np.testing.assert_allclose(kimi_length(shuffled, correct=correct[perm]).values,
                               out.values[perm])


def test_kimi_length_needs_groups_lengths_and_correctness():
    with pytest.raises(ValueError, match="group_ids"):
        kimi_length(_batch([1, 2]), correct=[True, True])
    with pytest.raises(ValueError, match="correct"):
        kimi_length(_batch([1, 2], groups=np.array([0, 0])))
    with pytest.raises(ValueError, match="shape"):
        kimi_length(_batch([1, 2], groups=np.array([0, 0])), correct=[True])


def test_dapo_overlong_hand_computed():
    # max_len 100, cache 20: 0 up to 80, then (80 - L) / 20, -1 from 100 on.
    out = dapo_overlong(_batch([0, 80, 85, 90, 100, 130]), max_len=100, cache_len=20)
    np.testing.assert_allclose(out.values, [0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    with pytest.raises(ValueError, match="cache_len"):
        dapo_overlong(_batch([1]), max_len=10, cache_len=20)


def test_cosine_length_hand_computed():
    # max_len 100; r = end + (start - end) * (1 + cos(pi t)) / 2.
    batch = _batch([0, 50, 100, 0, 50, 200], truncated=np.array([0, 0, 0, 0, 0, 1], bool))
    correct = np.array([True, True, True, False, False, False])
    out = cosine_length(batch, max_len=100, correct=correct)
    # correct: t=0 -> 2, t=.5 -> 1 + 1 * 0.5 = 1.5, t=1 -> 1; wrong: t=0 -> -10,
    # t=.5 -> 0 + (-10) * 0.5 = -5; truncated -> exceed = -10.
    np.testing.assert_allclose(out.values, [2.0, 1.5, 1.0, -10.0, -5.0, -10.0], atol=1e-6)
    # Progress is clamped at 1 when exceed is off: 200 tokens count as 100.
    clamp = cosine_length(_batch([200, 200]), max_len=100, correct=[True, False], exceed=None)
    np.testing.assert_allclose(clamp.values, [1.0, 0.0], atol=1e-6)
    # Unknown truncation: len >= max_len counts as exceeded.
    assert cosine_length(_batch([100]), max_len=100, correct=[True]).values[0] == -10.0
    quarter = cosine_length(_batch([25]), max_len=100, correct=[True]).values[0]
    assert quarter == pytest.approx(1 + 0.5 * (1 + math.cos(math.pi / 4)))


def test_repetition_penalty_hand_computed():
    # "a b a b a b": 3-grams (a b a), (b a b), (a b a), (b a b): 2 unique of 4 -> 0.5 repeated.
    assert repeated_fraction("a b a b a b", 3) == 0.5
    assert repeated_fraction("one two", 3) == 0.0  # fewer words than n
    assert repeated_fraction("", 3) == 0.0
    texts = ["a b a b a b", "all different words in here", "", "x" * 100_000, "go " * 30_000]
    out = repetition_penalty(_batch([1] * 5, completions=texts), max_penalty=-2.0)
    # 30000 "go": 29998 3-grams, 1 unique -> 1 - 1/29998 repeated.
    np.testing.assert_allclose(out.values, [-1.0, 0.0, 0.0, 0.0, -2.0 * (1 - 1 / 29998)], rtol=1e-6)
    with pytest.raises(ValueError, match="max_penalty"):
        repetition_penalty(_batch([1]), max_penalty=1.0)


def test_length_rewards_need_token_lengths():
    batch = RewardInput(["p"], ["c"], [{}])
    with pytest.raises(ValueError, match="completion_lengths"):
        dapo_overlong(batch, max_len=10, cache_len=2)
