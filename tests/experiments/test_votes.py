import math

import numpy as np
import pytest
from scipy import stats

from experiments.sequential import msprt
from experiments.stats import RatioSums, VoteCounts
from experiments.votes import compare_votes, fit_bradley_terry, vote_test


def test_win_rate_and_exact_binomial_test() -> None:
    result = compare_votes(VoteCounts(challenger_wins=60, champion_wins=40, ties=10, both_bad=5))
    assert result.status == "ok" and result.decisive == 100
    assert result.win_rate == 0.6
    # scipy 1.17 binomtest(60, 100, 0.5).pvalue
    assert result.p_value == pytest.approx(0.056887933640980895, rel=1e-9)
    assert result.p_value == pytest.approx(stats.binomtest(60, 100).pvalue)
    assert result.win_rate_ci is not None and result.win_rate_ci[0] < 0.6 < result.win_rate_ci[1]


def test_two_player_ratings_count_ties_and_both_bad_as_half_wins() -> None:
    result = compare_votes(VoteCounts(challenger_wins=60, champion_wins=40, ties=10, both_bad=10))
    ratings = result.bradley_terry
    assert ratings is not None
    # 70 vs 50 wins: gap = 400 log10(70 / 50), centred on 1000.
    gap = 400 * np.log10(70 / 50)
    assert ratings["challenger"] == pytest.approx(1000 + gap / 2)
    assert ratings["champion"] == pytest.approx(1000 - gap / 2)
    generic = fit_bradley_terry(np.array([[0.0, 50.0], [70.0, 0.0]]))
    assert generic == pytest.approx([ratings["champion"], ratings["challenger"]], rel=1e-9)
    ci = result.bradley_terry_ci
    assert ci is not None
    assert ci["challenger"][0] < ratings["challenger"] < ci["challenger"][1]
    # 120 half-win-weighted votes: rating standard error ~16 points, so a width of ~60.
    assert 30 < ci["challenger"][1] - ci["challenger"][0] < 120
    assert compare_votes(VoteCounts(60, 40, 10, 10)).bradley_terry_ci == ci  # fixed seed


def test_fit_matches_logistic_regression_golden_values() -> None:
    wins = np.array([[0, 30, 20], [10, 0, 25], [5, 15, 0]], dtype=float)
    # statsmodels 0.15 GLM(Binomial) on +1/-1 player columns without intercept (the Chatbot
    # Arena formulation), rescaled by 400 / ln 10 and centred on 1000.
    expected = [1147.2120793361871, 966.623492103826, 886.1644285599868]
    assert fit_bradley_terry(wins) == pytest.approx(expected, abs=1e-6)


def test_bradley_terry_recovers_known_strengths() -> None:
    rng = np.random.default_rng(3)
    truth = np.array([1100.0, 1040.0, 980.0, 880.0])
    wins = np.zeros((4, 4))
    for i in range(4):
        for j in range(i + 1, 4):
            p = 1 / (1 + 10 ** ((truth[j] - truth[i]) / 400))
            k = rng.binomial(3000, p)
            wins[i, j], wins[j, i] = k, 3000 - k
    fitted = fit_bradley_terry(wins)
    assert fitted.mean() == pytest.approx(1000)
    assert fitted == pytest.approx(truth - truth.mean() + 1000, abs=12)


def test_one_sided_votes_stay_finite_and_few_votes_are_insufficient() -> None:
    sweep = compare_votes(VoteCounts(challenger_wins=12))
    assert sweep.bradley_terry is not None
    assert np.isfinite(list(sweep.bradley_terry.values())).all()
    assert sweep.bradley_terry["challenger"] > sweep.bradley_terry["champion"]
    none = compare_votes(VoteCounts(ties=4, both_bad=2))
    assert none.status == "insufficient" and "0 decisive" in none.reason
    assert compare_votes(VoteCounts(champion_wins=-1)).status == "invalid"


def test_sequential_p_value_on_the_win_rate() -> None:
    result = compare_votes(VoteCounts(challenger_wins=300, champion_wins=200))
    assert result.sequential is not None
    assert result.sequential.p_greater < 0.05 < result.sequential.p_less


def test_vote_test_clusters_by_voter_with_a_null_centred_variance() -> None:
    """Voter v: x_v challenger wins of y_v decisive votes. The standard error is
    sqrt(sum_v (x_v - q y_v)^2) / sum_v y_v (a score test's cluster-robust variance),
    computed here voter by voter."""
    x = np.array([5, 0, 3, 2, 8, 1, 4, 4, 0, 6], dtype=float)
    y = np.array([6, 2, 4, 4, 9, 3, 5, 4, 1, 6], dtype=float)
    sums = RatioSums(10, x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())
    votes = VoteCounts(
        challenger_wins=int(x.sum()), champion_wins=int((y - x).sum()), per_voter=sums
    )
    q = 0.45
    test = vote_test(votes, null_rate=q)
    assert test is not None
    se = math.sqrt(((x - q * y) ** 2).sum()) / y.sum()
    reference = msprt(x.sum() / y.sum() - 0.5, se, tau2=0.05**2, null=q - 0.5)
    assert test.p_greater == pytest.approx(reference.p_greater, rel=1e-12)
    assert test.p_less == pytest.approx(reference.p_less, rel=1e-12)
    # Unclustered (each vote its own voter): the binomial variance under the null.
    flat = vote_test(VoteCounts(60, 40), null_rate=0.5)
    assert flat is not None and flat.ci is not None
    direct = msprt(0.1, math.sqrt(0.25 / 100), tau2=0.05**2)
    assert flat.p_greater == pytest.approx(direct.p_greater, rel=1e-12)
