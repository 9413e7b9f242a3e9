"""The dashboard's figures for one route: per arm, the votes, and a timeline; JSON-safe.

Scope as the evaluator's: the route's live experiment when one runs, else the route's
rows outside any experiment; requests from ``window_s`` before now. The counts come from
``router.evaluation.aggregate`` (``aggregate`` per arm, ``timeline`` per bucket); this
module adds what those do not carry:

- tokens per second per arm: one ``GROUP BY arm`` (Σ completion tokens / Σ latency of the
  arm's successful requests, i.e. output per second of request time);
- p50/p95 latency per time bucket and arm, exact, in the database: a window function ranks
  each bucket's successful requests by latency and only the ranks around each percentile
  come back (at most six rows per bucket and arm).

Both read only the window's rows, through the (route, created_at) index.

Bradley-Terry ratings come from ``experiments.votes``; thumbs-up intervals are Wilson
score intervals (scipy's ``binomtest(...).proportion_ci(method="wilson")``), the band the
promotion report draws.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from scipy import stats
from sqlalchemy import Engine, case, distinct, func, or_, select

from experiments.stats import ArmStats, VoteCounts
from experiments.votes import compare_votes
from router.errors import InvalidRequest

# ``bucket_start`` is the expression ``timeline`` buckets by: the latency buckets must be
# the same ones, on SQLite and on Postgres.
from router.evaluation.aggregate import (
    ARMS,
    _vote_outcomes,
    aggregate,
    bucket_start,
    timeline,
)
from router.inference_log.models import InferenceRecord, utcnow
from router.inference_log.record import OK
from router.routes_table import Arm, Route
from router.schemas import Dashboard, DashboardArm, DashboardVotes, TimelinePoint

__all__ = ["CSV_COLUMNS", "MAX_BUCKETS", "build", "to_csv"]

LOG = InferenceRecord.__table__  # type: ignore[attr-defined]

#: Most time buckets one dashboard may ask for (window_s / bucket_s).
MAX_BUCKETS = 2000
#: The timeline's latency percentiles.
PERCENTILES = (50, 95)


def build(
    engine: Engine, *, route: Route, bucket_s: int, window_s: int, now: datetime | None = None
) -> Dashboard:
    """Everything ``GET /v1/routes/{route}/dashboard`` shows (runs queries: call in a thread)."""
    if window_s / bucket_s > MAX_BUCKETS:
        raise InvalidRequest(
            f"window_s / bucket_s is {window_s / bucket_s:g} buckets; at most {MAX_BUCKETS}: "
            "ask for a shorter window or wider buckets.",
            code="too_many_buckets",
        )
    now = now or utcnow()
    since = now - timedelta(seconds=window_s)
    experiment_id = route.experiment_id  # read once: the evaluator may end it meanwhile
    arms, votes = aggregate(engine, route=route.name, experiment_id=experiment_id, since=since)
    speed = _tokens_per_s(engine, route.name, experiment_id, since)
    current = {"champion": route.champion, "challenger": route.challenger}
    return Dashboard(
        route=route.name,
        experiment_id=experiment_id,
        generated_at=now,
        since=since,
        window_s=window_s,
        bucket_s=bucket_s,
        weights=route.weights,
        arms={
            name: _arm(arm, arms[name], speed.get(name)) if arm is not None else None
            for name, arm in current.items()
        },
        votes=_votes(votes, _voters(engine, route.name, experiment_id, since)),
        timeline=_timeline(
            engine,
            route=route.name,
            experiment_id=experiment_id,
            since=since,
            now=now,
            bucket_s=bucket_s,
            arms=[name for name, arm in current.items() if arm is not None],
        ),
    )


# -- per arm ------------------------------------------------------------------------------


def _arm(arm: Arm, stats_: ArmStats, tokens_per_s: float | None) -> DashboardArm:
    errors = int(stats_.errors.pooled().sum_x)
    thumbs = stats_.thumbs.pooled()
    ups, rated = int(thumbs.sum_x), int(thumbs.sum_y)
    return DashboardArm(
        model=arm.model,
        version=arm.version,
        requests=stats_.requests,
        errors=errors,
        error_rate=_ratio(errors, stats_.requests),
        latency_p50_ms=_percentile(stats_.latency_ms, 50),
        latency_p95_ms=_percentile(stats_.latency_ms, 95),
        ttft_p50_ms=_percentile(stats_.ttft_ms, 50),
        tokens_per_s=tokens_per_s,
        thumbs_up=ups,
        thumbs_down=rated - ups,
        thumbs_up_rate=_ratio(ups, rated),
        thumbs_up_ci=_wilson(ups, rated),
    )


def _votes(votes: VoteCounts, voters: int) -> DashboardVotes:
    result = compare_votes(votes)
    ratings = result.bradley_terry or {}
    intervals = result.bradley_terry_ci or {}
    return DashboardVotes(
        challenger_wins=votes.challenger_wins,
        champion_wins=votes.champion_wins,
        ties=votes.ties,
        both_bad=votes.both_bad,
        voters=voters,
        win_rate=_num(result.win_rate),
        bradley_terry={arm: _num(ratings.get(arm)) for arm in ARMS},
        bradley_terry_ci={arm: _pair(intervals.get(arm)) for arm in ARMS},
    )


def _voters(engine: Engine, route: str, experiment_id: str | None, since: datetime) -> int:
    """Distinct voters of the decisive votes in scope, as the evaluator clusters them
    (``votes.unit_id``; a vote without a voter is a voter of its own)."""
    since = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
    v = _vote_outcomes(route, experiment_id, since)
    stmt = select(
        func.count(distinct(v.c.unit_id)),
        func.coalesce(func.sum(case((v.c.unit_id.is_(None), 1), else_=0)), 0),
    ).where(v.c.outcome.in_(ARMS))
    with engine.connect() as conn:
        named, anonymous = conn.execute(stmt).one()
    return int(named) + int(anonymous)


def _window(route: str, experiment_id: str | None, since: datetime) -> list[Any]:
    """Successful requests of both arms in scope, read through (route, created_at).

    The other filters are wrapped in ``coalesce`` (a no-op: no experiment id is empty) so
    that no planner walks the evaluator's indexes, which span the whole experiment, to
    find an hour of it: the range on ``ix_inference_log_route_created`` reads only the
    window's rows (SQLite, last hour of 1M rows: the per-bucket latency went from 1.6 s
    through the evaluator's index to 0.12 s).
    """
    return [
        LOG.c.route == route,
        LOG.c.created_at >= since,
        func.coalesce(LOG.c.experiment_id, "") == (experiment_id or ""),
        func.coalesce(LOG.c.arm, "").in_(ARMS),
        func.coalesce(LOG.c.status, "") == OK,
    ]


def _tokens_per_s(
    engine: Engine, route: str, experiment_id: str | None, since: datetime
) -> dict[str, float | None]:
    stmt = (
        select(LOG.c.arm, func.sum(LOG.c.completion_tokens), func.sum(LOG.c.latency_ms))
        .where(*_window(route, experiment_id, since), LOG.c.completion_tokens.is_not(None))
        .group_by(LOG.c.arm)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return {arm: _ratio(float(tokens or 0), (ms or 0) / 1000) for arm, tokens, ms in rows}


# -- over time ----------------------------------------------------------------------------


def _timeline(
    engine: Engine,
    *,
    route: str,
    experiment_id: str | None,
    since: datetime,
    now: datetime,
    bucket_s: int,
    arms: list[str],
) -> list[TimelinePoint]:
    """Every bucket from ``since`` to ``now`` for every arm, empty buckets as zeros."""
    counts = {
        (int(row["start"].timestamp()), row["arm"]): row
        for row in timeline(
            engine, route=route, experiment_id=experiment_id, since=since, bucket_s=bucket_s
        )
    }
    latency = _bucket_latency(engine, route, experiment_id, since, bucket_s)
    first, last = _floor(since, bucket_s), _floor(now, bucket_s)
    starts = set(range(first, last + 1, bucket_s)) | {k[0] for k in (*counts, *latency)}
    arm_names = [*arms, *sorted({k[1] for k in (*counts, *latency)} - set(arms))]
    points = []
    for start in sorted(starts):
        for arm in arm_names:
            row = counts.get((start, arm), {})
            ups, rated = int(row.get("ups", 0)), int(row.get("rated", 0))
            low, high = _bounds(_wilson(ups, rated))
            pct = latency.get((start, arm), {})
            points.append(
                TimelinePoint(
                    time=datetime.fromtimestamp(start, UTC),
                    arm=arm,
                    requests=int(row.get("requests", 0)),
                    errors=int(row.get("errors", 0)),
                    latency_p50_ms=pct.get(50),
                    latency_p95_ms=pct.get(95),
                    ups=ups,
                    rated=rated,
                    thumbs_up_rate=_ratio(ups, rated),
                    ci_low=low,
                    ci_high=high,
                )
            )
    return points


def _bucket_latency(
    engine: Engine, route: str, experiment_id: str | None, since: datetime, bucket_s: int
) -> dict[tuple[int, str], dict[int, float | None]]:
    """``{(bucket start, arm): {50: p50, 95: p95}}`` of successful requests' latency.

    Percentiles as numpy's default ("linear"): with the n values sorted, ``h = (n - 1) q``
    and ``x[⌊h⌋] + (h - ⌊h⌋) (x[⌊h⌋ + 1] - x[⌊h⌋])``. The database ranks each bucket's
    values and returns ranks ``F .. F + 2`` around ``F = (n - 1) q`` in exact integer
    arithmetic, which hold ``x[⌊h⌋]`` and ``x[⌊h⌋ + 1]`` however ``h`` rounds.
    """
    with engine.connect() as conn:
        start = bucket_start(conn, LOG.c.created_at, bucket_s)
        ranked = (
            select(
                start.label("start"),
                LOG.c.arm,
                LOG.c.latency_ms,
                func.row_number()
                .over(partition_by=(start, LOG.c.arm), order_by=LOG.c.latency_ms)
                .label("rank"),
                func.count().over(partition_by=(start, LOG.c.arm)).label("n"),
            )
            .where(*_window(route, experiment_id, since))
            .subquery("ranked")
        )
        near = [
            ranked.c.rank == (ranked.c.n - 1) * pct // 100 + k
            for pct in PERCENTILES
            for k in (0, 1, 2)
        ]
        stmt = select(
            ranked.c.start, ranked.c.arm, ranked.c.n, ranked.c.rank, ranked.c.latency_ms
        ).where(or_(*near))
        ranks: dict[tuple[int, str], dict[int, float]] = defaultdict(dict)
        sizes: dict[tuple[int, str], int] = {}
        for bucket, arm, n, rank, latency_ms in conn.execute(stmt):
            key = (int(bucket), arm)
            ranks[key][int(rank)] = float(latency_ms)
            sizes[key] = int(n)
    return {key: _interpolate(ranks[key], n) for key, n in sizes.items()}


def _interpolate(ranks: dict[int, float], n: int) -> dict[int, float | None]:
    """Each of ``PERCENTILES`` from the 1-based ``ranks`` of ``n`` sorted values."""
    out: dict[int, float | None] = {}
    for pct in PERCENTILES:
        h = (n - 1) * pct / 100
        low = math.floor(h)
        below = ranks[low + 1]
        above = ranks.get(low + 2, below)  # h = n - 1: the top value
        out[pct] = _num(below + (h - low) * (above - below))
    return out


def _floor(moment: datetime, step: int) -> int:
    """Unix seconds of the start of the bucket ``moment`` (aware) falls in."""
    return math.floor(moment.timestamp()) // step * step


# -- CSV ----------------------------------------------------------------------------------

#: ``section`` is ``arm`` (the per-arm summary, ``time`` = generated_at) or ``timeline``.
CSV_COLUMNS = (
    "section",
    "time",
    "arm",
    "model",
    "version",
    "requests",
    "errors",
    "error_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "ttft_p50_ms",
    "tokens_per_s",
    "thumbs_up",
    "thumbs_down",
    "thumbs_up_rate",
    "ci_low",
    "ci_high",
    "votes_won",
    "bradley_terry",
    "bradley_terry_low",
    "bradley_terry_high",
)


def to_csv(board: Dashboard) -> str:
    """The per-arm summary, then the timeline, as one table (empty cells: no value)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_cells(row) for row in _csv_rows(board))
    return out.getvalue()


def _csv_rows(board: Dashboard) -> Iterable[dict[str, Any]]:
    votes = board.votes
    wins = {"champion": votes.champion_wins, "challenger": votes.challenger_wins}
    for name, arm in board.arms.items():
        if arm is None:
            continue
        ci = _bounds(arm.thumbs_up_ci)
        rating_ci = _bounds(votes.bradley_terry_ci.get(name))
        yield {
            **arm.model_dump(exclude={"thumbs_up_ci"}),
            "section": "arm",
            "time": board.generated_at.isoformat(),
            "arm": name,
            "ci_low": ci[0],
            "ci_high": ci[1],
            "votes_won": wins[name],
            "bradley_terry": votes.bradley_terry.get(name),
            "bradley_terry_low": rating_ci[0],
            "bradley_terry_high": rating_ci[1],
        }
    for point in board.timeline:
        yield {
            "section": "timeline",
            "time": point.time.isoformat(),
            "arm": point.arm,
            "requests": point.requests,
            "errors": point.errors,
            "error_rate": _ratio(point.errors, point.requests),
            "latency_p50_ms": point.latency_p50_ms,
            "latency_p95_ms": point.latency_p95_ms,
            "thumbs_up": point.ups,
            "thumbs_down": point.rated - point.ups,
            "thumbs_up_rate": point.thumbs_up_rate,
            "ci_low": point.ci_low,
            "ci_high": point.ci_high,
        }


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    return {column: "" if row.get(column) is None else row[column] for column in CSV_COLUMNS}


# -- numbers ------------------------------------------------------------------------------


def _num(x: float | None) -> float | None:
    """JSON has no NaN or infinity: those become None."""
    return None if x is None or not math.isfinite(x) else float(x)


def _pair(x: tuple[float, float] | None) -> list[float] | None:
    if x is None or not all(math.isfinite(v) for v in x):
        return None
    return [float(x[0]), float(x[1])]


def _bounds(pair: list[float] | None) -> tuple[float | None, float | None]:
    return (pair[0], pair[1]) if pair else (None, None)


def _ratio(part: float, whole: float) -> float | None:
    return _num(part / whole) if whole > 0 else None


def _percentile(sample: Iterable[float], q: float) -> float | None:
    values = np.fromiter(sample, dtype=np.float64)
    return _num(float(np.percentile(values, q))) if values.size else None


def _wilson(successes: int, trials: int) -> list[float] | None:
    """95% Wilson score interval of ``successes / trials``; None without trials."""
    if trials <= 0:
        return None
    ci = stats.binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    return _pair((float(ci.low), float(ci.high)))
