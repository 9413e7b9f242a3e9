import numpy as np
import pytest
from scipy import stats

from experiments.stats import VoteCounts
from experiments.votes import compare_votes, fit_bradley_terry


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
