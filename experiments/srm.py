"""Sample ratio mismatch (SRM): are units split between the arms as the weights say?

Entry point: :func:`check_srm`. A mismatch means the assignment or the logging is broken and
no metric can be trusted: the policy halts (stops challenger traffic and alerts).

The evaluator looks every 30 s. A chi-square test re-run at every look from the first unit
cries wolf: one unit landing in a 5% arm gives p = 1.3e-5, and an A/A experiment halts in
8-9% of runs within a week at the usual threshold 0.001. So the test here is **anytime
valid**: the sequential multinomial test of Lindon & Malek, "Anytime-Valid Inference for
Multinomial Count Data", NeurIPS 2022 (arXiv:2011.03567), as used for SRM at Optimizely.
With counts ``n_i`` of ``n`` units over arms with expected shares ``theta_i`` and a
Dirichlet prior ``alpha_i = k theta_i`` centred on them, the Bayes factor against the null

    BF_n = Gamma(sum alpha) / Gamma(sum alpha + n) * prod_i Gamma(alpha_i + n_i) / Gamma(alpha_i)
           / prod_i theta_i ** n_i

is a non-negative martingale under the null (units arrive one by one, each in arm i with
probability ``theta_i``), so by Ville's inequality ``P(sup_n BF_n >= 1/alpha) <= alpha``: the
p-value ``min_n 1/BF_n`` may be looked at after every unit. ``k`` (:data:`CONCENTRATION`)
sets which mismatches it finds fastest: ``benchmarks/sequential.py`` measures the false alarm
rate and the time to detect a 10% loss of challenger units.

The counts must be distinct units the split assigned while the weights were in force (the
caller's *SRM window*: the current stage's running phases since the last halt); a new
window starts the test afresh (pass no ``previous``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

__all__ = ["CONCENTRATION", "SRM_ALPHA", "SrmResult", "check_srm", "log_bayes_factor"]

#: Default false-alarm rate of the anytime-valid SRM test (Fabijan et al., KDD 2019, use
#: 0.0005-0.001 for the fixed-horizon chi-square).
SRM_ALPHA = 0.001
#: Dirichlet prior concentration ``k``: the prior is ``Dirichlet(k * theta)``.
CONCENTRATION = 100.0


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Anytime-valid test of units per arm against the weights in force."""

    status: str  # "ok" | "insufficient" | "invalid"
    reason: str
    observed: dict[str, int]
    expected: dict[str, float] | None
    p_value: float | None  # anytime-valid: running minimum of 1/BF over the window's looks
    p_look: float | None  # this look's 1/BF
    chi2_p: float | None  # fixed-horizon chi-square at this look, for reference only
    mismatch: bool

    def state(self) -> dict[str, float]:
        """The running minimum to pass back as ``previous`` at the next look of the window."""
        return {"p": 1.0 if self.p_value is None else self.p_value}


def log_bayes_factor(
    counts: ArrayLike, shares: ArrayLike, *, concentration: float = CONCENTRATION
) -> NDArray[np.float64]:
    """``log BF_n`` of Lindon & Malek (module docstring); vectorised over leading axes.

    ``counts`` has the arms on its last axis; ``shares`` are the expected shares (sum 1,
    all positive).
    """
    n_i = np.asarray(counts, dtype=np.float64)
    theta = np.asarray(shares, dtype=np.float64)
    prior = concentration * theta
    n = n_i.sum(axis=-1)
    return (
        special.gammaln(prior.sum())
        - special.gammaln(prior.sum() + n)
        + (special.gammaln(prior + n_i) - special.gammaln(prior)).sum(axis=-1)
        - (n_i * np.log(theta)).sum(axis=-1)
    )


def check_srm(
    units: Mapping[str, int],
    weights: Mapping[str, float],
    *,
    alpha: float = SRM_ALPHA,
    previous: Mapping[str, float] | None = None,
    concentration: float = CONCENTRATION,
) -> SrmResult:
    """Anytime-valid test of ``units`` (arm -> count) against ``weights`` (arm -> any scale)."""
    observed = {arm: int(units.get(arm, 0)) for arm in weights}
    extra = sorted(arm for arm, n in units.items() if arm not in weights and n)
    bad_weights = any(not math.isfinite(w) or w < 0 for w in weights.values())
    if bad_weights or sum(weights.values()) <= 0 or any(n < 0 for n in observed.values()):
        reason = "weights must be finite, non-negative and not all zero; counts non-negative"
        return SrmResult("invalid", reason, observed, None, None, None, None, False)
    if extra:
        reason = f"units assigned to arms without weight: {', '.join(extra)}"
        return SrmResult("ok", reason, observed, None, 0.0, 0.0, 0.0, True)
    total = sum(observed.values())
    weight_sum = sum(weights.values())
    expected = {arm: total * w / weight_sum for arm, w in weights.items()}
    zero = [arm for arm in weights if weights[arm] == 0 and observed[arm] > 0]
    if zero:
        reason = f"units assigned to arms with weight 0: {', '.join(zero)}"
        return SrmResult("ok", reason, observed, expected, 0.0, 0.0, 0.0, True)
    arms = [arm for arm in weights if weights[arm] > 0]
    previous_p = float((previous or {}).get("p", 1.0))
    if total == 0 or len(arms) < 2:
        reason = "no units assigned yet" if total == 0 else ""
        status = "insufficient" if total == 0 else "ok"
        return SrmResult(status, reason, observed, expected, previous_p, 1.0, None, False)
    counts = [observed[a] for a in arms]
    shares = [weights[a] / weight_sum for a in arms]
    log_bf = float(log_bayes_factor(counts, shares, concentration=concentration))
    p_look = 1.0 if log_bf <= 0 else math.exp(-log_bf)
    p = min(previous_p, p_look)
    chi2_p = float(stats.chisquare(counts, [expected[a] for a in arms]).pvalue)
    mismatch = p < alpha
    reason = (
        f"sample ratio mismatch: observed {observed}, expected "
        f"{ {a: round(e, 1) for a, e in expected.items()} } (anytime-valid p = {p:.2g})"
        if mismatch
        else ""
    )
    return SrmResult("ok", reason, observed, expected, p, p_look, chi2_p, mismatch)
