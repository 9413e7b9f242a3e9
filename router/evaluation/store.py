"""Experiments and decisions in the database. Keyword-only, engine first."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, text, update

from router.evaluation.models import LIVE, RUNNING, Decision, Experiment
from router.inference_log.models import utcnow

EXPERIMENTS = Experiment.__table__  # type: ignore[attr-defined]
DECISIONS = Decision.__table__  # type: ignore[attr-defined]


def create_experiment(
    engine: Engine,
    *,
    route: str,
    stages: list[float],
    policy: dict[str, Any],
    champion_version: str,
    challenger_version: str,
    actor: str = "api",
    reasons: list[str] | None = None,
) -> dict[str, Any] | None:
    """A new running experiment in its first phase, or None when one is live on the route.

    The start is recorded as a ``start`` decision (who, and why when forced).
    """
    now = utcnow()
    row = {
        "id": f"exp-{uuid.uuid4().hex[:12]}",
        "route": route,
        "status": RUNNING,
        "stage_index": 0,
        "stages": stages,
        "policy": policy,
        "champion_version": champion_version,
        "challenger_version": challenger_version,
        "phases": [_phase(0, RUNNING, stages[0], now)],
        "stage_started_at": now,
        "created_at": now,
        "updated_at": now,
        "report_run_id": None,
    }
    with engine.begin() as conn:
        _lock_route(conn, route)
        live = conn.execute(
            select(EXPERIMENTS.c.id).where(
                EXPERIMENTS.c.route == route, EXPERIMENTS.c.status.in_(LIVE)
            )
        ).first()
        if live is not None:
            return None
        conn.execute(EXPERIMENTS.insert().values(**row))
        record_decision(
            conn,
            experiment_id=str(row["id"]),
            action="start",
            reasons=reasons or [f"started by {actor}"],
            analysis={},
            stage_index=0,
            acted=True,
            actor=actor,
        )
    return row


def find_experiments(
    engine: Engine, *, route: str, challenger_version: str, statuses: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Experiments of ``challenger_version`` on ``route`` in ``statuses``, newest first."""
    query = (
        select(EXPERIMENTS)
        .where(
            EXPERIMENTS.c.route == route,
            EXPERIMENTS.c.challenger_version == challenger_version,
            EXPERIMENTS.c.status.in_(statuses),
        )
        .order_by(EXPERIMENTS.c.created_at.desc())
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def challenger_percent(exp: dict[str, Any]) -> float:
    """The challenger's share of split traffic now: its stage's, or 0 unless running."""
    return float(exp["stages"][exp["stage_index"]]) if exp["status"] == RUNNING else 0.0


def new_phase(conn: Connection, exp: dict[str, Any], *, stage_index: int, status: str) -> None:
    """Change the experiment's stage or status, starting a new phase of constant weights.

    Rows logged from now on belong to the new phase; only running phases count.
    """
    now = utcnow()
    phase = _phase(stage_index, status, float(exp["stages"][stage_index]), now)
    values: dict[str, Any] = {
        "status": status,
        "stage_index": stage_index,
        "phases": [*exp["phases"], phase],
    }
    if stage_index != exp["stage_index"]:
        values["stage_started_at"] = now
    update_experiment(conn, experiment_id=exp["id"], **values)


def _phase(stage_index: int, status: str, percent: float, start: datetime) -> dict[str, Any]:
    return {
        "stage": stage_index,
        "status": status,
        "challenger_percent": percent,
        "started_at": aware(start).isoformat(),
    }


def aware(moment: datetime | str) -> datetime:
    """SQLite hands back naive datetimes for UTC columns, Postgres aware ones, and the
    API's JSON ISO-8601 strings: an aware datetime in every case."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def get_experiment(engine: Engine, *, experiment_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(EXPERIMENTS).where(EXPERIMENTS.c.id == experiment_id)).first()
    return dict(row._mapping) if row else None


def list_experiments(engine: Engine, *, live_only: bool = False) -> list[dict[str, Any]]:
    query = select(EXPERIMENTS).order_by(EXPERIMENTS.c.created_at.desc())
    if live_only:
        query = query.where(EXPERIMENTS.c.status.in_(LIVE))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def list_decisions(engine: Engine, *, experiment_id: str) -> list[dict[str, Any]]:
    query = (
        select(DECISIONS).where(DECISIONS.c.experiment_id == experiment_id).order_by(DECISIONS.c.id)
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


@contextmanager
def transition(
    engine: Engine, *, experiment_id: str
) -> Iterator[tuple[Connection, dict[str, Any] | None]]:
    """A transaction holding the experiment's lock, with its current row.

    Postgres: a transaction-scoped advisory lock, so of several router processes only one
    evaluates and acts at a time, and each re-reads the state the last one left. SQLite
    serialises writers itself (one file, one writer).
    """
    with engine.begin() as conn:
        _lock_route(conn, experiment_id)
        row = conn.execute(select(EXPERIMENTS).where(EXPERIMENTS.c.id == experiment_id)).first()
        yield conn, dict(row._mapping) if row else None


def latest_analysis(conn: Connection | Engine, *, experiment_id: str) -> dict[str, Any] | None:
    """The analysis of the experiment's last evaluation that carries the sequential state.

    Decisions without one (pause, resume) are skipped, so the always-valid p-values keep
    their running minimum across them.
    """
    query = (
        select(DECISIONS.c.analysis)
        .where(DECISIONS.c.experiment_id == experiment_id)
        .order_by(DECISIONS.c.id.desc())
        # Newest first, a few at a time: the one wanted is nearly always the first.
        .execution_options(stream_results=True, yield_per=4)
    )
    with _connected(conn) as c, c.execute(query) as rows:
        for (analysis,) in rows:
            if analysis and analysis.get("sequential_state") is not None:
                return dict(analysis)
    return None


def set_report_run(engine: Engine, *, experiment_id: str, run_id: str) -> None:
    """Record the MLflow run of the experiment's report (the first one recorded stays)."""
    with engine.begin() as conn:
        conn.execute(
            update(EXPERIMENTS)
            .where(EXPERIMENTS.c.id == experiment_id, EXPERIMENTS.c.report_run_id.is_(None))
            .values(report_run_id=run_id)
        )


def unreported(engine: Engine) -> list[str]:
    """Ids of ended experiments whose report is not in MLflow yet, oldest first."""
    query = (
        select(EXPERIMENTS.c.id)
        .where(EXPERIMENTS.c.status.not_in(LIVE), EXPERIMENTS.c.report_run_id.is_(None))
        .order_by(EXPERIMENTS.c.updated_at)
    )
    with engine.connect() as conn:
        return list(conn.scalars(query))


def update_experiment(conn: Connection, *, experiment_id: str, **values: Any) -> None:
    conn.execute(
        update(EXPERIMENTS)
        .where(EXPERIMENTS.c.id == experiment_id)
        .values(**values, updated_at=utcnow())
    )


def record_decision(
    conn: Connection,
    *,
    experiment_id: str,
    action: str,
    reasons: list[str],
    analysis: dict[str, Any],
    stage_index: int,
    acted: bool,
    actor: str,
) -> dict[str, Any]:
    row = {
        "experiment_id": experiment_id,
        "created_at": utcnow(),
        "action": action,
        "reasons": reasons,
        "analysis": analysis,
        "stage_index": stage_index,
        "acted": acted,
        "actor": actor,
    }
    result = conn.execute(DECISIONS.insert().values(**row).returning(DECISIONS.c.id))
    return {"id": result.scalar_one(), **row}


@contextmanager
def try_lock(engine: Engine, *, key: str) -> Iterator[bool]:
    """Whether this process holds ``key`` for the block (no waiting: False if another has it).

    Postgres: a session-level advisory lock on a connection held for the block, released
    explicitly (a rollback does not release it). SQLite: always True; one file has one
    router process.
    """
    if engine.dialect.name != "postgresql":
        yield True
        return
    params = {"k": f"canary:{key}"}
    with engine.connect() as conn:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(hashtext(:k))"), params).scalar())
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), params)
                conn.commit()


@contextmanager
def _connected(bind: Connection | Engine) -> Iterator[Connection]:
    """``bind`` itself when it is a connection (its transaction), else a new connection."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn


def _lock_route(conn: Connection, key: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"canary:{key}"})
