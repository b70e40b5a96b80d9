"""Standard errors and Welch's t-test against values computed independently (scipy 1.17:
scipy.stats.ttest_ind(equal_var=False), scipy.stats.t.sf, scipy.special.betainc)."""

import math

import pytest

from rlcot.sweep.stats import betainc, mean_sem, t_sf_two_sided, welch_t_test


def test_mean_sem_uses_the_sample_std():
    mean, sem = mean_sem([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    # sample variance (ddof 1) = 7/3; sem = sqrt(7/3 / 3). The population std would give
    # sqrt(14/9 / 3) = 0.720 instead of 0.882.
    assert sem == pytest.approx(math.sqrt(7 / 9))
    assert math.isnan(mean_sem([5.0])[1])


@pytest.mark.parametrize("a, b, x, expected", [
    (2.5, 0.5, 0.3, 0.018927124071945658),
    (1.0, 1.0, 0.25, 0.25),  # uniform
    (0.5, 0.5, 0.5, 0.5),  # symmetric
    (30.0, 0.5, 0.95, 0.08062942690643064),
])
def test_betainc(a, b, x, expected):
    assert betainc(a, b, x) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("t, df, expected", [
    (2.0, 5.0, 0.10193947882985835),
    (-4.0, 2.5, 0.03901297584131825),
    (0.5, 1.0, 0.7048327646991335),  # Cauchy: 1 - 2 atan(0.5) / pi
    (10.0, 100.0, 9.90168898459413e-17),
])
def test_t_two_sided_tail(t, df, expected):
    assert t_sf_two_sided(t, df) == pytest.approx(expected, rel=1e-9)


def test_welch_t_test_matches_known_values():
    t, df, p = welch_t_test([1, 2, 3], [4, 5, 6, 7])
    assert (t, df, p) == pytest.approx((-4.041451884327381, 4.959183673469389,
                                        0.01007694334798886), rel=1e-10)
    t, df, p = welch_t_test([0.99, 0.98, 0.995], [0.8, 0.85])
    assert (t, df, p) == pytest.approx((6.434015210126414, 1.0626758408276489,
                                        0.08843077413779057), rel=1e-10)
    # The pooled-variance (Student) test would give p = 0.0036 here, not Welch's 0.0884.


def test_welch_is_undefined_without_spread_or_enough_seeds():
    assert all(math.isnan(v) for v in welch_t_test([1.0], [1.0, 2.0]))
    assert all(math.isnan(v) for v in welch_t_test([1.0, 1.0], [2.0, 2.0]))
