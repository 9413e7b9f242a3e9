"""Experiments and decisions in the database. Keyword-only, engine first."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, select, text, update

from router.evaluation.models import LIVE, Decision, Experiment
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
) -> dict[str, Any] | None:
    """A new running experiment, or None when one is already live on the route."""
    now = utcnow()
    row = {
        "id": f"exp-{uuid.uuid4().hex[:12]}",
        "route": route,
        "status": "running",
        "stage_index": 0,
        "stages": stages,
        "policy": policy,
        "champion_version": champion_version,
        "challenger_version": challenger_version,
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
    return row


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
