"""Evaluation metrics: pass@1 (greedy and sampled), unbiased pass@k, maj@k, avg@k, rates, lengths.

Every function is pure and works on host numpy arrays. Correctness comes in as booleans
(decided by the rewards package's graders); answers for majority voting come in as the
extracted final-answer strings (None where a completion has no answer), compared with an
injected equivalence function (the math grader's normalisation + equivalence by default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Equivalent = Callable[[str, str], bool]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Product form (Chen et al. 2021): C(n-c, k)/C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i), which
    never forms the huge binomials (C(200, 100) overflows float64's exact integers)."""
    if not (isinstance(n, (int, np.integer)) and isinstance(c, (int, np.integer))
            and isinstance(k, (int, np.integer))):
        raise TypeError(f"pass_at_k takes ints, got n={n!r}, c={c!r}, k={k!r}")
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def _as_bool_BxG(correct_BxG: np.ndarray | Sequence[Sequence[bool]]) -> np.ndarray:
    correct_BxG = np.asarray(correct_BxG)
    if correct_BxG.ndim != 2 or correct_BxG.shape[0] == 0 or correct_BxG.shape[1] == 0:
        raise ValueError(f"expected correctness of shape [B prompts, G samples] with B, G >= 1, "
                         f"got shape {correct_BxG.shape}")
    if correct_BxG.dtype != np.bool_:
        if not np.isin(correct_BxG, (0, 1)).all():
            raise ValueError(f"correctness must be boolean (or 0/1), got values "
                             f"{np.unique(correct_BxG)[:10]}")
        correct_BxG = correct_BxG.astype(bool)
    return correct_BxG


def mean_pass_at_k(correct_BxG: np.ndarray, k: int) -> float:
    """pass@k averaged over prompts, each estimated from its G samples (k <= G)."""
    correct_BxG = _as_bool_BxG(correct_BxG)
    G = correct_BxG.shape[1]
    if not 1 <= k <= G:
        raise ValueError(f"pass@{k} needs 1 <= k <= G={G} samples per prompt")
    return float(np.mean([pass_at_k(G, int(c), k) for c in correct_BxG.sum(axis=1)]))


def avg_at_k(correct_BxG: np.ndarray) -> float:
    """Mean correctness over all G samples of all prompts: sampled pass@1 (= mean_pass_at_k(., 1))."""
    return float(_as_bool_BxG(correct_BxG).mean())


def greedy_pass_at_1(correct_N: np.ndarray) -> float:
    """Share of prompts whose single (greedy) completion is correct."""
    return float(_as_bool_BxG(np.asarray(correct_N)[:, None]).mean())


def default_ks(num_samples: int) -> tuple[int, ...]:
    """The k of pass@k reported for G samples: 1, 2, 4, ... below G, and G itself."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    ks = [1 << i for i in range(num_samples.bit_length()) if (1 << i) < num_samples]
    return tuple(ks + [num_samples])


def majority_vote(answers: Sequence[str | None], equivalent: Equivalent) -> int | None:
    """Index of the sample that represents the most common answer, or None if no sample has one.

    Answers are grouped greedily: each joins the first earlier group whose representative (its
    first member) it is equivalent to. The largest group wins; among equally large groups the
    one whose first member comes first wins, so the vote is deterministic and independent of
    dictionary or hash order. Samples with no answer (None) do not vote.
    """
    reps: list[int] = []
    counts: list[int] = []
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        for g, rep in enumerate(reps):
            if equivalent(answers[rep], ans):
                counts[g] += 1
                break
        else:
            reps.append(i)
            counts.append(1)
    if not reps:
        return None
    best = max(range(len(reps)), key=lambda g: (counts[g], -reps[g]))
    return reps[best]


def maj_at_k(answers_BxG: Sequence[Sequence[str | None]], correct_BxG: np.ndarray,
             equivalent: Equivalent, k: int | None = None) -> float:
    """Majority-vote accuracy over the first k samples of each prompt (k=None: all G).

    A prompt counts as solved when the sample representing the winning answer is correct;
    a prompt where no sample has an answer counts as wrong."""
    correct_BxG = _as_bool_BxG(correct_BxG)
    B, G = correct_BxG.shape
    if len(answers_BxG) != B or any(len(a) != G for a in answers_BxG):
        raise ValueError(f"answers must be [B={B}][G={G}], got "
                         f"{[len(a) for a in answers_BxG]}")
    k = G if k is None else k
    if not 1 <= k <= G:
        raise ValueError(f"maj@{k} needs 1 <= k <= G={G} samples per prompt")
    solved = []
    for answers, correct in zip(answers_BxG, correct_BxG):
        winner = majority_vote(list(answers[:k]), equivalent)
        solved.append(winner is not None and bool(correct[winner]))
    return float(np.mean(solved))


def rate(flags_N: np.ndarray) -> float:
    """Share of True values (format rate, truncation rate, answered rate)."""
    flags_N = np.asarray(flags_N)
    if flags_N.size == 0:
        raise ValueError("rate of an empty array")
    return float(flags_N.astype(bool).mean())


def mean_length(lengths_N: np.ndarray) -> float:
    """Mean completion length in tokens."""
    lengths_N = np.asarray(lengths_N)
    if lengths_N.size == 0 or (lengths_N < 0).any():
        raise ValueError(f"lengths must be a non-empty array of counts, got {lengths_N}")
    return float(lengths_N.mean())
