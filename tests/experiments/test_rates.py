import math

import numpy as np
import pytest
from scipy import stats

from experiments.rates import compare_rates, ratio_variance
from experiments.stats import PhasedSums, RatioSums
from tests.experiments.helpers import bernoulli, per_unit

NAN = float("nan")

# Per-unit data (seeded draw) used for the delta-method golden value.
Y = [5, 4, 4, 5, 3, 4, 5, 2, 1, 2, 2, 5, 5, 1, 3, 5, 1, 4, 1, 3]
Y += [5, 2, 2, 2, 4, 2, 5, 3, 3, 3, 3, 3, 3, 5, 5, 4, 4, 4, 2, 5]
X = [4, 3, 2, 5, 3, 2, 3, 0, 0, 1, 1, 4, 5, 1, 1, 4, 1, 4, 0, 3]
X += [4, 0, 1, 0, 2, 1, 4, 2, 2, 1, 2, 2, 3, 3, 4, 3, 2, 3, 0, 3]


def test_wald_matches_statsmodels() -> None:
    result = compare_rates(bernoulli(600, 1000), bernoulli(650, 1000))
    assert result.status == "ok"
    assert result.difference == pytest.approx(0.05)
    # statsmodels 0.15 test_proportions_2indep(650, 1000, 600, 1000, method="wald")
    assert result.p_value == pytest.approx(0.0207508911588846, rel=1e-9)
    # statsmodels confint_proportions_2indep(..., method="wald")
    assert result.ci == pytest.approx((0.007622152028748552, 0.09237784797125154), rel=1e-9)


def test_delta_method_is_cluster_robust_variance() -> None:
    sums = per_unit(X, Y)
    # statsmodels OLS(request outcomes, const).fit(cov_type="cluster", groups=unit,
    # use_correction=False, df_correction=False): bse 0.03820612 for the mean 0.664179
    assert math.sqrt(ratio_variance(sums)) == pytest.approx(0.03820612, rel=1e-6)
    # Independent implementation: gradient' Sigma gradient / n (Deng et al. 2018).
    x, y = np.array(X, float), np.array(Y, float)
    grad = np.array([1 / y.mean(), -x.mean() / y.mean() ** 2])
    expected = grad @ np.cov(x, y, ddof=0) @ grad / len(x)
    assert ratio_variance(sums) == pytest.approx(expected, rel=1e-12)
    # One phase of PhasedSums is the same thing.
    one = compare_rates(per_unit(X[::-1], Y), sums)
    assert one.std_error == pytest.approx(
        math.sqrt(ratio_variance(sums) + ratio_variance(per_unit(X[::-1], Y))), rel=1e-12
    )


def test_delta_reduces_to_wald_with_one_observation_per_unit() -> None:
    assert ratio_variance(bernoulli(60, 100)) == pytest.approx(0.6 * 0.4 / 100, rel=1e-12)


def test_repeated_requests_widen_the_interval() -> None:
    # 200 units each with 10 identical ratings are 200 observations, not 2000.
    clustered = per_unit([10] * 120 + [0] * 80, [10] * 200)
    flat = bernoulli(1200, 2000)
    assert math.sqrt(ratio_variance(clustered)) == pytest.approx(
        math.sqrt(10) * math.sqrt(ratio_variance(flat)), rel=1e-9
    )


def _phased(x: np.ndarray, y: np.ndarray) -> PhasedSums:
    """PhasedSums from per-unit, per-phase arrays of shape (units, phases)."""
    keep = y.sum(axis=1) > 0
    x, y = x[keep].astype(float), y[keep].astype(float)
    return PhasedSums(
        units=tuple(int(v) for v in (y > 0).sum(axis=0)),
        sum_x=tuple(x.sum(axis=0)),
        sum_y=tuple(y.sum(axis=0)),
        xx=tuple(map(tuple, x.T @ x)),
        xy=tuple(map(tuple, x.T @ y)),
        yy=tuple(map(tuple, y.T @ y)),
        distinct_units=int(keep.sum()),
    )


def test_stratified_difference_and_its_variance_across_phases() -> None:
    """Mantel-Haenszel risk difference over 3 phases, units spanning phases: against a
    direct per-unit influence-function computation (not the cross-product algebra)."""
    rng = np.random.default_rng(11)
    arms = {}
    for name, rate in (("a", 0.55), ("b", 0.6)):
        present = rng.random((300, 3)) < [0.9, 0.5, 0.3]
        y = np.where(present, rng.integers(1, 4, (300, 3)), 0)
        x = rng.binomial(y, rate + np.array([0.1, -0.1, 0.0]))
        arms[name] = (x, y)
    result = compare_rates(_phased(*arms["a"]), _phased(*arms["b"]))
    (xa, ya), (xb, yb) = arms["a"], arms["b"]
    ya_k, yb_k = ya.sum(axis=0), yb.sum(axis=0)
    ra, rb = xa.sum(axis=0) / ya_k, xb.sum(axis=0) / yb_k
    w = ya_k * yb_k / (ya_k + yb_k)
    w = w / w.sum()
    assert result.difference == pytest.approx(float(w @ (rb - ra)), rel=1e-12)
    infl_b = ((xb - rb * yb) * (w / yb_k)).sum(axis=1)
    infl_a = ((xa - ra * ya) * (w / ya_k)).sum(axis=1)
    variance = float((infl_a**2).sum() + (infl_b**2).sum())
    assert result.std_error == pytest.approx(math.sqrt(variance), rel=1e-10)
    assert [p.weight for p in result.phases] == pytest.approx(list(w))
    # Pooled rates are what the users saw.
    assert result.challenger == pytest.approx(xb.sum() / yb.sum())


def test_relative_bound_tests_challenger_against_rho_times_champion() -> None:
    result = compare_rates(
        bernoulli(20, 1000), bernoulli(30, 1000), rho=1.5, higher_is_better=False
    )
    assert result.difference == pytest.approx(0.03 - 1.5 * 0.02)
    expected = math.sqrt(0.03 * 0.97 / 1000 + 1.5**2 * 0.02 * 0.98 / 1000)
    assert result.std_error == pytest.approx(expected, rel=1e-12)


def test_bayesian_outputs_use_the_same_variance_and_the_msprt_prior() -> None:
    """Posterior of theta ~ N(0, tau2) given d ~ N(theta, V), by numerical integration."""
    champion, challenger = bernoulli(50, 100), bernoulli(60, 100)
    tau2 = 0.05**2
    result = compare_rates(champion, challenger, tau2=tau2)
    assert result.difference is not None and result.std_error is not None
    d, v = result.difference, result.std_error**2
    theta = np.linspace(-0.5, 0.5, 200_001)
    post = stats.norm.pdf(theta, 0, math.sqrt(tau2)) * stats.norm.pdf(d, theta, math.sqrt(v))
    post /= np.trapezoid(post, theta)
    positive = theta >= 0  # the grid holds 0 exactly
    assert result.prob_challenger_better == pytest.approx(
        np.trapezoid(post[positive], theta[positive]), abs=1e-7
    )
    loss = np.trapezoid(post * np.maximum(-theta, 0), theta)
    assert result.expected_loss == pytest.approx(loss, abs=1e-7)
    assert result.shrunk_difference == pytest.approx(np.trapezoid(post * theta, theta), abs=1e-7)
    assert 0 < result.shrunk_difference < d  # type: ignore[operator]
    # Lower is better (errors): the challenger with more errors is unlikely to be better.
    errors = compare_rates(champion, challenger, higher_is_better=False, tau2=tau2)
    assert errors.prob_challenger_better == pytest.approx(1 - result.prob_challenger_better)  # type: ignore[operator]


def test_sequential_p_values_keep_their_running_minimum() -> None:
    strong = compare_rates(bernoulli(500, 1000), bernoulli(600, 1000))
    assert strong.sequential is not None and strong.p_value is not None
    assert strong.p_value < strong.sequential.p_greater < 0.05  # always-valid is conservative
    later = compare_rates(
        bernoulli(500, 1000), bernoulli(500, 1000), previous=strong.sequential.state()
    )
    assert later.sequential is not None
    assert later.sequential.p_greater == strong.sequential.p_greater
    assert later.sequential.p_greater_look == 1.0


@pytest.mark.parametrize(
    ("champion", "challenger", "status", "words"),
    [
        (bernoulli(0, 0), bernoulli(5, 10), "insufficient", "champion: 0 units"),
        (bernoulli(1, 1), bernoulli(5, 10), "insufficient", "need at least 2"),
        (bernoulli(5, 10), bernoulli(12, 10), "invalid", "more successes"),
        (bernoulli(5, 10), bernoulli(-1, 10), "invalid", "negative"),
        (bernoulli(5, 10), RatioSums(10, NAN, 10, NAN, 10, NAN), "invalid", "not finite"),
    ],
)
def test_too_little_or_broken_data_is_a_result(
    champion: RatioSums, challenger: RatioSums, status: str, words: str
) -> None:
    result = compare_rates(champion, challenger)
    assert result.status == status
    assert words in result.reason
    assert result.p_value is None and result.difference is None


def test_identical_degenerate_arms_are_not_significant() -> None:
    result = compare_rates(bernoulli(0, 500), bernoulli(0, 500), higher_is_better=False)
    assert result.status == "ok"
    assert result.p_value == pytest.approx(1.0)
    assert result.difference == 0.0
    assert result.sequential is not None and result.sequential.status == "insufficient"
