import pytest

from experiments.power import power_for_rates, sample_size_for_rates


def test_sample_size_matches_statsmodels() -> None:
    # statsmodels 0.15 samplesize_proportions_2indep_onetail(0.05, 0.6, 0.8,
    # alternative="two-sided") = 1470.4854628033816
    result = sample_size_for_rates(0.6, 0.65)
    assert (result.champion, result.challenger) == (1471, 1471)
    # samplesize_proportions_2indep_onetail(-0.02, 0.05, 0.9, alpha=0.01) = 2854.3695...
    assert sample_size_for_rates(0.05, 0.03, alpha=0.01, power=0.9).champion == 2855
    # Unequal split 1:4 (challenger at 20%): samplesize_...(-0.05, 0.65, 0.8, ratio=0.25)
    # = 3697.0225370257526 champion units.
    skewed = sample_size_for_rates(0.6, 0.65, ratio=0.25)
    assert (skewed.champion, skewed.challenger) == (3698, 925)


def test_power_matches_statsmodels_and_inverts_sample_size() -> None:
    # statsmodels power_proportions_2indep(0.05, 0.6, 1000).power
    assert power_for_rates(0.6, 0.65, 1000) == pytest.approx(0.6368041597332212, rel=1e-9)
    # power_proportions_2indep(-0.05, 0.65, 1000, ratio=0.25).power
    assert power_for_rates(0.6, 0.65, 1000, ratio=0.25) == pytest.approx(0.302170500827378)
    assert power_for_rates(0.6, 0.65, 1470.4854628033816) == pytest.approx(0.8, abs=1e-4)


def test_invalid_inputs_are_results() -> None:
    assert sample_size_for_rates(0.6, 0.6).status == "invalid"
    assert sample_size_for_rates(0.0, 0.5).status == "invalid"
    assert sample_size_for_rates(0.5, 0.6, power=1.0).status == "invalid"
    assert power_for_rates(0.5, 0.6, 0) is None
