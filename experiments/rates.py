"""Compare two rates (thumbs-up rate, error rate) given per-unit sums.

Entry point: :func:`compare_rates`. The estimate is the ratio ``sum_x / sum_y`` per arm and
the difference is challenger - champion.

Variance of each arm's ratio (delta method for ratio metrics, Deng, Knoblich, Lu,
"Applying the Delta Method in Metric Analytics: A Practical Guide with Novel Ideas",
KDD 2018, arXiv:1803.06336, eq. (2)): with ``n`` units and per-unit ``(x_u, y_u)``,

    Var(sum_x / sum_y) ~= (1/n) * ( s_x2 / my**2 - 2 * mx * s_xy / my**3 + mx**2 * s_y2 / my**4 )

where ``mx, my`` are the per-unit means and ``s_*`` the per-unit (co)variances. We use the
population moments (divide by ``n``) so that when every unit contributes exactly one
observation (``y_u == 1``) this is *exactly* the unpooled Wald variance ``p (1 - p) / n``;
``method`` is then reported as ``"wald"``, otherwise ``"delta"``. Repeated requests from one
user are thereby not counted as independent.

Fixed-horizon test: ``z = difference / sqrt(V_champion + V_challenger)``, two-sided
``p = 2 * (1 - Phi(|z|))``, ``CI = difference +/- z_{0.975} * se``.

Small counts: when any expected cell of the 2x2 table (successes/failures x arm) under the
pooled rate is below 5 (Cochran's rule for the normal approximation, W. G. Cochran, "Some
methods for strengthening the common chi-square tests", Biometrics 10, 1954), the p-value is
Fisher's exact test on the pooled counts (``scipy.stats.fisher_exact``) and the CI is
Newcombe's hybrid score interval (Newcombe, "Interval estimation for the difference between
independent proportions", Statistics in Medicine 17, 1998, method 10); ``method`` is
``"fisher"``. Both treat requests as independent: there is no exact test for clustered data.

Bayesian: independent ``Beta(1 + successes, 1 + failures)`` posteriors per arm (uniform
``Beta(1, 1)`` prior, pooled counts). ``prob_challenger_better = P(challenger better)`` and
``expected_loss = E[max(champion - challenger, 0)]`` (the rate one gives up, in expectation,
by choosing the challenger; mirrored when lower is better), computed by Simpson quadrature
over the champion's posterior of closed-form inner expectations (deterministic, no sampling):
``P(Y < x) = I_x(a, b)`` and ``E[(x - Y)+] = x I_x(a, b) - a / (a + b) * I_x(a + 1, b)``.
See C. Stucchio, "Bayesian A/B Testing at VWO" (2015) for the loss function.

The always-valid sequential p-value comes from :func:`experiments.sequential.msprt` on the
same difference and standard error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import integrate, special, stats

from experiments.sequential import SequentialTest, msprt
from experiments.stats import RatioSums

__all__ = ["RateComparison", "compare_rates", "ratio_variance"]

#: Cochran's rule: the normal approximation needs every expected cell count >= 5.
SMALL_EXPECTED_COUNT = 5.0


@dataclass(frozen=True, slots=True)
class RateComparison:
    """Challenger vs champion on one rate. Rates and bounds are fractions in [0, 1]."""

    status: str  # "ok" | "insufficient" | "invalid"
    reason: str
    champion: float | None
    challenger: float | None
    difference: float | None  # challenger - champion
    ci: tuple[float, float] | None  # 95% fixed-horizon CI of the difference
    p_value: float | None  # two-sided fixed-horizon
    p_value_sequential: float | None  # two-sided always-valid (running minimum)
    method: str  # "wald" | "delta" | "fisher" | "none"
    std_error: float | None
    prob_challenger_better: float | None
    expected_loss: float | None
    sequential: SequentialTest | None  # one-sided p-values and the confidence sequence
    higher_is_better: bool = True


def _problem(sums: RatioSums, arm: str) -> str | None:
    values = (sums.sum_x, sums.sum_y, sums.sum_x2, sums.sum_y2, sums.sum_xy)
    if not all(math.isfinite(v) for v in values):
        return f"{arm}: sums are not finite"
    if sums.units < 0 or min(values) < 0:
        return f"{arm}: negative counts"
    if sums.sum_x > sums.sum_y:
        return f"{arm}: more successes ({sums.sum_x:g}) than trials ({sums.sum_y:g})"
    if sums.units > sums.sum_y:
        return f"{arm}: more units ({sums.units}) than trials ({sums.sum_y:g})"
    return None


def ratio_variance(sums: RatioSums) -> float:
    """Delta-method variance of ``sum_x / sum_y`` (Deng et al. 2018, eq. 2), population moments."""
    n = sums.units
    mx, my = sums.sum_x / n, sums.sum_y / n
    var_x = sums.sum_x2 / n - mx * mx
    var_y = sums.sum_y2 / n - my * my
    cov = sums.sum_xy / n - mx * my
    var = (var_x / my**2 - 2.0 * mx * cov / my**3 + mx * mx * var_y / my**4) / n
    return max(var, 0.0)  # rounding can push an exactly-zero variance below zero


def _wilson(successes: float, n: float, z: float) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _newcombe(champion: RatioSums, challenger: RatioSums, z: float) -> tuple[float, float]:
    p1, p2 = challenger.sum_x / challenger.sum_y, champion.sum_x / champion.sum_y
    l1, u1 = _wilson(challenger.sum_x, challenger.sum_y, z)
    l2, u2 = _wilson(champion.sum_x, champion.sum_y, z)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def _is_small(champion: RatioSums, challenger: RatioSums) -> bool:
    pooled = (champion.sum_x + challenger.sum_x) / (champion.sum_y + challenger.sum_y)
    cells = [n * q for n in (champion.sum_y, challenger.sum_y) for q in (pooled, 1 - pooled)]
    return min(cells) < SMALL_EXPECTED_COUNT


def _beta_compare(a_x: float, b_x: float, a_y: float, b_y: float) -> tuple[float, float]:
    """``P(X > Y)`` and ``E[max(Y - X, 0)]`` for ``X ~ Beta(a_x, b_x)``, ``Y ~ Beta(a_y, b_y)``."""
    lo, hi = stats.beta.ppf([1e-12, 1 - 1e-12], a_x, b_x)
    grid = np.linspace(lo, hi, 1001)
    density = stats.beta.pdf(grid, a_x, b_x)
    cdf_y = special.betainc(a_y, b_y, grid)
    mean_y = a_y / (a_y + b_y)
    prob = float(integrate.simpson(density * cdf_y, x=grid))
    # E[(X - Y)+] integrated over X, then E[(Y - X)+] = E[Y] - E[X] + E[(X - Y)+].
    shortfall = grid * cdf_y - mean_y * special.betainc(a_y + 1.0, b_y, grid)
    x_minus_y = float(integrate.simpson(density * shortfall, x=grid))
    loss = mean_y - a_x / (a_x + b_x) + x_minus_y
    return min(max(prob, 0.0), 1.0), max(loss, 0.0)


def _empty(status: str, reason: str, higher_is_better: bool) -> RateComparison:
    return RateComparison(
        status=status,
        reason=reason,
        champion=None,
        challenger=None,
        difference=None,
        ci=None,
        p_value=None,
        p_value_sequential=None,
        method="none",
        std_error=None,
        prob_challenger_better=None,
        expected_loss=None,
        sequential=None,
        higher_is_better=higher_is_better,
    )


def compare_rates(
    champion: RatioSums,
    challenger: RatioSums,
    *,
    higher_is_better: bool = True,
    tau2: float = 0.05**2,
    alpha: float = 0.05,
    min_units: int = 2,
    previous: Mapping[str, float] | None = None,
) -> RateComparison:
    """Difference challenger - champion of ``sum_x / sum_y``, with tests (see module docs).

    ``higher_is_better`` orients the Bayesian outputs only (False for error rates).
    ``tau2``/``alpha``/``previous`` go to the mSPRT; ``alpha`` also sets the CS level.
    Fewer than ``min_units`` units (at least 2) in an arm gives ``status="insufficient"``.
    """
    for sums, arm in ((champion, "champion"), (challenger, "challenger")):
        problem = _problem(sums, arm)
        if problem:
            return _empty("invalid", problem, higher_is_better)
    for sums, arm in ((champion, "champion"), (challenger, "challenger")):
        if sums.units < max(min_units, 2) or sums.sum_y <= 0:
            reason = f"{arm}: {sums.units} units with data, need at least {max(min_units, 2)}"
            return _empty("insufficient", reason, higher_is_better)

    rate_a = champion.sum_x / champion.sum_y
    rate_b = challenger.sum_x / challenger.sum_y
    diff = rate_b - rate_a
    wald = champion.units == champion.sum_y and challenger.units == challenger.sum_y
    se = math.sqrt(ratio_variance(champion) + ratio_variance(challenger))
    z_crit = float(stats.norm.ppf(0.975))
    if _is_small(champion, challenger):
        method = "fisher"
        table = [
            [challenger.sum_x, challenger.sum_y - challenger.sum_x],
            [champion.sum_x, champion.sum_y - champion.sum_x],
        ]
        p_value = float(stats.fisher_exact(np.rint(table).astype(np.int64)).pvalue)
        ci = _newcombe(champion, challenger, z_crit)
    else:
        method = "wald" if wald else "delta"
        p_value = float(2.0 * stats.norm.sf(abs(diff) / se)) if se > 0 else float(diff == 0)
        ci = (diff - z_crit * se, diff + z_crit * se)

    seq = msprt(diff, se, tau2=tau2, alpha=alpha, previous=previous)

    post_a = (1.0 + champion.sum_x, 1.0 + champion.sum_y - champion.sum_x)
    post_b = (1.0 + challenger.sum_x, 1.0 + challenger.sum_y - challenger.sum_x)
    if higher_is_better:
        prob, loss = _beta_compare(*post_b, *post_a)
    else:
        # Challenger better means a lower rate: P(A > B) and the loss E[max(B - A, 0)].
        prob, loss = _beta_compare(*post_a, *post_b)
    return RateComparison(
        status="ok",
        reason="",
        champion=rate_a,
        challenger=rate_b,
        difference=diff,
        ci=ci,
        p_value=p_value,
        p_value_sequential=seq.p_value if seq.status == "ok" or previous else None,
        method=method,
        std_error=se,
        prob_challenger_better=prob,
        expected_loss=loss,
        sequential=seq,
        higher_is_better=higher_is_better,
    )
