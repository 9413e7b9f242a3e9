import math

import numpy as np
import pytest
from scipy import special, stats

from experiments.rates import compare_rates, ratio_variance
from experiments.stats import RatioSums
from tests.experiments.helpers import bernoulli, per_unit

NAN = float("nan")

# Per-unit data (seeded draw) used for the delta-method golden value.
Y = [5, 4, 4, 5, 3, 4, 5, 2, 1, 2, 2, 5, 5, 1, 3, 5, 1, 4, 1, 3]
Y += [5, 2, 2, 2, 4, 2, 5, 3, 3, 3, 3, 3, 3, 5, 5, 4, 4, 4, 2, 5]
X = [4, 3, 2, 5, 3, 2, 3, 0, 0, 1, 1, 4, 5, 1, 1, 4, 1, 4, 0, 3]
X += [4, 0, 1, 0, 2, 1, 4, 2, 2, 1, 2, 2, 3, 3, 4, 3, 2, 3, 0, 3]


def test_wald_matches_statsmodels() -> None:
    result = compare_rates(bernoulli(600, 1000), bernoulli(650, 1000))
    assert result.status == "ok" and result.method == "wald"
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


def test_delta_reduces_to_wald_with_one_observation_per_unit() -> None:
    assert ratio_variance(bernoulli(60, 100)) == pytest.approx(0.6 * 0.4 / 100, rel=1e-12)
    clustered = compare_rates(per_unit(X, Y), per_unit(X[::-1], Y))
    assert clustered.method == "delta"


def test_repeated_requests_widen_the_interval() -> None:
    # 200 units each with 10 identical ratings are 200 observations, not 2000.
    clustered = per_unit([10] * 120 + [0] * 80, [10] * 200)
    flat = bernoulli(1200, 2000)
    assert math.sqrt(ratio_variance(clustered)) == pytest.approx(
        math.sqrt(10) * math.sqrt(ratio_variance(flat)), rel=1e-9
    )


def test_fisher_and_newcombe_for_small_counts() -> None:
    result = compare_rates(bernoulli(2, 18), bernoulli(7, 20))
    assert result.method == "fisher"
    assert result.p_value == pytest.approx(stats.fisher_exact([[7, 13], [2, 16]]).pvalue)
    # statsmodels confint_proportions_2indep(7, 20, 2, 18, method="newcomb")
    assert result.ci == pytest.approx((-0.035949193563674764, 0.4703341906273747), rel=1e-6)


def _prob_b_beats_a(a1: int, b1: int, a2: int, b2: int) -> float:
    """Exact P(p_B > p_A) for integer parameters (Evan Miller, 'Formulas for Bayesian A/B
    testing', 2015): A ~ Beta(a1, b1), B ~ Beta(a2, b2)."""
    i = np.arange(a2)
    terms = np.exp(
        special.betaln(a1 + i, b1 + b2)
        - np.log(b2 + i)
        - special.betaln(1 + i, b2)
        - special.betaln(a1, b1)
    )
    return float(terms.sum())


def test_bayesian_probability_and_loss() -> None:
    champion, challenger = bernoulli(50, 100), bernoulli(60, 100)
    result = compare_rates(champion, challenger)
    exact = _prob_b_beats_a(51, 51, 61, 41)
    assert result.prob_challenger_better == pytest.approx(exact, abs=1e-6)
    rng = np.random.default_rng(0)
    a, b = rng.beta(51, 51, 2_000_000), rng.beta(61, 41, 2_000_000)
    assert result.expected_loss == pytest.approx(
        np.maximum(a - b, 0).mean(), abs=2e-4
    )  # Monte Carlo sd ~5e-5
    # Lower is better (errors): the challenger with more errors is unlikely to be better.
    errors = compare_rates(champion, challenger, higher_is_better=False)
    assert errors.prob_challenger_better == pytest.approx(1 - exact, abs=1e-6)
    assert errors.expected_loss == pytest.approx(
        np.maximum(b - a, 0).mean(), abs=2e-4
    )  # Monte Carlo sd ~5e-5


def test_sequential_p_value_is_reported_and_keeps_its_running_minimum() -> None:
    strong = compare_rates(bernoulli(500, 1000), bernoulli(600, 1000))
    assert strong.p_value_sequential is not None and strong.p_value is not None
    assert strong.p_value < strong.p_value_sequential < 0.05  # always-valid is conservative
    assert strong.sequential is not None
    later = compare_rates(
        bernoulli(500, 1000), bernoulli(500, 1000), previous=strong.sequential.state()
    )
    assert later.p_value_sequential == strong.p_value_sequential


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
    assert result.status == "ok" and result.method == "fisher"
    assert result.p_value == pytest.approx(1.0)
    assert result.difference == 0.0
