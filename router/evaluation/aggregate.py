"""Sufficient statistics of one experiment, aggregated in the database.

Every heavy step is a ``GROUP BY`` the database runs; Python only reads a handful of
rows per arm (plus the bounded latency samples). The same SQLAlchemy Core runs on SQLite
and Postgres; the one dialect difference (turning a timestamp into a time bucket) lives
in ``_bucket_start``.

Rows that count: the route's rows of the experiment (``experiment_id`` None means rows
logged outside any experiment), assigned to ``champion`` or ``challenger`` (shadow copies
are not assigned traffic), and not ``rejected`` (a refused request never reached an arm).

Per-unit sums feed the delta method (Deng, Knoblich & Lu, "Applying the Delta Method in
Metric Analytics", KDD 2018): for each unit u, ``x_u`` successes out of ``y_u`` trials;
the database groups by (arm, unit), then sums x, y, x², y² and xy per arm.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Select,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    select,
)

from experiments.stats import ArmStats, RatioSums, VoteCounts
from router.inference_log.models import Feedback, InferenceRecord, Vote
from router.inference_log.record import ERROR, FALLBACK, OK, REJECTED, TIMEOUT

__all__ = ["ARMS", "FAILED", "aggregate", "timeline"]

LOG = InferenceRecord.__table__  # type: ignore[attr-defined]
FEEDBACK = Feedback.__table__  # type: ignore[attr-defined]
VOTES = Vote.__table__  # type: ignore[attr-defined]

ARMS = ("champion", "challenger")
#: Statuses that count as a failed request of the assigned arm (a fallback answered, but
#: from the other arm). A client that went away mid-stream is not the arm's failure.
FAILED = (ERROR, TIMEOUT, FALLBACK)


def aggregate(
    engine: Engine,
    *,
    route: str,
    experiment_id: str | None,
    since: datetime | None = None,
    latency_sample: int = 20_000,
) -> tuple[dict[str, ArmStats], VoteCounts]:
    """Per-arm statistics (keys ``champion`` and ``challenger``) and the votes between them.

    ``since`` keeps requests (and votes) from that moment on; latency and TTFT are
    samples of at most ``latency_sample`` successful requests per arm.
    """
    since = _utc(since)
    # One read transaction, so every query sees the same snapshot (on Postgres).
    with engine.connect() as conn, conn.begin():
        errors = _unit_sums(conn, _error_units(route, experiment_id, since))
        thumbs = _unit_sums(conn, _thumb_units(route, experiment_id, since))
        arms = {}
        for arm in ARMS:
            err = errors.get(arm, (0, RatioSums()))
            arms[arm] = ArmStats(
                requests=int(err[1].sum_y),
                units=err[0],
                errors=err[1],
                thumbs=thumbs.get(arm, (0, RatioSums()))[1],
                latency_ms=_sample(
                    conn, route, experiment_id, since, arm, "latency_ms", latency_sample
                ),
                ttft_ms=_sample(conn, route, experiment_id, since, arm, "ttft_ms", latency_sample),
            )
        votes = _votes(conn, route, experiment_id, since)
    return arms, votes


def units_since(
    engine: Engine, *, route: str, experiment_id: str | None, since: datetime
) -> dict[str, int]:
    """Distinct units per arm since ``since``: what SRM and per-stage minimums count.

    One index-ordered COUNT(DISTINCT), far cheaper than a second ``aggregate``.
    """
    query = (
        select(LOG.c.arm, func.count(LOG.c.unit_id.distinct()))
        .where(*_counted(route, experiment_id, _utc(since)))
        .group_by(LOG.c.arm)
    )
    with engine.connect() as conn:
        counts: dict[str, int] = {arm: n for arm, n in conn.execute(query).tuples()}
    return {arm: int(counts.get(arm, 0)) for arm in ARMS}


def timeline(
    engine: Engine,
    *,
    route: str,
    experiment_id: str | None,
    since: datetime | None,
    bucket_s: float,
) -> list[dict[str, Any]]:
    """Per time bucket and arm: ``requests``, ``errors``, ``ups`` and ``rated``.

    Rows are ``{"start": datetime, "arm", "requests", "errors", "ups", "rated"}``, ordered
    by ``start`` then arm; a request's thumbs count in the bucket of the request.
    """
    step = int(bucket_s)
    if step < 1:
        raise ValueError(f"bucket_s must be at least 1 second, got {bucket_s}")
    since = _utc(since)
    failed = func.sum(case((LOG.c.status.in_(FAILED), 1), else_=0))
    with engine.connect() as conn, conn.begin():
        start = _bucket_start(conn, LOG.c.created_at, step).label("start")
        traffic = (
            select(start, LOG.c.arm, func.count().label("requests"), failed.label("errors"))
            .where(*_counted(route, experiment_id, since))
            .group_by(start, LOG.c.arm)
        )
        latest = _latest_ratings(route, experiment_id, since)
        start = _bucket_start(conn, latest.c.created_at, step).label("start")
        rated = select(
            start,
            latest.c.arm,
            func.sum(case((latest.c.value == "up", 1), else_=0)).label("ups"),
            func.count().label("rated"),
        ).group_by(start, latest.c.arm)
        rows: dict[tuple[int, str], dict[str, Any]] = {}
        for r in conn.execute(traffic):
            rows[(int(r.start), r.arm)] = {"requests": int(r.requests), "errors": int(r.errors)}
        for r in conn.execute(rated):
            slot = rows.setdefault((int(r.start), r.arm), {"requests": 0, "errors": 0})
            slot.update(ups=int(r.ups), rated=int(r.rated))
    return [
        {
            "start": datetime.fromtimestamp(key[0], UTC),
            "arm": key[1],
            "requests": v["requests"],
            "errors": v["errors"],
            "ups": v.get("ups", 0),
            "rated": v.get("rated", 0),
        }
        for key, v in sorted(rows.items())
    ]


# -- the queries --------------------------------------------------------------------------


def _utc(moment: datetime | None) -> datetime | None:
    """Timestamps are stored in UTC (SQLite keeps them as text, so the zone must match)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _experiment(table: Any, experiment_id: str | None) -> ColumnElement[bool]:
    column = table.c.experiment_id
    return column.is_(None) if experiment_id is None else column == experiment_id


def _counted(route: str, experiment_id: str | None, since: datetime | None) -> list[Any]:
    """The WHERE clause of the rows that count (see the module docstring)."""
    where = [
        LOG.c.route == route,
        _experiment(LOG, experiment_id),
        LOG.c.arm.in_(ARMS),
        LOG.c.status != REJECTED,
    ]
    if since is not None:
        where.append(LOG.c.created_at >= since)
    return where


def _error_units(route: str, experiment_id: str | None, since: datetime | None) -> Select[Any]:
    """Per (arm, unit): x = failed requests, y = requests."""
    return (
        select(
            LOG.c.arm,
            func.sum(case((LOG.c.status.in_(FAILED), 1), else_=0)).label("x"),
            func.count().label("y"),
        )
        .where(*_counted(route, experiment_id, since))
        # The router gives every assigned row a unit (``anon-<uuid>`` when the client sent
        # none), so grouping by the column keeps the index order (no sort of 1M rows).
        .group_by(LOG.c.arm, LOG.c.unit_id)
    )


def _latest_ratings(route: str, experiment_id: str | None, since: datetime | None) -> Any:
    """The latest rating of each counted request, whoever gave it: (arm, unit, created, value).

    The window reads ``ix_feedback_latest`` in order (no sort, no table reads). Then each
    rated request (~10% of requests) is looked up by primary key: the filters on the log
    are wrapped in ``coalesce`` (a no-op, those columns are NOT NULL or compared with
    their own value) so that no planner is tempted to scan a million index entries from
    the log's side and probe the ratings for each.
    """
    newest_first = func.row_number().over(
        partition_by=FEEDBACK.c.request_id,
        order_by=(FEEDBACK.c.updated_at.desc(), FEEDBACK.c.id.desc()),
    )
    ranked = select(FEEDBACK.c.request_id, FEEDBACK.c.value, newest_first.label("rank"))
    if since is not None:
        # A counted request was made after ``since``, and so was every rating of it.
        ranked = ranked.where(FEEDBACK.c.updated_at >= since)
    rated = ranked.subquery("ranked")
    experiment = func.coalesce(LOG.c.experiment_id, "")
    where = [
        rated.c.rank == 1,
        func.coalesce(LOG.c.route, "") == route,
        experiment == "" if experiment_id is None else experiment == experiment_id,
        func.coalesce(LOG.c.arm, "").in_(ARMS),
        LOG.c.status != REJECTED,
    ]
    if since is not None:
        where.append(LOG.c.created_at >= since)
    return (
        select(LOG.c.arm, LOG.c.unit_id, LOG.c.created_at, rated.c.value)
        .select_from(rated.join(LOG, LOG.c.request_id == rated.c.request_id))
        .where(*where)
        .subquery("latest")
    )


def _thumb_units(route: str, experiment_id: str | None, since: datetime | None) -> Select[Any]:
    """Per (arm, unit): x = thumbs up, y = rated requests (latest rating per request)."""
    latest = _latest_ratings(route, experiment_id, since)
    return select(
        latest.c.arm,
        func.sum(case((latest.c.value == "up", 1), else_=0)).label("x"),
        func.count().label("y"),
    ).group_by(latest.c.arm, latest.c.unit_id)


def _unit_sums(conn: Connection, per_unit: Select[Any]) -> dict[str, tuple[int, RatioSums]]:
    """Sum a per-(arm, unit) query per arm: (units, RatioSums over units with y > 0)."""
    u = per_unit.subquery("per_unit")
    stmt = select(
        u.c.arm,
        func.count().label("units"),
        func.sum(u.c.x).label("sum_x"),
        func.sum(u.c.y).label("sum_y"),
        func.sum(u.c.x * u.c.x).label("sum_x2"),
        func.sum(u.c.y * u.c.y).label("sum_y2"),
        func.sum(u.c.x * u.c.y).label("sum_xy"),
    ).group_by(u.c.arm)
    out = {}
    for r in conn.execute(stmt):
        sums = RatioSums(
            units=int(r.units),
            sum_x=float(r.sum_x),
            sum_y=float(r.sum_y),
            sum_x2=float(r.sum_x2),
            sum_y2=float(r.sum_y2),
            sum_xy=float(r.sum_xy),
        )
        out[r.arm] = (int(r.units), sums)
    return out


def _sample(
    conn: Connection,
    route: str,
    experiment_id: str | None,
    since: datetime | None,
    arm: str,
    column: str,
    limit: int,
) -> tuple[float, ...]:
    """Up to ``limit`` values of ``column`` from the arm's successful requests.

    Ordering by request id and keeping the first ``limit`` is a simple random sample,
    deterministic from one evaluation to the next: ids are ``chatcmpl-<uuid4>``, so
    their order is a random permutation that knows nothing about latency.
    """
    if limit <= 0:
        return ()
    value = LOG.c[column]
    where = [*_counted(route, experiment_id, since), LOG.c.arm == arm, LOG.c.status == OK]
    if column == "ttft_ms":
        where += [LOG.c.stream.is_(True), value.is_not(None)]
    stmt = select(value).where(*where).order_by(LOG.c.request_id).limit(limit)
    return tuple(float(v) for v in conn.scalars(stmt))


def _votes(
    conn: Connection, route: str, experiment_id: str | None, since: datetime | None
) -> VoteCounts:
    """Votes between the two arms of the experiment; 'a'/'b' resolve to the row's arm."""
    a, b = LOG.alias("a"), LOG.alias("b")
    outcome = case(
        (VOTES.c.winner == "a", a.c.arm),
        (VOTES.c.winner == "b", b.c.arm),
        else_=VOTES.c.winner,
    ).label("outcome")
    where = [
        VOTES.c.route == route,
        _experiment(a, experiment_id),
        _experiment(b, experiment_id),
        a.c.arm.in_(ARMS),
        b.c.arm.in_(ARMS),
        a.c.arm != b.c.arm,
    ]
    if since is not None:
        where.append(VOTES.c.created_at >= since)
    stmt = (
        select(outcome, func.count().label("n"))
        .select_from(
            VOTES.join(a, a.c.request_id == VOTES.c.request_id_a).join(
                b, b.c.request_id == VOTES.c.request_id_b
            )
        )
        .where(and_(*where))
        .group_by(outcome)
    )
    n = {r.outcome: int(r.n) for r in conn.execute(stmt)}
    return VoteCounts(
        challenger_wins=n.get("challenger", 0),
        champion_wins=n.get("champion", 0),
        ties=n.get("tie", 0),
        both_bad=n.get("both_bad", 0),
    )


def _bucket_start(conn: Connection, column: Any, step: int) -> ColumnElement[Any]:
    """Unix seconds of the start of ``column``'s time bucket: the one dialect difference.

    SQLite keeps timestamps as UTC text; ``extract(epoch)`` is ``strftime('%s')`` there,
    a whole number, so integer division floors. Postgres' ``extract`` gives a fraction.
    """
    epoch = extract("epoch", column)
    if conn.dialect.name == "postgresql":
        return func.floor(epoch / step) * step
    return cast(epoch, Integer) // literal(step) * literal(step)
