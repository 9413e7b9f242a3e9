"""Always-valid sequential test: the mixture sequential probability ratio test (mSPRT).

The estimate ``d`` of a difference ``theta`` (e.g. challenger rate - champion rate) is
asymptotically normal, ``d ~ N(theta, V)`` with ``V = se**2``. Mixing the likelihood ratio
``L(theta)/L(theta0)`` over a normal prior ``theta - theta0 ~ N(0, tau2)`` gives the closed form

    Lambda = sqrt(V / (V + tau2)) * exp( (d - theta0)**2 * tau2 / (2 * V * (V + tau2)) )

(Johari, Koomen, Pekelis, Walsh, "Always Valid Inference: Continuous Monitoring of A/B
Tests", Operations Research 70(3), 2022, eq. (11); arXiv:1512.04922). Under the null it is a
non-negative martingale, so by Ville's inequality ``P(sup_n Lambda_n >= 1/alpha) <= alpha``:
the always-valid p-value ``p_n = min(p_{n-1}, 1/Lambda_n)`` may be looked at after every batch.

**The running minimum is the caller's job**: pass the previous look's p-values as
``previous`` (a JSON-able mapping, see :meth:`SequentialTest.state`) and store the returned
state for the next look. Without it, each look's p-value is still valid on its own
(``1/Lambda_n`` can only be smaller than the running minimum if it is itself small).

The policy decides in two ways (see :mod:`experiments.policy`): harm (rollback) on the running
minimum, and benefit (advance, promote) on **this look's** ``1/Lambda_n`` alone
(``p_greater_look``). Both are valid: ``{1/Lambda_n < alpha}`` at some look is the same event
as the running minimum crossing ``alpha``, so it has probability at most ``alpha`` under the
null. Deciding "better" on the current look means the evidence must still be there when
each later stage is looked at, with that stage's data in it.

One-sided versions mix over a half-normal prior on one side of ``theta0``:

    Lambda_greater = 2 * Lambda * Phi( (d - theta0) * tau / sqrt(V * (V + tau2)) )

which is valid for the composite null ``theta <= theta0`` (and symmetrically ``Lambda_less``).
The decision policy uses the one-sided p-values, each with its own running minimum, so
evidence in one direction can never be reused for a decision in the other.

The confidence sequence at level ``1 - alpha`` inverts the two-sided test:

    d +/- sqrt( V * (V + tau2) / tau2 * (log((V + tau2) / V) - 2 * log(alpha)) )

Choice of the mixing variance: ``tau2`` is in the squared units of the difference and should
be the size of effect one expects to see (Johari et al., section 4.3). The policy defaults
to ``tau = 0.05`` for rate differences (a 5-point change in thumbs-up rate, which makes the
boundary tightest around 2,000-3,000 units per arm for rates near 60%) and ``tau = 0.02`` for
error rates. The result depends on ``tau2`` only logarithmically away from the optimum.

With ``V`` estimated from the data (plug-in standard error) the guarantee is asymptotic, as
in the asymptotic confidence sequences of Waudby-Smith et al. 2023 (arXiv:2103.06476) that
GrowthBook uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy import stats

__all__ = ["SequentialTest", "msprt"]


@dataclass(frozen=True, slots=True)
class SequentialTest:
    """One look of the mSPRT; p-values already include the running minimum over ``previous``."""

    status: str  # "ok" | "insufficient"
    reason: str
    p_value: float  # two-sided, H0: theta == theta0
    p_greater: float  # one-sided, H0: theta <= theta0 (small: evidence that theta > theta0)
    p_less: float  # one-sided, H0: theta >= theta0 (small: evidence that theta < theta0)
    ci: tuple[float, float] | None  # (1 - alpha) confidence sequence for theta at this look
    tau2: float
    null: float
    p_greater_look: float = 1.0  # this look's 1/Lambda_greater, no running minimum
    p_less_look: float = 1.0  # this look's 1/Lambda_less, no running minimum

    def state(self) -> dict[str, float]:
        """Running minima to pass back as ``previous`` at the next look (JSON-able)."""
        return {"two_sided": self.p_value, "greater": self.p_greater, "less": self.p_less}


def _log_lambda(z2: float, r: float) -> float:
    """``log Lambda`` with ``z2 = (d - theta0)**2 / V`` and ``r = tau2 / V``."""
    return -0.5 * math.log1p(r) + 0.5 * z2 * r / (1.0 + r)


def _p_from_log_lambda(log_lambda: float) -> float:
    return 1.0 if log_lambda <= 0.0 else math.exp(-log_lambda)


def msprt(
    difference: float,
    std_error: float,
    *,
    tau2: float,
    alpha: float = 0.05,
    null: float = 0.0,
    previous: Mapping[str, float] | None = None,
) -> SequentialTest:
    """Always-valid p-values and confidence sequence for ``theta`` from ``d`` and its ``se``.

    ``difference`` is the current estimate ``d``, ``std_error`` its standard error, ``null``
    the hypothesised ``theta0``. ``previous`` holds the previous look's :meth:`state`.
    """
    prev = previous or {}
    prev_two = float(prev.get("two_sided", 1.0))
    prev_greater = float(prev.get("greater", 1.0))
    prev_less = float(prev.get("less", 1.0))
    finite = all(math.isfinite(v) for v in (difference, std_error, tau2))
    if not finite or tau2 <= 0.0 or std_error <= 0.0:
        reason = (
            "mixing variance tau2 must be positive"
            if finite and tau2 <= 0.0
            else "no variance yet: the standard error is zero or undefined"
        )
        return SequentialTest(
            status="insufficient",
            reason=reason,
            p_value=prev_two,
            p_greater=prev_greater,
            p_less=prev_less,
            ci=None,
            tau2=tau2,
            null=null,
        )
    v = std_error * std_error
    r = tau2 / v
    shift = difference - null
    log_lam = _log_lambda(shift * shift / v, r)
    # Half-normal mixtures: Lambda_+- = 2 * Lambda * Phi(+-shift * tau / sqrt(V (V + tau2))).
    signed = shift * math.sqrt(tau2) / math.sqrt(v * (v + tau2))
    log_greater = math.log(2.0) + log_lam + float(stats.norm.logcdf(signed))
    log_less = math.log(2.0) + log_lam + float(stats.norm.logcdf(-signed))
    half_width = math.sqrt(v * (v + tau2) / tau2 * (math.log1p(r) - 2.0 * math.log(alpha)))
    p_greater_look = _p_from_log_lambda(log_greater)
    p_less_look = _p_from_log_lambda(log_less)
    return SequentialTest(
        status="ok",
        reason="",
        p_value=min(prev_two, _p_from_log_lambda(log_lam)),
        p_greater=min(prev_greater, p_greater_look),
        p_less=min(prev_less, p_less_look),
        ci=(difference - half_width, difference + half_width),
        tau2=tau2,
        null=null,
        p_greater_look=p_greater_look,
        p_less_look=p_less_look,
    )
