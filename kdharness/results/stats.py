"""Seed statistics: sample mean/std and the paired t comparison of two methods.

Two distillation methods trained with the same seeds see the same initialisation and data
order, so their per-seed accuracies are correlated; comparing the per-seed *differences*
(a paired t test) separates a real gain from seed noise with far fewer runs than comparing
two independent means. scipy is not a dependency of the harness, so the Student-t
distribution is computed here from the regularised incomplete beta function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "PairedComparison",
    "betainc",
    "mean",
    "paired_comparison",
    "sample_std",
    "t_cdf",
    "t_ppf",
    "t_two_sided_p",
]

_CF_MAX_ITER = 500
_CF_EPS = 1e-16
_TINY = 1e-300


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; raises on an empty sequence rather than returning nan."""
    if not values:
        raise ValueError("mean of an empty sequence")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof=1); None for fewer than two values (undefined, not 0)."""
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


# -- the Student-t distribution ----------------------------------------------------------
def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz; Numerical Recipes, 6.4)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"betainc needs a > 0 and b > 0; got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1; got x={x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The fraction converges fast only on one side of the mean; use the symmetry elsewhere.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _check_df(df: float) -> None:
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0; got {df}")


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for T ~ Student-t(df), computed directly (no 1 - cdf cancellation)."""
    _check_df(df)
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for T ~ Student-t(df)."""
    tail = 0.5 * t_two_sided_p(t, df)
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The quantile t with P(T <= t) = p, by bisection on the monotone CDF.

    Bisection rather than Newton: it cannot diverge in the heavy tails of small df, and a
    hundred-odd CDF evaluations cost nothing next to a training run.
    """
    _check_df(df)
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1); got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    target = 2.0 * (1.0 - p)  # the two-sided tail beyond the positive quantile
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > target:
        low, high = high, high * 2.0
        if high > 1e300:
            raise ArithmeticError(f"t quantile p={p}, df={df} is out of floating-point range")
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_two_sided_p(mid, df) > target:
            low = mid
        else:
            high = mid
        if high - low <= 1e-14 * high:
            break
    return 0.5 * (low + high)


# -- paired comparison -------------------------------------------------------------------
@dataclass(frozen=True)
class PairedComparison:
    """Method A minus method B over runs paired by seed.

    Undefined quantities (std, CI and p with fewer than two pairs) are None, never nan, so
    that tables and JSON show them as missing instead of as numbers.
    """

    n: int
    mean_diff: float
    std_diff: float | None
    ci_low: float | None
    ci_high: float | None
    t: float | None
    p_value: float | None
    confidence: float = 0.95

    @property
    def beyond_noise(self) -> bool:
        """True when the confidence interval of the mean difference excludes 0."""
        return self.ci_low is not None and self.ci_high is not None and (self.ci_low > 0 or self.ci_high < 0)

    def mdd(self, power: float = 0.8) -> float | None:
        """Minimum detectable difference: the true mean difference that this paired t test
        (two-sided, alpha = 1 - confidence) finds with probability `power`, given the observed
        std of the differences: (t_{1-alpha/2, n-1} + t_{power, n-1}) * s / sqrt(n).

        It says how large an effect "no difference beyond seed noise" can still hide.
        """
        if self.std_diff is None or self.n < 2:
            return None
        if not 0.0 < power < 1.0:
            raise ValueError(f"power must be in (0, 1); got {power}")
        df = self.n - 1
        quantiles = t_ppf(0.5 + self.confidence / 2.0, df) + t_ppf(power, df)
        return quantiles * self.std_diff / math.sqrt(self.n)

    def verdict(self, name_a: str = "A", name_b: str = "B") -> str:
        if self.n < 2:
            return f"n={self.n}: too few seeds to judge"
        if self.ci_low is not None and self.ci_low > 0:
            return f"{name_a} > {name_b} beyond seed noise"
        if self.ci_high is not None and self.ci_high < 0:
            return f"{name_a} < {name_b} beyond seed noise"
        return "no difference beyond seed noise"


def paired_comparison(a_values: Sequence[float], b_values: Sequence[float], confidence: float = 0.95) -> PairedComparison:
    """Paired t analysis of a_i - b_i: mean, sample std, CI from t_{(1+c)/2, n-1}, two-sided p.

    `a_values[i]` and `b_values[i]` must come from the same seed; pairing is the caller's
    job (see `kdharness.results.summaries`), because only it knows the seeds.
    """
    if len(a_values) != len(b_values):
        raise ValueError(f"paired comparison needs equally long sequences; got {len(a_values)} and {len(b_values)}")
    if not a_values:
        raise ValueError("paired comparison of zero pairs")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    diffs = [a - b for a, b in zip(a_values, b_values)]
    n = len(diffs)
    m = mean(diffs)
    sd = sample_std(diffs)
    if sd is None:
        return PairedComparison(n, m, None, None, None, None, None, confidence)
    df = n - 1
    if sd == 0.0:
        # Identical differences on every seed: no spread, so the difference is exact.
        t = 0.0 if m == 0 else math.copysign(math.inf, m)
        return PairedComparison(n, m, 0.0, m, m, t, 1.0 if m == 0 else 0.0, confidence)
    se = sd / math.sqrt(n)
    half_width = t_ppf(0.5 + confidence / 2.0, df) * se
    t = m / se
    return PairedComparison(n, m, sd, m - half_width, m + half_width, t, t_two_sided_p(t, df), confidence)
