"""Synthetic canaries: users with known true rates, run look after look through the real policy.

The model (what ``canary simulate`` sends over HTTP, and these runners draw at once):

* :class:`ArmTruth` — what an arm really is: the probability that a user gives a successful
  answer a thumbs up, the share of requests that fail, and a log-normal latency.
* :class:`Users` — how synthetic users behave: each unit (user) sends ``1 + Poisson(m - 1)``
  requests (mean ``m``) and rates each successful answer with probability ``rated_share``.
  :meth:`Users.thumb` is one user's reaction to one answer (what ``canary simulate`` sends
  over HTTP); :func:`draw_arm` draws the same model for a whole batch of units at once, as
  the per-arm sufficient statistics the evaluator's SQL would return (vectorised numpy).

Running an experiment: :func:`run_experiment` feeds batches of new units to the real
:func:`experiments.analysis.analyse` and :func:`experiments.policy.decide`, one look per
batch, carrying the always-valid p-values' running minimum (``Analysis.sequential_state``)
from look to look exactly as the evaluator does, until the policy promotes, rolls back or
halts, or a horizon is reached. With ``stage_index=None`` it walks the policy's stages: each
batch is split between the arms by the current stage's weight (a binomial draw, like the
hash assignment), ``advance`` moves to the next stage: a new phase, so the per-stage unit
counts, the SRM window and the latency samples restart and the rates are stratified.
With a fixed ``stage_index`` it stays at that stage and any decision other than
``continue`` ends the run.

For many experiments at once, :func:`thumbs_paths` draws cumulative thumbs-up counts for
every experiment and look in one call (one request per unit, every answer rated), and
:func:`replay_batches` feeds one row of them to :func:`run_experiment`;
:func:`naive_z` / :func:`naive_z_decisions` apply the naive fixed-horizon z-test at every look —
the comparison that shows why peeking at a fixed-horizon test is not allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from experiments.analysis import Look, analyse
from experiments.policy import Decision, Policy
from experiments.stats import ArmStats, PhasedSums, RatioSums, VoteCounts

__all__ = [
    "FINAL",
    "ArmTruth",
    "Batch",
    "Outcome",
    "Users",
    "bernoulli_arm",
    "combine",
    "draw_arm",
    "in_phase",
    "naive_z",
    "naive_z_decisions",
    "random_batches",
    "replay_batches",
    "run_experiment",
    "thumbs_paths",
]

#: New units' statistics for (champion, challenger), given the challenger's share (0..1).
Batch = Callable[[float], tuple[ArmStats, ArmStats]]

#: Decisions that end an experiment.
FINAL = ("promote", "rollback", "halt", "inconclusive")


@dataclass(frozen=True, slots=True)
class ArmTruth:
    """The true behaviour of one arm, which the experiment tries to discover."""

    #: Probability that a rated successful answer gets a thumbs up.
    thumbs_up: float
    #: Probability that a request fails.
    error_rate: float = 0.0
    #: Median latency of a successful request (log-normal), milliseconds.
    latency_ms: float = 300.0
    #: Shape (sigma of the log) of the latency distribution; 0 gives a constant latency.
    latency_sigma: float = 0.3

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.thumbs_up <= 1:
            problems.append("thumbs_up must lie in [0, 1]")
        if not 0 <= self.error_rate <= 1:
            problems.append("error_rate must lie in [0, 1]")
        if not (math.isfinite(self.latency_ms) and self.latency_ms > 0):
            problems.append("latency_ms must be positive")
        if not (math.isfinite(self.latency_sigma) and self.latency_sigma >= 0):
            problems.append("latency_sigma must be >= 0")
        if problems:
            raise ValueError("invalid arm: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class Users:
    """How synthetic users behave, whichever arm answers them."""

    #: Mean requests per unit; each unit sends ``1 + Poisson(requests_per_unit - 1)``.
    requests_per_unit: float = 1.0
    #: Probability that a user rates a successful answer (thumbs up or down).
    rated_share: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.requests_per_unit) and self.requests_per_unit >= 1):
            raise ValueError("invalid users: requests_per_unit must be >= 1")
        if not 0 <= self.rated_share <= 1:
            raise ValueError("invalid users: rated_share must lie in [0, 1]")

    def requests(self, rng: np.random.Generator, size: int) -> NDArray[np.int64]:
        """Requests each of ``size`` new units will send."""
        return 1 + rng.poisson(self.requests_per_unit - 1.0, size).astype(np.int64)

    def thumb(self, rng: np.random.Generator, truth: ArmTruth) -> Literal["up", "down"] | None:
        """One user's reaction to one successful answer of an arm: a rating or none."""
        if rng.random() >= self.rated_share:
            return None
        return "up" if rng.random() < truth.thumbs_up else "down"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one simulated experiment ended."""

    #: "promote" | "rollback" | "halt" | "inconclusive", or "continue" when the horizon came first
    #: (or "advance" when a single-stage run ends on it).
    action: str
    reasons: tuple[str, ...]
    #: Looks taken (evaluations), including the deciding one.
    looks: int
    #: Cumulative units per arm at the end.
    units: dict[str, int]
    #: Stage index at the end.
    stage: int
    #: The looks at which the experiment advanced to the next stage.
    advances: tuple[int, ...] = field(default=())


def _sums(x: NDArray[np.int64], y: NDArray[np.int64]) -> RatioSums:
    """Per-unit ``(x_u, y_u)`` as the sums SQL returns (units with ``y_u == 0`` dropped)."""
    keep = y > 0
    xs, ys = x[keep].astype(np.float64), y[keep].astype(np.float64)
    return RatioSums(
        units=int(keep.sum()),
        sum_x=float(xs.sum()),
        sum_y=float(ys.sum()),
        sum_x2=float((xs * xs).sum()),
        sum_y2=float((ys * ys).sum()),
        sum_xy=float((xs * ys).sum()),
    )


def draw_arm(
    rng: np.random.Generator,
    truth: ArmTruth,
    units: int,
    *,
    users: Users | None = None,
    latency: bool = True,
) -> ArmStats:
    """The statistics of ``units`` new units served by an arm (the evaluator's view).

    Per unit: requests ``y``, failures ``Binomial(y, error_rate)``, ratings
    ``Binomial(successes, rated_share)``, thumbs up ``Binomial(ratings, thumbs_up)``; one
    latency per successful request unless ``latency`` is False (the latency tests then
    report "insufficient", which is much cheaper when only thumbs matter).
    """
    if units < 0:
        raise ValueError("units must be >= 0")
    users = users or Users()
    requests = users.requests(rng, units)
    failed = rng.binomial(requests, truth.error_rate)
    ok = requests - failed
    rated = rng.binomial(ok, users.rated_share)
    ups = rng.binomial(rated, truth.thumbs_up)
    samples: tuple[float, ...] = ()
    if latency:
        n_ok = int(ok.sum())
        samples = tuple(rng.lognormal(math.log(truth.latency_ms), truth.latency_sigma, n_ok))
    return ArmStats(
        requests=int(requests.sum()),
        units=units,
        errors=PhasedSums.single(_sums(failed, requests)),
        thumbs=PhasedSums.single(_sums(ups, rated)),
        latency_ms=samples,
    )


def bernoulli_arm(ups: int, units: int, *, error_sums: bool = True) -> ArmStats:
    """``units`` units with one successful, rated request each, ``ups`` of them thumbs up.

    ``error_sums=False`` leaves the error sums empty instead of "no failures": the error
    tests then report "insufficient" instead of a zero difference, which leads the policy
    to the same decision (a zero difference neither fails nor blocks the guardrail) and
    makes ``analyse`` cheaper.
    """
    errors = RatioSums(units, 0.0, units, 0.0, units, 0.0) if error_sums else RatioSums()
    return ArmStats(
        requests=units,
        units=units,
        errors=PhasedSums.single(errors),
        # x_u in {0, 1}: x_u**2 == x_u
        thumbs=PhasedSums.single(RatioSums(units, ups, units, ups, units, ups)),
    )


def in_phase(stats: ArmStats, phase: int) -> ArmStats:
    """New units' statistics (one phase) placed in phase ``phase`` of an experiment."""
    return ArmStats(
        requests=stats.requests,
        units=stats.units,
        errors=PhasedSums.in_phase(stats.errors.pooled(), phase),
        thumbs=PhasedSums.in_phase(stats.thumbs.pooled(), phase),
        latency_ms=stats.latency_ms,
        ttft_ms=stats.ttft_ms,
    )


def combine(a: ArmStats, b: ArmStats) -> ArmStats:
    """Statistics of two disjoint sets of units of one arm (a new batch of users)."""
    return ArmStats(
        requests=a.requests + b.requests,
        units=a.units + b.units,
        errors=a.errors + b.errors,
        thumbs=a.thumbs + b.thumbs,
        latency_ms=a.latency_ms + b.latency_ms,
        ttft_ms=a.ttft_ms + b.ttft_ms,
    )


def random_batches(
    rng: np.random.Generator,
    champion: ArmTruth,
    challenger: ArmTruth,
    *,
    units: int,
    users: Users | None = None,
    latency: bool = True,
) -> Batch:
    """``units`` new units per look, split by the challenger's share as the hash would be."""

    def batch(share: float) -> tuple[ArmStats, ArmStats]:
        to_challenger = int(rng.binomial(units, share))
        return (
            draw_arm(rng, champion, units - to_challenger, users=users, latency=latency),
            draw_arm(rng, challenger, to_challenger, users=users, latency=latency),
        )

    return batch


def run_experiment(
    next_batch: Batch,
    policy: Policy,
    *,
    max_looks: int,
    stage_index: int | None = None,
) -> Outcome:
    """Look after look through the real ``analyse`` + policy until it decides (see module).

    ``stage_index=None`` walks the stages from the first; an integer stays at that stage.
    """
    if max_looks < 1:
        raise ValueError("max_looks must be >= 1")
    if stage_index is not None and not 0 <= stage_index < len(policy.stages):
        raise ValueError(f"stage_index {stage_index} outside 0..{len(policy.stages) - 1}")
    stage = 0 if stage_index is None else stage_index
    champion, challenger = ArmStats(), ArmStats()
    stage_units = {"champion": 0, "challenger": 0}
    stage_latency: dict[str, tuple[float, ...]] = {"champion": (), "challenger": ()}
    history: dict[str, dict[str, float]] | None = None
    advances: list[int] = []
    decision = Decision("continue")
    for look in range(1, max_looks + 1):
        share = policy.stages[stage] / 100.0
        phase = len(advances)  # each stage is one phase: new units only, no pauses
        new_champion, new_challenger = (in_phase(s, phase) for s in next_batch(share))
        # The latency a look reads is the stage's (below), not the whole experiment's.
        champion = combine(champion, replace(new_champion, latency_ms=()))
        challenger = combine(challenger, replace(new_challenger, latency_ms=()))
        stage_units["champion"] += new_champion.units
        stage_units["challenger"] += new_challenger.units
        stage_latency["champion"] += new_champion.latency_ms
        stage_latency["challenger"] += new_challenger.latency_ms
        analysis = analyse(
            replace(champion, latency_ms=stage_latency["champion"]),
            replace(challenger, latency_ms=stage_latency["challenger"]),
            VoteCounts(),
            policy,
            Look(
                stage_index=stage,
                weights={"champion": 1.0 - share, "challenger": share},
                stage_units=dict(stage_units),
                srm_units=dict(stage_units),
                srm_window=str(phase),
            ),
            history,
        )
        history = analysis.sequential_state()  # what the evaluator stores for the next look
        decision = analysis.decision
        if decision.action == "advance" and stage_index is None:
            stage += 1
            stage_units = {"champion": 0, "challenger": 0}
            stage_latency = {"champion": (), "challenger": ()}
            advances.append(look)
            continue
        if decision.action != "continue":
            return Outcome(
                action=decision.action,
                reasons=decision.reasons,
                looks=look,
                units={"champion": champion.units, "challenger": challenger.units},
                stage=stage,
                advances=tuple(advances),
            )
    return Outcome(
        action="continue",
        reasons=decision.reasons,
        looks=max_looks,
        units={"champion": champion.units, "challenger": challenger.units},
        stage=stage,
        advances=tuple(advances),
    )


def thumbs_paths(
    rng: np.random.Generator, rate: float, *, experiments: int, looks: int, units_per_look: int
) -> NDArray[np.int64]:
    """Cumulative thumbs up after each look, shape ``(experiments, looks)``.

    One request per unit and every answer rated, so a look's new thumbs up are
    ``Binomial(units_per_look, rate)``; look ``k`` (0-based) has seen
    ``units_per_look * (k + 1)`` units.
    """
    counts = rng.binomial(units_per_look, rate, size=(experiments, looks))
    return np.cumsum(counts, axis=1, dtype=np.int64)


def replay_batches(
    champion_ups: NDArray[np.int64],
    challenger_ups: NDArray[np.int64],
    units_per_look: int,
    *,
    error_sums: bool = True,
) -> Batch:
    """One experiment's looks from cumulative thumbs-up counts (a row of :func:`thumbs_paths`).

    Each look adds ``units_per_look`` units to *each* arm whatever the share: use it at a
    stage whose split is 50/50, or the SRM check will (rightly) halt the run. See
    :func:`bernoulli_arm` for ``error_sums``.
    """
    looks = iter(
        zip(
            np.diff(champion_ups, prepend=0).tolist(),
            np.diff(challenger_ups, prepend=0).tolist(),
            strict=True,
        )
    )

    def batch(_share: float) -> tuple[ArmStats, ArmStats]:
        ups_a, ups_b = next(looks)
        return (
            bernoulli_arm(ups_a, units_per_look, error_sums=error_sums),
            bernoulli_arm(ups_b, units_per_look, error_sums=error_sums),
        )

    return batch


def naive_z(
    champion_ups: NDArray[np.int64],
    challenger_ups: NDArray[np.int64],
    units: NDArray[np.int64],
    *,
    min_units: int = 0,
) -> NDArray[np.float64]:
    """Fixed-horizon Wald z of the thumbs-up rate difference at every look.

    Unpooled variance, as :func:`experiments.rates.compare_rates`. ``*_ups`` are cumulative
    counts ``(experiments, looks)``, ``units`` the units per arm at each look; looks with
    fewer than ``min_units`` units (and zero variance) get ``z = 0``.
    """
    n = units.astype(np.float64)[np.newaxis, :]
    p_a, p_b = champion_ups / n, challenger_ups / n
    se = np.sqrt((p_a * (1 - p_a) + p_b * (1 - p_b)) / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (p_b - p_a) / se, 0.0)
    z[:, units < min_units] = 0.0
    return z


def naive_z_decisions(
    z: NDArray[np.float64], *, alpha: float
) -> tuple[NDArray[np.int8], NDArray[np.int64]]:
    """The naive rule, peeked: decide at the first look where a fixed-horizon test rejects.

    With ``z`` from :func:`naive_z`, promote when ``z > z_{1-alpha}`` and roll back when
    ``z < -z_{1-alpha}`` (one-sided tests at ``alpha``): the policy's rule with the
    always-valid p-values replaced by fixed-horizon ones. Returns per experiment the
    decision (+1 promote, -1 rollback, 0 none) and its look index (-1 when none).
    """
    z_crit = float(stats.norm.ppf(1.0 - alpha))
    crossed = np.abs(z) > z_crit
    any_crossed = crossed.any(axis=1)
    first = np.where(any_crossed, crossed.argmax(axis=1), -1)
    rows = np.arange(z.shape[0])
    sign = np.where(any_crossed, np.sign(z[rows, np.maximum(first, 0)]), 0).astype(np.int8)
    return sign, first.astype(np.int64)
