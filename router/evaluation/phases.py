"""One look of the evaluator: an experiment's statistics over its running phases.

Every traffic change of an experiment starts a phase (the ``phases`` column of the
``experiments`` table); only rows of **running** phases count, each in the phase of its
``created_at``, so a pause, a halt or a stage change cannot bias the statistics. Which
rows count, and which units are the split's, is :mod:`router.evaluation.aggregate`'s
definition: this module builds on its query pieces.

The per-unit sums are per phase (``x_uk``, ``y_uk``: unit u's successes and trials in
phase k), and the database also sums the cross-phase products ``x_uk x_ul``, ``x_uk y_ul``
and ``y_uk y_ul`` that a phase-stratified delta method needs when a unit spans phases
(``experiments.stats.PhasedSums``; Deng, Knoblich & Lu, "Applying the Delta Method in
Metric Analytics", KDD 2018).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from itertools import pairwise
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    case,
    func,
    literal,
    or_,
    select,
)

from experiments.stats import ArmStats, PhasedSums, RatioSums, VoteCounts
from router.evaluation.aggregate import (
    ARMS,
    FAILED,
    LOG,
    SPLIT,
    _counted,
    _latest_ratings,
    _vote_outcomes,
    _votes,
)
from router.evaluation.snapshot import concurrent_reads
from router.inference_log.record import OK

__all__ = ["LookData", "aggregate_look"]


@dataclass(frozen=True, slots=True)
class LookData:
    """What one look of the evaluator reads (``aggregate_look``).

    ``arms``: per arm, statistics of the running phases (errors and thumbs one stratum per
    running phase; latency and TTFT samples of the current stage's running phases).
    ``stage_units`` and ``srm_units``: per arm, the units the split assigned in the current
    stage's running phases, all of them or those from ``srm_since_phase`` on.
    """

    arms: dict[str, ArmStats]
    votes: VoteCounts
    stage_units: dict[str, int]
    srm_units: dict[str, int]


def aggregate_look(
    engine: Engine,
    *,
    route: str,
    experiment_id: str,
    phases: Sequence[Mapping[str, Any]],
    stage_index: int,
    srm_since_phase: int,
    latency_sample: int = 20_000,
) -> LookData:
    """An experiment's statistics over its running phases, stratified by phase.

    ``phases`` is the experiment's phase list (``{"stage", "status", "challenger_percent",
    "started_at"}`` in time order, ``started_at`` an ISO-8601 string or a datetime); phase
    i lasts until phase i + 1 starts, the last one until now. The strata are the running
    phases in order (none: empty sums). A row belongs to the phase of its ``created_at``;
    a rating to the phase of its request. Latency and TTFT samples come from the current
    stage (``stage_index``) only, a failed request (:data:`FAILED`) as ``math.inf``.
    ``srm_since_phase`` indexes ``phases``: SRM counts the current stage's running phases
    from that one on. Votes are forced arena battles, not split traffic: all of them
    count, clustered by voter (``VoteCounts.per_voter``).

    The reads (errors of each arm; thumbs; samples and votes) run at once on one snapshot
    (``snapshot.concurrent_reads``).
    """
    strata = _running_phases(phases)
    stage = [p for p in strata if p.stage == stage_index]
    srm = [p for p in stage if p.index >= srm_since_phase]
    # Errors of each arm (a range of the index each), then thumbs; nothing without strata.
    per_unit = (
        [_phased_error_units(route, experiment_id, strata, arm, stage, srm) for arm in ARMS]
        + [_phased_thumb_units(route, experiment_id, strata)]
        if strata
        else []
    )

    def samples_and_votes(
        conn: Connection,
    ) -> tuple[dict[tuple[str, str], tuple[float, ...]], VoteCounts]:
        samples = {
            (arm, column): _look_sample(
                conn, route, experiment_id, stage, arm, column, latency_sample
            )
            for arm in ARMS
            for column in ("latency_ms", "ttft_ms")
        }
        votes = _votes(conn, route, experiment_id, None)
        return samples, replace(votes, per_voter=_per_voter(conn, route, experiment_id))

    with concurrent_reads(engine, 4) as submit:
        sum_jobs = [
            submit(partial(_phased_sums, per_unit=query, phases=len(strata))) for query in per_unit
        ]
        rest_job = submit(samples_and_votes)
    *error_sums, thumbs = [job.result() for job in sum_jobs] or [{}]
    errors = {arm: sums for by_arm in error_sums for arm, sums in by_arm.items()}
    samples, votes = rest_job.result()
    empty = _Phased(PhasedSums.empty(len(strata)))
    arms, stage_units, srm_units = {}, {}, {}
    for arm in ARMS:
        err = errors.get(arm, empty)
        arms[arm] = ArmStats(
            requests=int(sum(err.sums.sum_y)),
            units=err.split,
            errors=err.sums,
            thumbs=thumbs.get(arm, empty).sums,
            latency_ms=samples[(arm, "latency_ms")],
            ttft_ms=samples[(arm, "ttft_ms")],
        )
        stage_units[arm], srm_units[arm] = err.stage, err.srm
    return LookData(arms=arms, votes=votes, stage_units=stage_units, srm_units=srm_units)


# -- the queries --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stratum:
    """A running phase: its place in the phase list, its stage and its time interval."""

    index: int
    stage: int
    start: datetime
    end: datetime | None  # None: the last phase, open until now


def _running_phases(phases: Sequence[Mapping[str, Any]]) -> list[_Stratum]:
    starts = [_moment(p["started_at"]) for p in phases]
    if any(later < earlier for earlier, later in pairwise(starts)):
        raise ValueError("phases must be in time order")
    return [
        _Stratum(i, int(p["stage"]), starts[i], starts[i + 1] if i + 1 < len(starts) else None)
        for i, p in enumerate(phases)
        if p["status"] == "running"
    ]


def _moment(value: str | datetime) -> datetime:
    """A phase's ``started_at`` (JSON gives a string) as an aware UTC datetime."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _within(column: Any, strata: Sequence[_Stratum]) -> ColumnElement[bool]:
    """``column`` falls in one of ``strata`` (adjacent ones merged into one range)."""
    ranges: list[tuple[datetime, datetime | None]] = []
    for s in strata:
        if ranges and ranges[-1][1] == s.start:
            ranges[-1] = (ranges[-1][0], s.end)
        else:
            ranges.append((s.start, s.end))
    if not ranges:
        return literal(False)
    return or_(
        *(
            and_(column >= start, column < end) if end is not None else column >= start
            for start, end in ranges
        )
    )


def _phased_error_units(
    route: str,
    experiment_id: str,
    strata: Sequence[_Stratum],
    arm: str,
    stage: Sequence[_Stratum],
    srm: Sequence[_Stratum],
) -> Select[Any]:
    """Per (arm, unit) of one arm: ``x<k>`` failed requests and ``y<k>`` requests in
    stratum k; ``split``, ``stage``, ``srm`` = 1 when the split assigned the unit in any
    stratum, in one of ``stage``, in one of ``srm``."""
    created, split = LOG.c.created_at, LOG.c.assignment_reason.in_(SPLIT)

    def units(where: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.max(case((where, 1), else_=0))

    return (
        select(
            LOG.c.arm,
            *_per_phase(created, strata, LOG.c.status.in_(FAILED)),
            units(split).label("split"),
            units(and_(split, _within(created, stage))).label("stage"),
            units(and_(split, _within(created, srm))).label("srm"),
        )
        .where(*_counted(route, experiment_id, None), LOG.c.arm == arm, _within(created, strata))
        # Groups in the order of ix_inference_log_units: no sort (see aggregate._error_units).
        .group_by(LOG.c.arm, LOG.c.unit_id)
    )


def _phased_thumb_units(route: str, experiment_id: str, strata: Sequence[_Stratum]) -> Select[Any]:
    """Per (arm, unit): ``x<k>`` thumbs up and ``y<k>`` rated requests (latest rating per
    request) of the requests made in stratum k."""
    latest = _latest_ratings(route, experiment_id, None)
    return (
        select(latest.c.arm, *_per_phase(latest.c.created_at, strata, latest.c.value == "up"))
        .where(_within(latest.c.created_at, strata))
        .group_by(latest.c.arm, latest.c.unit_id)
    )


def _per_phase(created: Any, strata: Sequence[_Stratum], success: Any) -> list[Any]:
    """``x<k>`` (successes) and ``y<k>`` (rows) of stratum k, for a per-unit GROUP BY.

    Each column tests its own stratum's interval: two comparisons a row, where a CASE
    numbering the strata (K of them) is evaluated again for every column (the planners
    inline it): 30-40% slower on SQLite, measured on 300k rows with four strata.
    """
    inside = [_within(created, [s]) for s in strata]
    return [
        *(
            func.sum(case((and_(i, success), 1), else_=0)).label(f"x{k}")
            for k, i in enumerate(inside)
        ),
        *(func.sum(case((i, 1), else_=0)).label(f"y{k}") for k, i in enumerate(inside)),
    ]


@dataclass(frozen=True, slots=True)
class _Phased:
    """One arm's phased sums, and its units the split assigned (in all, in the stage, in
    the SRM window); the counts are 0 for per-unit queries without those columns."""

    sums: PhasedSums
    split: int = 0
    stage: int = 0
    srm: int = 0


def _phased_sums(conn: Connection, per_unit: Select[Any], phases: int) -> dict[str, _Phased]:
    """Sum a per-(arm, unit) query of ``x<k>``, ``y<k>`` per arm into PhasedSums.

    The K x K products are symmetric for xx and yy: the upper triangle is summed, the
    rest mirrored (3K(K+1)/2 + K² columns in all; K is a handful of phases).
    """
    u = per_unit.subquery("per_unit")
    x = [u.c[f"x{k}"] for k in range(phases)]
    y = [u.c[f"y{k}"] for k in range(phases)]
    pairs = [(k, m) for k in range(phases) for m in range(k, phases)]
    columns = [
        u.c.arm,
        func.count().label("distinct_units"),
        *(func.sum(case((y[k] > 0, 1), else_=0)).label(f"units{k}") for k in range(phases)),
        *(func.sum(x[k]).label(f"sx{k}") for k in range(phases)),
        *(func.sum(y[k]).label(f"sy{k}") for k in range(phases)),
        *(func.sum(x[k] * x[m]).label(f"xx{k}_{m}") for k, m in pairs),
        *(func.sum(y[k] * y[m]).label(f"yy{k}_{m}") for k, m in pairs),
        *(func.sum(x[k] * y[m]).label(f"xy{k}_{m}") for k in range(phases) for m in range(phases)),
    ]
    counts = [name for name in ("split", "stage", "srm") if name in u.c]
    columns += [func.sum(u.c[name]).label(name) for name in counts]
    out = {}
    for r in conn.execute(select(*columns).group_by(u.c.arm)):
        row = r._mapping

        def matrix(name: str, symmetric: bool, row: Any = row) -> tuple[tuple[float, ...], ...]:
            return tuple(
                tuple(
                    float(row[f"{name}{min(k, m)}_{max(k, m)}" if symmetric else f"{name}{k}_{m}"])
                    for m in range(phases)
                )
                for k in range(phases)
            )

        sums = PhasedSums(
            units=tuple(int(row[f"units{k}"]) for k in range(phases)),
            sum_x=tuple(float(row[f"sx{k}"]) for k in range(phases)),
            sum_y=tuple(float(row[f"sy{k}"]) for k in range(phases)),
            xx=matrix("xx", True),
            xy=matrix("xy", False),
            yy=matrix("yy", True),
            distinct_units=int(row["distinct_units"]),
        )
        out[r.arm] = _Phased(sums, **{name: int(row[name] or 0) for name in counts})
    return out


def _look_sample(
    conn: Connection,
    route: str,
    experiment_id: str,
    strata: Sequence[_Stratum],
    arm: str,
    column: str,
    limit: int,
) -> tuple[float, ...]:
    """``_sample`` over ``strata``, failed requests included as ``math.inf``.

    A failed request is the slowest answer there is, not a missing one: leaving it out
    would make an arm that fails its slow requests look fast. TTFT: streamed requests.
    """
    if limit <= 0 or not strata:
        return ()
    value = LOG.c[column]
    where = [
        *_counted(route, experiment_id, None),
        LOG.c.arm == arm,
        _within(LOG.c.created_at, strata),
        or_(and_(LOG.c.status == OK, value.is_not(None)), LOG.c.status.in_(FAILED)),
    ]
    if column == "ttft_ms":
        where.append(LOG.c.stream.is_(True))
    stmt = select(LOG.c.status, value).where(*where).order_by(LOG.c.request_id).limit(limit)
    return tuple(math.inf if status in FAILED else float(v) for status, v in conn.execute(stmt))


def _per_voter(conn: Connection, route: str, experiment_id: str | None) -> RatioSums:
    """Decisive votes clustered by voter (``votes.unit_id``): x = challenger wins, y =
    decisive votes; a vote without a voter is a voter of its own. One voter's votes are
    not independent, so the win rate's variance is the delta method's over voters."""
    v = _vote_outcomes(route, experiment_id, None)
    per_voter = (
        select(
            func.sum(case((v.c.outcome == "challenger", 1), else_=0)).label("x"),
            func.sum(case((v.c.outcome.in_(ARMS), 1), else_=0)).label("y"),
        )
        # Grouping by the id as well when there is no voter: no string a unit could spell.
        .group_by(v.c.unit_id, case((v.c.unit_id.is_(None), v.c.id)))
        .subquery("per_voter")
    )
    x, y = per_voter.c.x, per_voter.c.y
    r = conn.execute(
        select(
            func.count(),
            func.sum(x),
            func.sum(y),
            func.sum(x * x),
            func.sum(y * y),
            func.sum(x * y),
        ).where(y > 0)
    ).one()
    return RatioSums(int(r[0]), *(float(value or 0) for value in r[1:]))
