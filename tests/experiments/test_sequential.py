import math

import numpy as np
import pytest
from scipy import integrate, stats

from experiments.sequential import msprt


def _mixture(d: float, v: float, tau2: float, lo: float, hi: float, weight: float) -> float:
    """Mixture likelihood ratio by numerical integration over theta (independent check)."""

    def integrand(theta: float) -> float:
        prior = weight * stats.norm.pdf(theta, scale=math.sqrt(tau2))
        return prior * math.exp((2 * theta * d - theta**2) / (2 * v))

    return integrate.quad(integrand, lo, hi, epsabs=0, epsrel=1e-10, limit=200)[0]


@pytest.mark.parametrize(("d", "se"), [(0.03, 0.012), (-0.02, 0.01), (0.001, 0.02)])
def test_closed_form_matches_numerical_mixture(d: float, se: float) -> None:
    tau2, v = 0.05**2, se * se
    result = msprt(d, se, tau2=tau2)
    two_sided = _mixture(d, v, tau2, -1, 1, 1.0)
    greater = _mixture(d, v, tau2, 0, 1, 2.0)
    less = _mixture(d, v, tau2, -1, 0, 2.0)
    assert result.p_value == pytest.approx(min(1.0, 1 / two_sided), rel=1e-7)
    assert result.p_greater == pytest.approx(min(1.0, 1 / greater), rel=1e-7)
    assert result.p_less == pytest.approx(min(1.0, 1 / less), rel=1e-7)


def test_confidence_sequence_inverts_the_test() -> None:
    result = msprt(0.04, 0.015, tau2=0.05**2, alpha=0.05)
    assert result.ci is not None
    lo, hi = result.ci
    for edge in (lo, hi):  # at the boundary the test is exactly at level alpha
        assert msprt(0.04, 0.015, tau2=0.05**2, null=edge).p_value == pytest.approx(0.05)
    inside = lo < 0.0 < hi
    assert inside == (msprt(0.04, 0.015, tau2=0.05**2, null=0.0).p_value > 0.05)


def test_running_minimum_and_insufficient() -> None:
    first = msprt(0.1, 0.02, tau2=0.0025)
    second = msprt(0.0, 0.02, tau2=0.0025, previous=first.state())
    assert second.p_value == first.p_value and second.p_greater == first.p_greater
    empty = msprt(0.0, 0.0, tau2=0.0025, previous=first.state())
    assert empty.status == "insufficient" and empty.ci is None
    assert empty.p_value == first.p_value


def test_always_valid_under_peeking() -> None:
    """300 A/A experiments, 30 looks each: the mSPRT keeps its level, a peeked z-test does not."""
    rng = np.random.default_rng(12345)
    experiments, looks, batch, rate = 300, 30, 40, 0.6
    a = rng.binomial(batch, rate, size=(experiments, looks)).cumsum(axis=1)
    b = rng.binomial(batch, rate, size=(experiments, looks)).cumsum(axis=1)
    msprt_hits = naive_hits = 0
    for e in range(experiments):
        previous, hit, naive = None, False, False
        for k in range(looks):
            n = batch * (k + 1)
            pa, pb = a[e, k] / n, b[e, k] / n
            se = math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n)
            result = msprt(pb - pa, se, tau2=0.05**2, previous=previous)
            previous = result.state()
            hit = hit or result.p_value < 0.05
            naive = naive or 2 * stats.norm.sf(abs(pb - pa) / se) < 0.05
        msprt_hits += hit
        naive_hits += naive
    assert msprt_hits / experiments < 0.07
    assert naive_hits / experiments > 0.1
