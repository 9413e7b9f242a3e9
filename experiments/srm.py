"""Sample ratio mismatch (SRM): are units split between the arms as the weights say?

Entry point: :func:`check_srm`. Pearson's chi-square goodness of fit of the observed units
per arm against ``total * weight / sum(weights)`` (``scipy.stats.chisquare``, one degree of
freedom for two arms). A mismatch (``p < threshold``, default 0.001 as in Fabijan et al.,
"Diagnosing Sample Ratio Mismatch in Online Controlled Experiments", KDD 2019) means the
assignment or the logging is broken and no metric can be trusted: the policy halts.

The counts must come from the period in which ``weights`` were in force (units seen during
the current stage), otherwise a stage change alone would look like a mismatch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy import stats

__all__ = ["SRM_THRESHOLD", "SrmResult", "check_srm"]

SRM_THRESHOLD = 0.001


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Chi-square goodness of fit of units per arm against the weights in force."""

    status: str  # "ok" | "insufficient" | "invalid"
    reason: str
    observed: dict[str, int]
    expected: dict[str, float] | None
    chi2: float | None
    p_value: float | None
    mismatch: bool


def check_srm(
    units: Mapping[str, int],
    weights: Mapping[str, float],
    *,
    threshold: float = SRM_THRESHOLD,
    min_units: int = 1,
) -> SrmResult:
    """Chi-square test of ``units`` (arm -> count) against ``weights`` (arm -> any scale)."""
    observed = {arm: int(units.get(arm, 0)) for arm in weights}
    extra = sorted(arm for arm, n in units.items() if arm not in weights and n)
    bad_weights = any(not math.isfinite(w) or w < 0 for w in weights.values())
    if bad_weights or sum(weights.values()) <= 0 or any(n < 0 for n in observed.values()):
        reason = "weights must be finite, non-negative and not all zero; counts non-negative"
        return SrmResult("invalid", reason, observed, None, None, None, False)
    total = sum(observed.values()) + sum(int(units[arm]) for arm in extra)
    if extra:
        reason = f"units assigned to arms without weight: {', '.join(extra)}"
        return SrmResult("ok", reason, observed, None, None, 0.0, True)
    if total < max(min_units, 1):
        reason = f"{total} units assigned, need at least {max(min_units, 1)}"
        return SrmResult("insufficient", reason, observed, None, None, None, False)
    weight_sum = sum(weights.values())
    expected = {arm: total * w / weight_sum for arm, w in weights.items()}
    if any(expected[arm] == 0 and observed[arm] > 0 for arm in weights):
        zero = [arm for arm in weights if expected[arm] == 0 and observed[arm] > 0]
        reason = f"units assigned to arms with weight 0: {', '.join(zero)}"
        return SrmResult("ok", reason, observed, expected, math.inf, 0.0, True)
    arms = [arm for arm in weights if expected[arm] > 0]
    if len(arms) < 2:
        return SrmResult("ok", "", observed, expected, 0.0, 1.0, False)
    result = stats.chisquare([observed[a] for a in arms], [expected[a] for a in arms])
    p = float(result.pvalue)
    mismatch = p < threshold
    reason = (
        f"sample ratio mismatch: observed {observed}, expected "
        f"{ {a: round(e, 1) for a, e in expected.items()} } (chi-square p = {p:.2g})"
        if mismatch
        else ""
    )
    return SrmResult("ok", reason, observed, expected, float(result.statistic), p, mismatch)
