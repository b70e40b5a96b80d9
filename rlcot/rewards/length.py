"""Length-shaped rewards, lengths in tokens: Kimi k1.5, DAPO overlong, cosine, n-gram repetition.

Rewards that depend on correctness take `correct: bool [N]`; the combiner fills it from another
reward of the spec (its `accuracy` parameter names that reward).
"""

from __future__ import annotations

import numpy as np

from rlcot.rewards.base import RewardInput, RewardOutput, from_values


def _correct(correct, n: int, reward: str) -> np.ndarray:
    if correct is None:
        raise ValueError(f"{reward} needs correct=bool[N] (in a reward spec, set its 'accuracy' "
                         f"parameter to the label of an accuracy reward)")
    correct_N = np.asarray(correct, bool)
    if correct_N.shape != (n,):
        raise ValueError(f"{reward}: correct has shape {correct_N.shape}, expected ({n},)")
    return correct_N


def kimi_length(batch: RewardInput, *, correct=None) -> RewardOutput:
    """Kimi k1.5: per group, lambda = 0.5 - (len - min_len) / (max_len - min_len); reward
    lambda if correct else min(0, lambda); 0 for the whole group if all lengths are equal.
    Range [-0.5, 0.5]."""
    len_N = batch.require("completion_lengths", "kimi_length").astype(np.float64)
    group_N = batch.require("group_ids", "kimi_length")
    correct_N = _correct(correct, len(batch), "kimi_length")
    values_N = np.zeros(len(batch), np.float64)
    for g in np.unique(group_N):
        idx = np.flatnonzero(group_N == g)
        lo, hi = len_N[idx].min(), len_N[idx].max()
        if hi == lo:
            continue
        lam = 0.5 - (len_N[idx] - lo) / (hi - lo)
        values_N[idx] = np.where(correct_N[idx], lam, np.minimum(0.0, lam))
    return from_values(values_N)


def dapo_overlong(batch: RewardInput, *, max_len: int, cache_len: int) -> RewardOutput:
    """DAPO soft overlong punishment: 0 up to max_len - cache_len tokens, then a linear ramp
    ((max_len - cache_len) - len) / cache_len down to -1 at max_len, -1 beyond. Range [-1, 0]."""
    if not 0 < cache_len <= max_len:
        raise ValueError(f"dapo_overlong needs 0 < cache_len <= max_len, got {cache_len}, {max_len}")
    len_N = batch.require("completion_lengths", "dapo_overlong").astype(np.float64)
    values_N = np.clip(((max_len - cache_len) - len_N) / cache_len, -1.0, 0.0)
    return from_values(values_N)


def cosine_length(batch: RewardInput, *, max_len: int, correct=None,
                  correct_short: float = 2.0, correct_long: float = 1.0,
                  wrong_short: float = -10.0, wrong_long: float = 0.0,
                  exceed: float | None = -10.0) -> RewardOutput:
    """Cosine-scaled correctness ("Demystifying Long CoT"): with progress t = min(len/max_len, 1),
    r = end + (start - end) * (1 + cos(pi t)) / 2, where (start, end) = (correct_short,
    correct_long) if correct else (wrong_short, wrong_long). Short correct answers score highest,
    long wrong ones are punished least. A truncated completion (or len >= max_len when
    `truncated` is unknown) gets `exceed` (None: no special case). Range: between the smallest
    and the largest of the five constants ([-10, 2] by default)."""
    if max_len <= 0:
        raise ValueError(f"cosine_length: max_len must be > 0, got {max_len}")
    len_N = batch.require("completion_lengths", "cosine_length").astype(np.float64)
    correct_N = _correct(correct, len(batch), "cosine_length")
    t_N = np.minimum(len_N / max_len, 1.0)
    start_N = np.where(correct_N, correct_short, wrong_short)
    end_N = np.where(correct_N, correct_long, wrong_long)
    values_N = end_N + (start_N - end_N) * 0.5 * (1.0 + np.cos(np.pi * t_N))
    if exceed is not None:
        over_N = batch.truncated if batch.truncated is not None else len_N >= max_len
        values_N = np.where(over_N, exceed, values_N)
    return from_values(values_N)


def repeated_fraction(text: str, n: int) -> float:
    """Share of word n-grams that repeat an earlier one (0 when there are fewer than n words)."""
    words = text.lower().split()
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    grams = set(zip(*(words[i:] for i in range(n))))
    return 1.0 - len(grams) / total


def repetition_penalty(batch: RewardInput, *, ngram_size: int = 3,
                       max_penalty: float = -1.0) -> RewardOutput:
    """max_penalty * (share of repeated word n-grams). Words, not tokens: RewardInput has no
    token ids, and word n-grams are what the "Demystifying Long CoT" penalty counts.
    Range [max_penalty, 0]."""
    if ngram_size < 1 or max_penalty > 0:
        raise ValueError(f"repetition_penalty needs ngram_size >= 1 and max_penalty <= 0, "
                         f"got {ngram_size}, {max_penalty}")
    values = [max_penalty * repeated_fraction(c, ngram_size) for c in batch.completions]
    return from_values(values)
