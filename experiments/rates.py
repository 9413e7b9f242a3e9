"""Compare a rate (thumbs-up rate, error rate) between the arms, stratified by phase.

Entry point: :func:`compare_rates`. Each arm's rate in phase ``k`` is the ratio
``r_k = X_k / Y_k`` of its per-unit sums (:class:`experiments.stats.PhasedSums`); a phase is a
period with constant traffic weights.

**Stratified estimate.** Pooling phases whose allocation differs while the base rate drifts
(weekday/weekend) biases the difference: the arm that had more traffic in the good days looks
better (Simpson's paradox). So the difference is estimated within each phase and combined
with Mantel-Haenszel weights (Greenland & Robins, "Estimation of a common effect parameter
from sparse follow-up data", Biometrics 41, 1985):

    d = sum_k w_k (r_Bk - rho r_Ak),   w_k ∝ Y_Ak Y_Bk / (Y_Ak + Y_Bk),   sum_k w_k = 1

(B challenger, A champion; ``rho`` is 1 except for a bound relative to the champion's rate,
which tests ``r_B <= rho r_A``). The weights are each phase's information up to the
phase's variance, so ``d / Var(d)`` adds up phase by phase like one random walk: the
always-valid test on ``d`` keeps its guarantee across phases (proved by simulation in
``benchmarks/sequential.py``). With one phase, ``d`` is the plain difference of ratios.

**Variance: the delta method per unit, across phases** (Deng, Knoblich, Lu, "Applying the
Delta Method in Metric Analytics", KDD 2018, arXiv:1803.06336). Linearising ``r_k``, unit u
of arm B contributes ``sum_k a_k e_uk`` with ``e_uk = x_uk - r_k y_uk`` and
``a_k = w_k / Y_Bk``, so

    Var_B = a' M a,   M_kl = sum_u e_uk e_ul = xx_kl - r_l xy_kl - r_k xy_lk + r_k r_l yy_kl

from the cross-phase sums (``xy_kl = sum_u x_uk y_ul``); likewise arm A with ``rho w_k / Y_Ak``.
A user who comes back in several phases is one cluster, not several independent ones. With
one phase this is exactly :func:`ratio_variance` (Deng et al. eq. 2 with population moments,
which equals the unpooled Wald variance ``p (1 - p) / n`` when each unit has one trial). A
unit that moved arms between phases counts in each arm separately (the covariance between
the arms it introduces is negative for ``d``, so ignoring it is conservative).

**Tests.** Fixed horizon: ``z = (d - null) / se``, two-sided p, 95% CI ``d +/- 1.96 se``.
Always valid: :func:`experiments.sequential.msprt` on ``(d, se)`` with the given null.

**Bayesian outputs** use the same estimate and variance with the mSPRT's own prior
``theta ~ N(0, tau2)``: the posterior is ``N(m, s2)``, ``m = d tau2 / (tau2 + V)``,
``s2 = tau2 V / (tau2 + V)``. ``prob_challenger_better = Phi(m / s)`` (mirrored when lower is
better), ``expected_loss = E[max(-theta, 0)] = s phi(m/s) - m Phi(-m/s)`` (Stucchio, "Bayesian
A/B Testing at VWO", 2015, for the loss), and ``shrunk_difference = m``: the estimate pulled
towards zero by the prior, which corrects the winner's curse of reporting ``d`` at the look
where it first crossed a boundary (van Zwet & Gelman, "A proposal for informative default
priors scaled by the standard error of estimates", The American Statistician 76, 2022).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from experiments.sequential import SequentialTest, msprt
from experiments.stats import PhasedSums, RatioSums

__all__ = ["PhaseEstimate", "RateComparison", "compare_rates", "ratio_variance"]

Z_95 = float(stats.norm.ppf(0.975))


@dataclass(frozen=True, slots=True)
class PhaseEstimate:
    """One phase's rates and its weight in the stratified difference."""

    weight: float
    champion: float | None
    challenger: float | None


@dataclass(frozen=True, slots=True)
class RateComparison:
    """Challenger vs champion on one rate. Rates and bounds are fractions in [0, 1]."""

    status: str  # "ok" | "insufficient" | "invalid"
    reason: str
    champion: float | None  # pooled over phases (what the arm's users saw)
    challenger: float | None
    difference: float | None  # stratified: sum_k w_k (r_Bk - rho r_Ak)
    std_error: float | None
    ci: tuple[float, float] | None  # 95% fixed-horizon CI of the difference
    p_value: float | None  # two-sided fixed-horizon, H0: difference == null
    sequential: SequentialTest | None  # always-valid p-values and confidence sequence
    prob_challenger_better: float | None
    expected_loss: float | None
    shrunk_difference: float | None  # posterior mean under the mSPRT prior
    phases: tuple[PhaseEstimate, ...] = ()
    rated_units: tuple[int, int] = (0, 0)  # (champion, challenger) units with data
    higher_is_better: bool = True


def ratio_variance(sums: RatioSums) -> float:
    """Delta-method variance of ``sum_x / sum_y`` (Deng et al. 2018, eq. 2), population moments."""
    n = sums.units
    mx, my = sums.sum_x / n, sums.sum_y / n
    var_x = sums.sum_x2 / n - mx * mx
    var_y = sums.sum_y2 / n - my * my
    cov = sums.sum_xy / n - mx * my
    var = (var_x / my**2 - 2.0 * mx * cov / my**3 + mx * mx * var_y / my**4) / n
    return max(var, 0.0)  # rounding can push an exactly-zero variance below zero


def _as_phased(sums: PhasedSums | RatioSums) -> PhasedSums:
    return PhasedSums.single(sums) if isinstance(sums, RatioSums) else sums


def _problem(sums: PhasedSums, arm: str) -> str | None:
    values = [*sums.sum_x, *sums.sum_y, *(v for row in sums.xx + sums.xy + sums.yy for v in row)]
    if not all(math.isfinite(v) for v in values):
        return f"{arm}: sums are not finite"
    if sums.distinct_units < 0 or min(values, default=0.0) < 0 or min(sums.units, default=0) < 0:
        return f"{arm}: negative counts"
    for k, (x, y) in enumerate(zip(sums.sum_x, sums.sum_y, strict=True)):
        if x > y:
            return f"{arm}: more successes ({x:g}) than trials ({y:g}) in phase {k}"
    if sums.distinct_units > sum(sums.sum_y):
        return f"{arm}: more units ({sums.distinct_units}) than trials ({sum(sums.sum_y):g})"
    return None


def _arm_variance(sums: PhasedSums, coef: NDArray[np.float64], rates: NDArray[np.float64]) -> float:
    """``a' M a`` for one arm (module docstring), population moments."""
    xx, xy, yy = (np.asarray(m, dtype=np.float64) for m in (sums.xx, sums.xy, sums.yy))
    m = xx - xy * rates[np.newaxis, :] - xy.T * rates[:, np.newaxis] + np.outer(rates, rates) * yy
    return max(float(coef @ m @ coef), 0.0)


def _posterior(
    d: float, v: float, tau2: float, higher_is_better: bool
) -> tuple[float, float, float]:
    """(P(challenger better), expected loss, posterior mean) under theta ~ N(0, tau2)."""
    mean = d * tau2 / (tau2 + v)
    sd = math.sqrt(tau2 * v / (tau2 + v))
    sign = 1.0 if higher_is_better else -1.0
    z = sign * mean / sd
    prob = float(stats.norm.cdf(z))
    loss = sd * float(stats.norm.pdf(z)) - sign * mean * float(stats.norm.cdf(-z))
    return prob, max(loss, 0.0), mean


def _empty(status: str, reason: str, higher_is_better: bool) -> RateComparison:
    return RateComparison(
        status=status,
        reason=reason,
        champion=None,
        challenger=None,
        difference=None,
        std_error=None,
        ci=None,
        p_value=None,
        sequential=None,
        prob_challenger_better=None,
        expected_loss=None,
        shrunk_difference=None,
        higher_is_better=higher_is_better,
    )


def compare_rates(
    champion: PhasedSums | RatioSums,
    challenger: PhasedSums | RatioSums,
    *,
    higher_is_better: bool = True,
    rho: float = 1.0,
    null: float = 0.0,
    tau2: float = 0.05**2,
    alpha: float = 0.05,
    min_units: int = 2,
    previous: Mapping[str, float] | None = None,
) -> RateComparison:
    """Stratified difference challenger - ``rho`` x champion, with tests (see module docs).

    ``higher_is_better`` orients the Bayesian outputs only (False for error rates).
    ``null``/``tau2``/``alpha``/``previous`` go to the mSPRT; ``alpha`` also sets the CS level.
    Fewer than ``min_units`` units (at least 2) with data in an arm, or no phase where
    both arms have data, gives ``status="insufficient"``.
    """
    a, b = _as_phased(champion), _as_phased(challenger)
    if a.phases != b.phases:
        return _empty(
            "invalid", f"{a.phases} champion phases, {b.phases} challenger phases", higher_is_better
        )
    for sums, arm in ((a, "champion"), (b, "challenger")):
        if problem := _problem(sums, arm):
            return _empty("invalid", problem, higher_is_better)
    need = max(min_units, 2)
    for sums, arm in ((a, "champion"), (b, "challenger")):
        if sums.distinct_units < need:
            reason = f"{arm}: {sums.distinct_units} units with data, need at least {need}"
            return _empty("insufficient", reason, higher_is_better)
    y_a, y_b = np.asarray(a.sum_y, dtype=np.float64), np.asarray(b.sum_y, dtype=np.float64)
    both = (y_a > 0) & (y_b > 0)
    if not both.any():
        return _empty("insufficient", "no phase has data from both arms", higher_is_better)
    with np.errstate(divide="ignore", invalid="ignore"):
        r_a = np.where(y_a > 0, np.asarray(a.sum_x) / y_a, 0.0)
        r_b = np.where(y_b > 0, np.asarray(b.sum_x) / y_b, 0.0)
        raw = np.where(both, y_a * y_b / (y_a + y_b), 0.0)
    w = raw / raw.sum()
    d = float(w @ (r_b - rho * r_a))
    coef_b = np.where(both, w / np.where(both, y_b, 1.0), 0.0)
    coef_a = np.where(both, rho * w / np.where(both, y_a, 1.0), 0.0)
    var = _arm_variance(a, coef_a, r_a) + _arm_variance(b, coef_b, r_b)
    se = math.sqrt(var)
    # No variance: certainly the null when d equals it, certainly not otherwise.
    p_value = float(2.0 * stats.norm.sf(abs(d - null) / se)) if se > 0 else float(d == null)
    seq = msprt(d, se, tau2=tau2, alpha=alpha, null=null, previous=previous)
    prob = loss = shrunk = None
    if var > 0:
        prob, loss, shrunk = _posterior(d, var, tau2, higher_is_better)
    phases = tuple(
        PhaseEstimate(
            weight=float(w[k]),
            champion=float(r_a[k]) if y_a[k] > 0 else None,
            challenger=float(r_b[k]) if y_b[k] > 0 else None,
        )
        for k in range(a.phases)
    )
    return RateComparison(
        status="ok",
        reason="",
        champion=sum(a.sum_x) / float(y_a.sum()),
        challenger=sum(b.sum_x) / float(y_b.sum()),
        difference=d,
        std_error=se,
        ci=(d - Z_95 * se, d + Z_95 * se),
        p_value=p_value,
        sequential=seq,
        prob_challenger_better=prob,
        expected_loss=loss,
        shrunk_difference=shrunk,
        phases=phases,
        rated_units=(a.distinct_units, b.distinct_units),
        higher_is_better=higher_is_better,
    )
