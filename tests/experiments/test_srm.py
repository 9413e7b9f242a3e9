import math

import numpy as np
import pytest
from scipy import special, stats

from experiments.srm import CONCENTRATION, check_srm, log_bayes_factor

EVEN = {"champion": 50, "challenger": 50}


def _predictive_product(sequence: list[int], shares: list[float], k: float) -> float:
    """log BF by Lindon & Malek's sequential form: the product over units of the Dirichlet
    posterior predictive of the arm it landed in, over its null probability."""
    counts = np.zeros(len(shares))
    prior = k * np.asarray(shares)
    log_bf = 0.0
    for arm in sequence:
        predictive = (prior[arm] + counts[arm]) / (prior.sum() + counts.sum())
        log_bf += math.log(predictive / shares[arm])
        counts[arm] += 1
    return log_bf


def test_bayes_factor_matches_the_sequential_product_and_the_beta_binomial() -> None:
    rng = np.random.default_rng(4)
    sequence = list((rng.random(400) < 0.08).astype(int))  # arm 1 with 8%, expected 5%
    shares = [0.95, 0.05]
    n1 = sum(sequence)
    n0 = len(sequence) - n1
    expected = _predictive_product(sequence, shares, 100.0)
    assert float(log_bayes_factor([n0, n1], shares, concentration=100.0)) == pytest.approx(
        expected, rel=1e-10
    )
    a0, a1 = 100.0 * 0.95, 100.0 * 0.05
    beta_binomial = special.betaln(a0 + n0, a1 + n1) - special.betaln(a0, a1)
    beta_binomial -= n0 * math.log(0.95) + n1 * math.log(0.05)
    assert float(log_bayes_factor([n0, n1], shares, concentration=100.0)) == pytest.approx(
        beta_binomial, rel=1e-10
    )


def test_balanced_split_is_fine() -> None:
    result = check_srm({"champion": 5020, "challenger": 4980}, EVEN)
    assert result.status == "ok" and not result.mismatch
    assert result.chi2_p == pytest.approx(0.6891565167793516)  # scipy chisquare([5020, 4980])
    assert result.p_value == 1.0


def test_mismatch_against_the_weights_in_force() -> None:
    result = check_srm({"champion": 5300, "challenger": 4700}, {"champion": 0.5, "challenger": 0.5})
    assert result.chi2_p == pytest.approx(stats.chi2.sf(36.0, 1))  # chi2 = 2 * 300**2 / 5000
    log_bf = float(log_bayes_factor([5300, 4700], [0.5, 0.5], concentration=CONCENTRATION))
    assert result.p_value == pytest.approx(math.exp(-log_bf))
    assert result.p_value is not None and result.p_value < 0.001
    assert result.mismatch and "sample ratio mismatch" in result.reason
    skewed = check_srm({"champion": 9500, "challenger": 500}, {"champion": 95, "challenger": 5})
    assert not skewed.mismatch and skewed.p_value == pytest.approx(1.0)


def test_the_first_unit_in_a_small_arm_is_not_a_mismatch() -> None:
    weights = {"champion": 95, "challenger": 5}
    result = check_srm({"champion": 0, "challenger": 1}, weights)
    assert result.chi2_p == pytest.approx(stats.chisquare([0, 1], [0.95, 0.05]).pvalue)
    assert result.chi2_p < 1e-4  # what the old fixed-horizon check halted on
    assert not result.mismatch and result.p_value == pytest.approx(1.0)


def test_the_running_minimum_is_kept_within_a_window() -> None:
    bad = check_srm({"champion": 5300, "challenger": 4700}, EVEN)
    assert bad.p_value is not None
    later = check_srm({"champion": 10_000, "challenger": 10_000}, EVEN, previous=bad.state())
    assert later.p_look == 1.0 and later.p_value == bad.p_value and later.mismatch


def test_false_alarms_under_continuous_monitoring_stay_below_alpha() -> None:
    """Looked at after every unit, 2,000 A/A runs of 1,500 units at 5%: P(ever < 0.05)."""
    rng = np.random.default_rng(7)
    to_challenger = rng.random((2000, 1500)) < 0.05
    challenger = np.cumsum(to_challenger, axis=1)
    champion = np.arange(1, 1501) - challenger
    log_bf = log_bayes_factor(np.stack([champion, challenger], axis=-1), [0.95, 0.05])
    alarms = (log_bf >= math.log(1 / 0.05)).any(axis=1).mean()
    assert alarms <= 0.05
    # The chi-square looked at as often alarms far more often (not valid when peeking).
    expected = np.stack([0.95 * np.arange(1, 1501), 0.05 * np.arange(1, 1501)], axis=-1)
    chi2 = ((np.stack([champion, challenger], axis=-1) - expected) ** 2 / expected).sum(axis=-1)
    assert (stats.chi2.sf(chi2, 1) < 0.05).any(axis=1).mean() > 0.3


def test_edge_cases() -> None:
    weights = {"champion": 100.0, "challenger": 0.0}
    assert check_srm({"champion": 10, "challenger": 3}, weights).mismatch
    assert not check_srm({"champion": 10, "challenger": 0}, weights).mismatch
    assert check_srm({"champion": 0, "challenger": 0}, weights).status == "insufficient"
    assert check_srm({"champion": 1}, {"champion": -1.0, "challenger": 2.0}).status == "invalid"
    assert check_srm({"champion": 5, "shadow": 5}, {"champion": 1.0}).mismatch
