import math

import numpy as np
import pytest
from scipy import stats

from experiments.power import (
    design_effect,
    msprt_z_boundary,
    power_for_rates,
    sample_size_for_rates,
    sequential_power,
    sequential_sample_size,
)
from experiments.sequential import msprt

# -- fixed horizon ---------------------------------------------------------------------------


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
    assert sequential_sample_size(0.6, 0.6).status == "invalid"
    assert sequential_sample_size(0.6, 0.65, tau2=0.0).status == "invalid"
    assert sequential_sample_size(0.6, 0.65, power=0.0).status == "invalid"
    assert sequential_sample_size(0.6, 0.65, look_every=0).status == "invalid"
    assert sequential_power(0.6, 0.65, 0).status == "invalid"
    assert sequential_power(0.6, 0.65, 1000, design_effect=-1.0).power is None


# -- the always-valid test -------------------------------------------------------------------


@pytest.mark.parametrize("se", [0.05, 0.015, 0.004])
def test_boundary_is_where_msprt_rejects(se: float) -> None:
    tau2 = 0.05**2
    z = msprt_z_boundary(se, tau2=tau2)
    assert msprt(z * se, se, tau2=tau2).p_greater_look == pytest.approx(0.05, rel=1e-6)
    assert msprt(1.01 * z * se, se, tau2=tau2).p_greater_look < 0.05
    two = msprt_z_boundary(se, tau2=tau2, one_sided=False)
    assert msprt(two * se, se, tau2=tau2).p_value == pytest.approx(0.05, rel=1e-6)
    # The price of looking at will: stricter than the fixed-horizon one-sided z-test.
    assert z > stats.norm.ppf(0.95) and two > z


@pytest.mark.parametrize(
    ("p0", "p1", "tau"),
    [(0.6, 0.65, 0.05), (0.5, 0.45, 0.05), (0.1, 0.13, 0.02), (0.3, 0.4, 0.15)],
)
def test_sequential_costs_more_than_fixed_horizon(p0: float, p1: float, tau: float) -> None:
    # With the mixing sd near the effect, the always-valid test needs 1.3-2x the units of
    # the fixed-horizon two-sided test at the same alpha.
    sequential = sequential_sample_size(p0, p1, tau2=tau**2)
    fixed = sample_size_for_rates(p0, p1)
    assert sequential.champion is not None and fixed.champion is not None
    assert 1.3 <= sequential.champion / fixed.champion <= 2.0
    # It inverts sequential_power; checking only at the end loses power.
    at_n = sequential_power(p0, p1, sequential.champion, tau2=tau**2)
    assert at_n.power is not None and at_n.at_end_only is not None
    assert at_n.power == pytest.approx(0.8, abs=2e-3)
    assert at_n.at_end_only < at_n.power - 0.05


def test_mixing_variance_far_from_the_effect_costs_units() -> None:
    best = sequential_sample_size(0.6, 0.65, tau2=0.05**2).champion
    small = sequential_sample_size(0.6, 0.65, tau2=0.01**2).champion
    large = sequential_sample_size(0.6, 0.65, tau2=0.2**2).champion
    assert best is not None and small is not None and large is not None
    assert best < large < small < 2.5 * best  # logarithmic in tau2


def test_fewer_looks_less_power() -> None:
    continuous = sequential_power(0.6, 0.65, 2000).power
    looks = [sequential_power(0.6, 0.65, 2000, look_every=k).power or 0.0 for k in (5, 40, 400)]
    end = sequential_power(0.6, 0.65, 2000).at_end_only
    assert continuous is not None and end is not None
    assert continuous > looks[0] > looks[1] > looks[2] > end
    # Beyond MAX_LOOKS looks, Siegmund's correction of the continuous boundary agrees with
    # the look-by-look integration.
    exact = sequential_power(0.6, 0.65, 2000, look_every=10).power  # 200 looks
    corrected = sequential_power(0.6, 0.65, 1998, look_every=9).power  # 222 looks
    assert exact is not None and corrected is not None
    assert corrected == pytest.approx(exact, abs=2e-3)


def test_two_sided_and_direction() -> None:
    one = sequential_sample_size(0.6, 0.65).champion
    two = sequential_sample_size(0.6, 0.65, one_sided=False).champion
    down = sequential_sample_size(0.65, 0.6).champion  # "worse": the mirror image
    assert one is not None and two is not None and one < two
    assert down == pytest.approx(one, rel=0.01)


def test_design_effect_scales_n_linearly() -> None:
    assert design_effect(1, 0.3) == 1.0
    assert design_effect(5, 0.1) == pytest.approx(1.4)
    with pytest.raises(ValueError):
        design_effect(3, 1.5)
    base = sequential_sample_size(0.6, 0.65).champion
    assert base is not None
    for deff in (1.4, 2.0, 3.5):
        n = sequential_sample_size(0.6, 0.65, design_effect=deff).champion
        assert n is not None and abs(n - deff * base) <= deff + 1
    skewed = sequential_sample_size(0.6, 0.65, ratio=0.25, design_effect=2.0)
    assert skewed.challenger == math.ceil(0.25 * (skewed.champion or 0))


def test_power_matches_monte_carlo_of_the_msprt() -> None:
    """Bernoulli arms at the returned n, msprt at every look with its running minimum."""
    p0, p1, k, reps, alpha, tau2 = 0.6, 0.65, 200, 1000, 0.05, 0.05**2
    n = sequential_sample_size(p0, p1, look_every=k).champion
    assert n is not None and n % k == 0
    predicted = sequential_power(p0, p1, n, look_every=k).power
    assert predicted is not None and predicted >= 0.8
    rng = np.random.default_rng(20260101)
    m = k * np.arange(1, n // k + 1)
    r0 = rng.binomial(k, p0, size=(reps, m.size)).cumsum(axis=1) / m
    r1 = rng.binomial(k, p1, size=(reps, m.size)).cumsum(axis=1) / m
    d, se = r1 - r0, np.sqrt((r0 * (1 - r0) + r1 * (1 - r1)) / m)
    crossed = 0
    for row_d, row_se in zip(d, se, strict=True):
        state = None
        # 1/Lambda_greater >= 1/(2 exp(z**2 / 2)) > alpha while z < 2: skip those looks.
        for j in np.flatnonzero(row_d / row_se >= 2.0):
            test = msprt(float(row_d[j]), float(row_se[j]), tau2=tau2, alpha=alpha, previous=state)
            state = test.state()
            if test.p_greater < alpha:
                crossed += 1
                break
    sd = math.sqrt(predicted * (1 - predicted) / reps)
    assert crossed / reps == pytest.approx(predicted, abs=3 * sd)
