import pytest

from experiments.srm import check_srm


def test_balanced_split_is_fine() -> None:
    result = check_srm({"champion": 5020, "challenger": 4980}, {"champion": 50, "challenger": 50})
    assert result.status == "ok" and not result.mismatch
    assert result.p_value == pytest.approx(0.6891565167793516)  # scipy chisquare([5020, 4980])


def test_mismatch_against_the_weights_in_force() -> None:
    # chi2 = 2 * 200**2 / 5000 = 16, scipy.stats.chi2.sf(16, 1) = 6.334248366623996e-05
    result = check_srm({"champion": 5200, "challenger": 4800}, {"champion": 0.5, "challenger": 0.5})
    assert result.chi2 == pytest.approx(16.0)
    assert result.p_value == pytest.approx(6.334248366623996e-05)
    assert result.mismatch and "sample ratio mismatch" in result.reason
    skewed = check_srm({"champion": 9500, "challenger": 500}, {"champion": 95, "challenger": 5})
    assert not skewed.mismatch and skewed.p_value == pytest.approx(1.0)


def test_edge_cases() -> None:
    weights = {"champion": 100.0, "challenger": 0.0}
    assert check_srm({"champion": 10, "challenger": 3}, weights).mismatch
    assert not check_srm({"champion": 10, "challenger": 0}, weights).mismatch
    assert check_srm({"champion": 0, "challenger": 0}, weights).status == "insufficient"
    assert check_srm({"champion": 1}, {"champion": -1.0, "challenger": 2.0}).status == "invalid"
    assert check_srm({"champion": 5, "shadow": 5}, {"champion": 1.0}).mismatch
