"""Mean and standard error over seeds, and Welch's t-test (two-sided) with the Student t
distribution computed from the regularised incomplete beta function (no scipy needed)."""

from __future__ import annotations

import math
from typing import Sequence


def mean_sem(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std, ddof 1, over sqrt(n)); sem is nan
    for one value."""
    n = len(xs)
    if n == 0:
        raise ValueError("mean_sem of no values")
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, math.sqrt(var / n)


def _betacf(a: float, b: float, x: float, iters: int = 300, eps: float = 1e-15) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iters + 1):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0, 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df (real, > 0) degrees of freedom."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def welch_t_test(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """(t, df, two-sided p) of Welch's unequal-variance t-test; all nan when either side has
    fewer than 2 values or both have zero variance."""
    nan = (math.nan, math.nan, math.nan)
    if len(xs) < 2 or len(ys) < 2:
        return nan
    mx, sx = mean_sem(xs)
    my, sy = mean_sem(ys)
    vx, vy = sx * sx, sy * sy  # squared standard errors: var / n
    if vx + vy == 0.0:
        return nan
    t = (mx - my) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx * vx / (len(xs) - 1) + vy * vy / (len(ys) - 1))
    return t, df, t_sf_two_sided(t, df)
