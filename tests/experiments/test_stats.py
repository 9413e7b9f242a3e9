import dataclasses

import pytest

from experiments.stats import ArmStats, PhasedSums, Proportion, RatioSums, VoteCounts


def test_proportion_adds_and_rates() -> None:
    total = Proportion(3, 10) + Proportion(2, 5)
    assert total == Proportion(5, 15)
    assert total.rate == pytest.approx(1 / 3)
    assert Proportion().rate is None


def test_ratio_sums_add_fieldwise_and_give_a_proportion() -> None:
    a = RatioSums(2, 3.0, 5.0, 5.0, 13.0, 8.0)
    b = RatioSums(1, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert a + b == RatioSums(3, 4.0, 6.0, 6.0, 14.0, 9.0)
    assert (a + b).proportion == Proportion(4, 6)
    assert RatioSums() + a == a


def test_phased_sums_pad_add_and_pool() -> None:
    a = PhasedSums.in_phase(RatioSums(2, 3.0, 5.0, 5.0, 13.0, 8.0), 0)
    b = PhasedSums.in_phase(RatioSums(1, 1.0, 1.0, 1.0, 1.0, 1.0), 2)
    both = a + b
    assert both.phases == 3 and both.units == (2, 0, 1) and both.distinct_units == 3
    assert both.xx == ((5.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    assert both.pooled() == RatioSums(3, 4.0, 6.0, 6.0, 14.0, 9.0)
    assert PhasedSums() + a == a
    with pytest.raises(ValueError, match="cannot fit"):
        both.padded(2)


def test_dataclasses_are_frozen_with_empty_defaults() -> None:
    stats = ArmStats()
    assert stats.errors == PhasedSums() and stats.latency_ms == ()
    assert VoteCounts() == VoteCounts(0, 0, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.requests = 3  # type: ignore[misc]
    assert hash(stats) == hash(ArmStats())
