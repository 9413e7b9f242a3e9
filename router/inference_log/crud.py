"""Reads of the inference log; writes of feedback, votes and arena battles.

Keyword-only, engine first.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, exists, select
from sqlalchemy.exc import IntegrityError

from router.errors import Conflict
from router.inference_log.db import insert
from router.inference_log.models import ArenaBattle, Feedback, InferenceRecord, Vote, utcnow

FEEDBACK = Feedback.__table__  # type: ignore[attr-defined]
LOG = InferenceRecord.__table__  # type: ignore[attr-defined]
VOTES = Vote.__table__  # type: ignore[attr-defined]
BATTLES = ArenaBattle.__table__  # type: ignore[attr-defined]
#: What a battle shows of each answer's row (and reveals once voted on).
_SIDE_COLUMNS = (
    "request_id",
    "arm",
    "model_name",
    "model_version",
    "response_text",
    "finish_reason",
    "status",
    "error_type",
    "prompt_messages",
)


def get_request(engine: Engine, *, request_id: str) -> dict[str, Any] | None:
    """The logged row with its feedback, or None."""
    with engine.connect() as conn:
        row = conn.execute(select(LOG).where(LOG.c.request_id == request_id)).mappings().first()
        if row is None:
            return None
        feedback = conn.execute(
            select(FEEDBACK).where(FEEDBACK.c.request_id == request_id).order_by(FEEDBACK.c.id)
        ).mappings()
        return {**row, "feedback": [dict(f) for f in feedback]}


def upsert_feedback(
    engine: Engine, *, request_id: str, unit_id: str, value: str, comment: str | None
) -> dict[str, Any]:
    """Store a thumb; the same unit rating the same request again replaces its rating."""
    now = utcnow()
    values = insert(engine, FEEDBACK).values(
        request_id=request_id,
        unit_id=unit_id,
        value=value,
        comment=comment,
        created_at=now,
        updated_at=now,
    )
    stmt = values.on_conflict_do_update(
        index_elements=["request_id", "unit_id"],
        set_={"value": value, "comment": comment, "updated_at": now},
    ).returning(*FEEDBACK.c)
    with engine.begin() as conn:
        return dict(conn.execute(stmt).mappings().one())


def get_requests_brief(engine: Engine, *, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """``request_id -> {request_id, route, experiment_id, arm, unit_id}`` for the ids logged."""
    columns = (LOG.c.request_id, LOG.c.route, LOG.c.experiment_id, LOG.c.arm, LOG.c.unit_id)
    with engine.connect() as conn:
        rows = conn.execute(select(*columns).where(LOG.c.request_id.in_(request_ids))).mappings()
        return {row["request_id"]: dict(row) for row in rows}


def insert_vote(
    engine: Engine,
    *,
    route: str,
    request_id_a: str,
    request_id_b: str,
    winner: str,
    unit_id: str | None,
    battle_id: str | None = None,
) -> dict[str, Any]:
    """Store one pairwise vote; a second vote for the same ``battle_id`` is a ``Conflict``."""
    stmt = (
        VOTES.insert()
        .values(
            created_at=utcnow(),
            route=route,
            request_id_a=request_id_a,
            request_id_b=request_id_b,
            winner=winner,
            unit_id=unit_id,
            battle_id=battle_id,
        )
        .returning(*VOTES.c)
    )
    try:
        with engine.begin() as conn:
            return dict(conn.execute(stmt).mappings().one())
    except IntegrityError as exc:
        if battle_id is None:
            raise
        raise Conflict(f"Battle {battle_id!r} already has a vote.", code="vote_exists") from exc


def insert_battle(
    engine: Engine,
    *,
    battle_id: str,
    route: str,
    unit_id: str,
    request_id_a: str,
    request_id_b: str,
    key_id: str | None = None,
) -> dict[str, Any]:
    """Store an arena battle: the two answers' request ids in side order."""
    stmt = (
        BATTLES.insert()
        .values(
            battle_id=battle_id,
            created_at=utcnow(),
            route=route,
            unit_id=unit_id,
            request_id_a=request_id_a,
            request_id_b=request_id_b,
            key_id=key_id,
        )
        .returning(*BATTLES.c)
    )
    with engine.begin() as conn:
        return dict(conn.execute(stmt).mappings().one())


def advance_battle(
    engine: Engine, *, battle_id: str, turn: int, request_id_a: str, request_id_b: str
) -> dict[str, Any] | None:
    """Point the battle at its next turn's answers; None if it is no longer at ``turn``
    or has been voted on meanwhile (another follow-up or a vote came first)."""
    voted = exists().where(VOTES.c.battle_id == battle_id)
    stmt = (
        BATTLES.update()
        .where(BATTLES.c.battle_id == battle_id, BATTLES.c.turns == turn, ~voted)
        .values(turns=turn + 1, request_id_a=request_id_a, request_id_b=request_id_b)
        .returning(*BATTLES.c)
    )
    with engine.begin() as conn:
        row = conn.execute(stmt).mappings().first()
    return dict(row) if row is not None else None


def get_battle(engine: Engine, *, battle_id: str) -> dict[str, Any] | None:
    """The battle, its vote (``winner`` None until voted) and each side's logged row.

    ``a``/``b`` are dicts of the row's columns in ``_SIDE_COLUMNS``, or None while the row
    is not logged yet (still being answered, or in the writer's buffer).
    """
    a, b = LOG.alias("a"), LOG.alias("b")
    sides = [
        t.c[name].label(f"{side}_{name}")
        for side, t in (("a", a), ("b", b))
        for name in _SIDE_COLUMNS
    ]
    stmt = (
        select(BATTLES, *sides, VOTES.c.winner, VOTES.c.created_at.label("voted_at"))
        .select_from(
            BATTLES.outerjoin(a, a.c.request_id == BATTLES.c.request_id_a)
            .outerjoin(b, b.c.request_id == BATTLES.c.request_id_b)
            .outerjoin(VOTES, VOTES.c.battle_id == BATTLES.c.battle_id)
        )
        .where(BATTLES.c.battle_id == battle_id)
    )
    with engine.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    if row is None:
        return None
    battle = {c.name: row[c.name] for c in BATTLES.c}
    battle.update(winner=row["winner"], voted_at=row["voted_at"])
    for side in ("a", "b"):
        logged = row[f"{side}_request_id"] is not None
        battle[side] = {n: row[f"{side}_{n}"] for n in _SIDE_COLUMNS} if logged else None
    return battle
