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

__all__ = ["ArmStats", "PhasedSums", "Proportion", "RatioSums", "VoteCounts"]


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


Matrix = tuple[tuple[float, ...], ...]


@dataclass(frozen=True, slots=True)
class PhasedSums:
    """Per-unit sums of one arm over ``K`` phases (strata), for a phase-stratified estimate.

    A phase is a period with constant traffic weights. For unit u, ``x_uk`` successes out of
    ``y_uk`` trials in phase k. Vectors hold per-phase totals; the K x K matrices hold the
    cross-phase products ``xx[k][l] = sum_u x_uk x_ul`` (``xy[k][l] = sum_u x_uk y_ul``,
    ``yy`` likewise), which the delta method needs when one unit spans several phases
    (see :mod:`experiments.rates`). ``units`` counts units with ``y_uk > 0`` per phase and
    ``distinct_units`` units with any trial. With one phase this is exactly a
    :class:`RatioSums` (:meth:`single`, :meth:`pooled`).
    """

    units: tuple[int, ...] = ()
    sum_x: tuple[float, ...] = ()
    sum_y: tuple[float, ...] = ()
    xx: Matrix = ()
    xy: Matrix = ()
    yy: Matrix = ()
    distinct_units: int = 0

    @property
    def phases(self) -> int:
        return len(self.sum_y)

    @classmethod
    def single(cls, sums: RatioSums) -> PhasedSums:
        """One phase holding ``sums``."""
        return cls(
            units=(sums.units,),
            sum_x=(sums.sum_x,),
            sum_y=(sums.sum_y,),
            xx=((sums.sum_x2,),),
            xy=((sums.sum_xy,),),
            yy=((sums.sum_y2,),),
            distinct_units=sums.units,
        )

    @classmethod
    def empty(cls, phases: int) -> PhasedSums:
        zeros = (0.0,) * phases
        return cls(
            (0,) * phases, zeros, zeros, (zeros,) * phases, (zeros,) * phases, (zeros,) * phases, 0
        )

    @classmethod
    def in_phase(cls, sums: RatioSums, phase: int) -> PhasedSums:
        """``sums`` of units seen only in phase ``phase`` (0-based), nothing before it."""
        return cls.single(sums).padded(phase + 1, before=phase)

    def padded(self, phases: int, *, before: int = 0) -> PhasedSums:
        """The same units over ``phases`` phases: ``before`` empty phases first, the rest after."""
        after = phases - self.phases - before
        if after < 0 or before < 0:
            raise ValueError(f"cannot fit {self.phases} phases into {phases}")
        if before == after == 0:
            return self

        def vector(v: tuple[float, ...], zero: float = 0.0) -> tuple[float, ...]:
            return (zero,) * before + v + (zero,) * after

        def matrix(m: Matrix) -> Matrix:
            row = (0.0,) * phases
            return (row,) * before + tuple(vector(r) for r in m) + (row,) * after

        return PhasedSums(
            units=(0,) * before + self.units + (0,) * after,
            sum_x=vector(self.sum_x),
            sum_y=vector(self.sum_y),
            xx=matrix(self.xx),
            xy=matrix(self.xy),
            yy=matrix(self.yy),
            distinct_units=self.distinct_units,
        )

    def pooled(self) -> RatioSums:
        """The phases merged: per-unit ``x_u = sum_k x_uk`` (exact, from the cross products)."""
        return RatioSums(
            units=self.distinct_units,
            sum_x=sum(self.sum_x),
            sum_y=sum(self.sum_y),
            sum_x2=sum(map(sum, self.xx)),
            sum_y2=sum(map(sum, self.yy)),
            sum_xy=sum(map(sum, self.xy)),
        )

    def __add__(self, other: PhasedSums) -> PhasedSums:
        """Sums of two disjoint sets of units. Phases are numbered in time order, so sums
        over fewer phases are sums whose later phases are empty (padded)."""
        phases = max(self.phases, other.phases)
        a, b = self.padded(phases), other.padded(phases)

        def add(m: Matrix, n: Matrix) -> Matrix:
            return tuple(
                tuple(p + q for p, q in zip(r, s, strict=True)) for r, s in zip(m, n, strict=True)
            )

        return PhasedSums(
            units=tuple(p + q for p, q in zip(a.units, b.units, strict=True)),
            sum_x=tuple(p + q for p, q in zip(a.sum_x, b.sum_x, strict=True)),
            sum_y=tuple(p + q for p, q in zip(a.sum_y, b.sum_y, strict=True)),
            xx=add(a.xx, b.xx),
            xy=add(a.xy, b.xy),
            yy=add(a.yy, b.yy),
            distinct_units=a.distinct_units + b.distinct_units,
        )


@dataclass(frozen=True, slots=True)
class VoteCounts:
    """Pairwise (blind side-by-side) votes between the two arms.

    ``per_voter`` clusters the decisive votes by voter: for voter v, ``x_v`` challenger
    wins out of ``y_v`` decisive votes (ties and both-bad excluded). Without it every vote
    counts as its own voter.
    """

    challenger_wins: int = 0
    champion_wins: int = 0
    ties: int = 0
    both_bad: int = 0
    per_voter: RatioSums | None = None

    def voters(self) -> RatioSums:
        """``per_voter``, or one voter per decisive vote when it is not known."""
        if self.per_voter is not None:
            return self.per_voter
        n, wins = self.challenger_wins + self.champion_wins, self.challenger_wins
        return RatioSums(n, wins, n, wins, n, wins)


@dataclass(frozen=True, slots=True)
class ArmStats:
    """Everything the analysis needs about one arm, filled by SQL GROUP BY."""

    requests: int = 0  # logged requests of the arm in running phases (rejected ones excluded)
    units: int = 0  # distinct units the split assigned to the arm in running phases
    # Per phase: x = failed requests of the unit, y = requests of the unit.
    errors: PhasedSums = PhasedSums()
    # Per phase: x = thumbs-up of the unit, y = rated requests (latest rating per request).
    thumbs: PhasedSums = PhasedSums()
    # Latency of the current stage's requests (a sample, <= ~20k); a failed or timed-out
    # request is ``math.inf``: the slowest possible answer, not a missing one.
    latency_ms: tuple[float, ...] = ()
    ttft_ms: tuple[float, ...] = ()  # time to first token of streamed requests, likewise
