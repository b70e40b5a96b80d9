"""Evaluation metrics against hand computations and brute-force enumeration."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from rlcot.evaluation import metrics as M
from rlcot.evaluation.runner import _math_equivalent


def _brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (c of them correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


def test_pass_at_k_by_hand():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert M.pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)
    # k=1 is the plain fraction correct: 3/10
    assert M.pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)
    # n=4, c=1, k=3: 1 - C(3,3)/C(4,3) = 1 - 1/4
    assert M.pass_at_k(4, 1, 3) == pytest.approx(0.75, abs=1e-15)
    assert M.pass_at_k(4, 0, 4) == 0.0
    assert M.pass_at_k(4, 4, 1) == 1.0
    # n - c < k: every 2-subset of 5 samples with 4 correct holds a correct one
    assert M.pass_at_k(5, 4, 2) == 1.0


def test_pass_at_k_matches_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert M.pass_at_k(n, c, k) == pytest.approx(float(_brute_pass_at_k(n, c, k)),
                                                              abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_is_exact_enough():
    # C(199,100)/C(200,100) = 100/200, so pass@100 with one correct of 200 is exactly 1/2;
    # the binomials themselves (~9e58) have no exact float64 representation.
    assert M.pass_at_k(200, 1, 100) == pytest.approx(0.5, abs=1e-12)
    for n, c, k in ((1000, 7, 64), (512, 300, 200), (2000, 1, 1999)):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert M.pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        M.pass_at_k(n, c, k)


def test_mean_pass_at_k_and_avg_at_k():
    correct = np.array([[True, False, False, False], [False, False, False, False],
                        [True, True, False, True]])
    # k=1: per-prompt c/n = 1/4, 0, 3/4 -> mean 1/3
    assert M.mean_pass_at_k(correct, 1) == pytest.approx(1 / 3)
    assert M.avg_at_k(correct) == pytest.approx(1 / 3)
    # k=2: 1 - C(3,2)/C(4,2) = 1/2; 0; 1 - C(1,2)/C(4,2) = 1 -> mean 1/2
    assert M.mean_pass_at_k(correct, 2) == pytest.approx(0.5)
    # k=4: any correct -> 1, 0, 1 -> 2/3
    assert M.mean_pass_at_k(correct, 4) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="pass@5"):
        M.mean_pass_at_k(correct, 5)
    with pytest.raises(ValueError, match="boolean"):
        M.avg_at_k(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"\[B prompts, G samples\]"):
        M.avg_at_k(np.array([True, False]))


def test_greedy_pass_at_1_and_rates():
    assert M.greedy_pass_at_1(np.array([True, False, True, True])) == 0.75
    assert M.rate(np.array([1, 0, 0, 0, 1])) == pytest.approx(0.4)
    assert M.mean_length(np.array([3, 5, 10])) == pytest.approx(6.0)
    with pytest.raises(ValueError):
        M.mean_length(np.array([], np.int32))


def test_default_ks():
    assert M.default_ks(1) == (1,)
    assert M.default_ks(8) == (1, 2, 4, 8)
    assert M.default_ks(6) == (1, 2, 4, 6)
    assert M.default_ks(64)[-2:] == (32, 64)


def test_majority_vote_counts_equivalent_answers_together():
    # "5" and "5.0" are one answer (2 votes) but "3" has 3 votes: the winner is sample 2.
    assert M.majority_vote(["5", "5.0", "3", "3", "3"], _math_equivalent) == 2
    # \frac{1}{2}, 0.5 and 1/2 are the same value: 3 votes beat two 2s; sample 0 represents it.
    assert M.majority_vote(["2", "\\frac{1}{2}", "0.5", "2", "1/2"], _math_equivalent) == 1
    # thousands separators: "1,000" == "1000" (2 votes) beats "999"
    assert M.majority_vote(["999", "1,000", "1000"], _math_equivalent) == 1


def test_majority_vote_ties_and_missing_answers():
    eq = _math_equivalent
    # 2 votes each: the group whose first member comes first wins (sample 0), whatever the
    # order of the rest; a last-member rule would pick sample 1.
    assert M.majority_vote(["3", "5", "5", "3"], eq) == 0
    assert M.majority_vote(["5", "3", "3", "5"], eq) == 0
    # None does not vote: "7" (sample 1) and "4" (sample 2) tie with one vote each.
    assert M.majority_vote([None, "7", "4"], eq) == 1
    assert M.majority_vote([None, None], eq) is None
    assert M.majority_vote([], eq) is None


def test_maj_at_k_by_hand():
    answers = [["3", "5", "5"], ["2", None, "2.00"], [None, None, None], ["4", "9", "9"]]
    correct = np.array([[True, False, False], [True, False, True], [False, False, False],
                        [True, False, False]])
    # maj@3: "5" wins (wrong), "2" wins (right), no answer (wrong), "9" wins (wrong) -> 1/4
    assert M.maj_at_k(answers, correct, _math_equivalent) == pytest.approx(0.25)
    # maj@1 is the first sample's correctness where it has an answer: 1, 1, 0, 1 -> 3/4
    assert M.maj_at_k(answers, correct, _math_equivalent, k=1) == pytest.approx(0.75)
    # maj@2: ties between the first two samples go to sample 0: 1, 1 ("2" only), 0, 1 -> 3/4
    assert M.maj_at_k(answers, correct, _math_equivalent, k=2) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="answers must be"):
        M.maj_at_k(answers[:2], correct, _math_equivalent)
