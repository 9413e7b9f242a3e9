"""Sufficient statistics that SQL aggregates fill and that add together.

Each dataclass is what one ``GROUP BY arm`` (or ``GROUP BY arm, unit`` then a sum) returns;
``a + b`` merges two batches, so the evaluator can aggregate per shard, per day or per
replica and combine. Nothing here computes a test: the test modules (``rates``,
``latency``, ``votes``, ``srm``) read these values.

The shape follows GrowthBook's gbstats sufficient statistics (``n``, ``sum``,
``sum_squares``, ``sum_xy``), https://github.com/growthbook/growthbook/tree/main/packages/stats.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ArmStats", "Proportion", "RatioSums", "VoteCounts"]


@dataclass(frozen=True, slots=True)
class Proportion:
    """Successes out of trials, one observation per trial."""

    successes: int = 0
    trials: int = 0

    def __add__(self, other: Proportion) -> Proportion:
        return Proportion(self.successes + other.successes, self.trials + other.trials)

    @property
    def rate(self) -> float | None:
        """``successes / trials``, or None when there are no trials."""
        return self.successes / self.trials if self.trials > 0 else None


@dataclass(frozen=True, slots=True)
class RatioSums:
    """Per-unit sums for the delta method: ``x_u`` = successes of unit u, ``y_u`` = its trials.

    ``units`` counts units with ``y_u > 0``; the sums run over those units. With
    ``units == sum_y`` every unit contributed exactly one trial (plain Bernoulli data).
    """

    units: int = 0
    sum_x: float = 0.0
    sum_y: float = 0.0
    sum_x2: float = 0.0
    sum_y2: float = 0.0
    sum_xy: float = 0.0

    def __add__(self, other: RatioSums) -> RatioSums:
        # Valid when the two batches hold disjoint units (e.g. two arms, two shards by unit).
        return RatioSums(
            units=self.units + other.units,
            sum_x=self.sum_x + other.sum_x,
            sum_y=self.sum_y + other.sum_y,
            sum_x2=self.sum_x2 + other.sum_x2,
            sum_y2=self.sum_y2 + other.sum_y2,
            sum_xy=self.sum_xy + other.sum_xy,
        )

    @property
    def proportion(self) -> Proportion:
        """The pooled proportion ``sum_x / sum_y`` as integer counts."""
        return Proportion(int(self.sum_x), int(self.sum_y))


@dataclass(frozen=True, slots=True)
class VoteCounts:
    """Pairwise (blind side-by-side) votes between the two arms."""

    challenger_wins: int = 0
    champion_wins: int = 0
    ties: int = 0
    both_bad: int = 0


@dataclass(frozen=True, slots=True)
class ArmStats:
    """Everything the analysis needs about one arm, filled by SQL GROUP BY."""

    requests: int = 0  # logged requests assigned to the arm (rejected ones excluded)
    units: int = 0  # distinct units assigned to the arm
    errors: RatioSums = RatioSums()  # x = failed requests of the unit, y = requests of the unit
    # x = thumbs-up of the unit, y = rated requests of the unit (latest rating per request)
    thumbs: RatioSums = RatioSums()
    latency_ms: tuple[float, ...] = ()  # latency of successful requests (a sample, <= ~20k)
    ttft_ms: tuple[float, ...] = ()  # time to first token of successful streamed requests
