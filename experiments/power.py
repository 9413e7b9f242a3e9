"""Sample size and power for detecting a change of a rate ``p0 -> p1`` (two-sided z-test).

With ``k = n1 / n0`` (challenger units per champion unit), ``pbar = (p0 + k p1) / (1 + k)``
and ``Delta = |p1 - p0|``, the champion arm needs (Fleiss, Levin, Paik, "Statistical
Methods for Rates and Proportions", 3rd ed., 2003, eq. 4.14; Chow, Shao, Wang, "Sample Size
Calculations in Clinical Research", section 4.2)

    n0 = (z_{1-alpha/2} s_null + z_{power} s_alt)**2 / Delta**2

(null variance pooled, alternative variance unpooled), and the power at ``n0``, with
``z = z_{1-alpha/2}``, is

    Phi((Delta sqrt(n0) - z s_null) / s_alt) + Phi((-Delta sqrt(n0) - z s_null) / s_alt)

where ``s_null = sqrt(pbar qbar (1 + 1/k))`` and ``s_alt = sqrt(p0 q0 + p1 q1 / k)``. Both
agree with statsmodels' ``power_proportions_2indep``/``samplesize_proportions_2indep_onetail``.

These are fixed-horizon numbers; the always-valid test the policy uses needs more units
(roughly 1.3-1.6x for 80% power, depending on the mixing variance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

__all__ = ["SampleSize", "power_for_rates", "sample_size_for_rates"]


@dataclass(frozen=True, slots=True)
class SampleSize:
    """Units needed per arm (rounded up)."""

    status: str  # "ok" | "invalid"
    reason: str
    champion: int | None
    challenger: int | None


def _sds(p0: float, p1: float, ratio: float) -> tuple[float, float]:
    pbar = (p0 + ratio * p1) / (1 + ratio)
    s_null = math.sqrt(pbar * (1 - pbar) * (1 + 1 / ratio))
    s_alt = math.sqrt(p0 * (1 - p0) + p1 * (1 - p1) / ratio)
    return s_null, s_alt


def _check(p0: float, p1: float, alpha: float, ratio: float) -> str | None:
    if not (0 < p0 < 1 and 0 < p1 < 1):
        return "rates must lie strictly between 0 and 1"
    if p0 == p1:
        return "p0 and p1 are equal: no change to detect"
    if not 0 < alpha < 1:
        return "alpha must lie in (0, 1)"
    if not ratio > 0:
        return "ratio must be positive"
    return None


def sample_size_for_rates(
    p0: float, p1: float, *, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> SampleSize:
    """Units per arm to detect ``p0 -> p1`` with a two-sided level-``alpha`` z-test."""
    problem = _check(p0, p1, alpha, ratio) or (
        None if 0 < power < 1 else "power must lie in (0, 1)"
    )
    if problem:
        return SampleSize("invalid", problem, None, None)
    s_null, s_alt = _sds(p0, p1, ratio)
    z_a = float(stats.norm.ppf(1 - alpha / 2))
    z_b = float(stats.norm.ppf(power))
    n0 = (z_a * s_null + z_b * s_alt) ** 2 / (p1 - p0) ** 2
    return SampleSize("ok", "", math.ceil(n0), math.ceil(n0 * ratio))


def power_for_rates(
    p0: float, p1: float, n: float, *, alpha: float = 0.05, ratio: float = 1.0
) -> float | None:
    """Power of the two-sided z-test with ``n`` champion units (``ratio * n`` challenger)."""
    if _check(p0, p1, alpha, ratio) or not n > 0:
        return None
    s_null, s_alt = _sds(p0, p1, ratio)
    z_a = float(stats.norm.ppf(1 - alpha / 2))
    shift = abs(p1 - p0) * math.sqrt(n)
    upper = stats.norm.cdf((shift - z_a * s_null) / s_alt)
    lower = stats.norm.cdf((-shift - z_a * s_null) / s_alt)
    return float(upper + lower)
