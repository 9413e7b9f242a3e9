"""Reads of the inference log; writes of feedback, votes and arena battles.

Keyword-only, engine first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, exists, func, select
from sqlalchemy.exc import IntegrityError

from router.errors import Conflict, Forbidden
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
    "tool_calls",
    "finish_reason",
    "status",
    "error_type",
    "prompt_messages",
)


#: Prefix of the fresh unit id a request without a unit gets (``router.assignment``).
ANON_PREFIX = "anon-"


def carried_unit(row: Mapping[str, Any]) -> bool:
    """Whether a logged request named its unit (``user``, ``safety_identifier``, header
    ``X-Canary-Unit`` or its API key) rather than getting a fresh ``anon-`` id.

    Only a request that carried a unit binds its feedback and votes to that unit; rows
    logged before ``unit_source`` existed tell it by their id.
    """
    if row.get("unit_source") is not None:
        return True
    unit_id = row.get("unit_id")
    return bool(unit_id) and not str(unit_id).startswith(ANON_PREFIX)


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
    engine: Engine,
    *,
    request_id: str,
    unit_id: str,
    value: str,
    comment: str | None,
    key_id: str | None = None,
) -> dict[str, Any]:
    """Store a thumb; the same unit rating the same request again replaces its rating
    (``key_id``: the API key that rated last)."""
    now = utcnow()
    values = insert(engine, FEEDBACK).values(
        request_id=request_id,
        unit_id=unit_id,
        value=value,
        comment=comment,
        key_id=key_id,
        created_at=now,
        updated_at=now,
    )
    stmt = values.on_conflict_do_update(
        index_elements=["request_id", "unit_id"],
        set_={"value": value, "comment": comment, "key_id": key_id, "updated_at": now},
    ).returning(*FEEDBACK.c)
    with engine.begin() as conn:
        return dict(conn.execute(stmt).mappings().one())


def get_requests_brief(engine: Engine, *, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """``request_id -> {request_id, route, experiment_id, arm, unit_id, unit_source,
    assignment_reason, key_id}`` for the ids logged."""
    columns = (
        LOG.c.request_id,
        LOG.c.route,
        LOG.c.experiment_id,
        LOG.c.arm,
        LOG.c.unit_id,
        LOG.c.unit_source,
        LOG.c.assignment_reason,
        LOG.c.key_id,
    )
    with engine.connect() as conn:
        rows = conn.execute(select(*columns).where(LOG.c.request_id.in_(request_ids))).mappings()
        return {row["request_id"]: dict(row) for row in rows}


def upsert_vote(
    engine: Engine,
    *,
    route: str,
    request_id_a: str,
    request_id_b: str,
    winner: str,
    unit_id: str,
    key_id: str | None,
    cap: int,
) -> dict[str, Any]:
    """Store one voter's pairwise vote (not an arena battle's) and return it as stored.

    The pair is stored with its request ids in ascending order (``winner`` flipped to
    match), so (voter, pair) is one row whichever order the client sent: a re-vote
    replaces the winner. A vote on a new pair beyond ``cap`` is refused (``vote_cap``).
    """
    if request_id_a > request_id_b:
        request_id_a, request_id_b = request_id_b, request_id_a
        winner = _FLIPPED.get(winner, winner)
    vote = _vote(route, request_id_a, request_id_b, winner, unit_id, key_id)
    stmt = (
        insert(engine, VOTES)
        .values(**vote)
        .on_conflict_do_update(
            index_elements=["unit_id", "request_id_a", "request_id_b"],
            set_={"winner": winner, "key_id": key_id},
        )
        .returning(*VOTES.c)
    )
    return _cast(engine, stmt, vote, cap=cap)


def insert_vote(
    engine: Engine,
    *,
    route: str,
    request_id_a: str,
    request_id_b: str,
    winner: str,
    unit_id: str | None,
    battle_id: str | None = None,
    key_id: str | None = None,
    cap: int | None = None,
) -> dict[str, Any]:
    """Store one pairwise vote as given (an arena battle's: ``winner`` names its side); a
    second vote for the same ``battle_id`` is a ``Conflict``; with ``cap``, a voter over
    it is refused (``vote_cap``)."""
    vote = {
        **_vote(route, request_id_a, request_id_b, winner, unit_id, key_id),
        "battle_id": battle_id,
    }
    try:
        return _cast(engine, VOTES.insert().values(**vote).returning(*VOTES.c), vote, cap=cap)
    except IntegrityError as exc:
        if battle_id is None:
            raise
        raise Conflict(f"Battle {battle_id!r} already has a vote.", code="vote_exists") from exc


_FLIPPED = {"a": "b", "b": "a"}


def _vote(
    route: str, a: str, b: str, winner: str, unit_id: str | None, key_id: str | None
) -> dict[str, Any]:
    return {
        "created_at": utcnow(),
        "route": route,
        "request_id_a": a,
        "request_id_b": b,
        "winner": winner,
        "unit_id": unit_id,
        "key_id": key_id,
    }


def _cast(engine: Engine, stmt: Any, vote: dict[str, Any], *, cap: int | None) -> dict[str, Any]:
    """Run a vote's ``INSERT ... RETURNING`` in one transaction with the check of its
    voter's cap (none without a voter or a cap)."""
    with engine.begin() as conn:
        if cap is not None and vote["unit_id"] is not None:
            vote_cap(
                conn,
                route=vote["route"],
                unit_id=vote["unit_id"],
                request_id_a=vote["request_id_a"],
                request_id_b=vote["request_id_b"],
                cap=cap,
            )
        return dict(conn.execute(stmt).mappings().one())


def vote_cap(
    conn: Connection,
    *,
    route: str,
    unit_id: str,
    request_id_a: str,
    request_id_b: str,
    cap: int,
) -> None:
    """403 ``vote_cap_reached`` when ``unit_id`` already has ``cap`` votes on ``route``
    in the experiment of the pair (that of ``request_id_a``'s row; none: outside any).

    A re-vote on a pair this voter already voted on (ids in the order stored) replaces
    that vote and is always allowed. Arena votes count like any other. Two votes at the
    same moment may both pass: the cap bounds stuffing, it is not a ledger.
    """
    already = conn.execute(
        select(VOTES.c.id).where(
            VOTES.c.unit_id == unit_id,
            VOTES.c.request_id_a == request_id_a,
            VOTES.c.request_id_b == request_id_b,
        )
    ).first()
    if already is not None:
        return
    experiment_id = conn.execute(
        select(LOG.c.experiment_id).where(LOG.c.request_id == request_id_a)
    ).scalar_one_or_none()
    in_scope = (
        LOG.c.experiment_id.is_(None)
        if experiment_id is None
        else LOG.c.experiment_id == experiment_id
    )
    cast = conn.execute(
        select(func.count())
        .select_from(VOTES.join(LOG, LOG.c.request_id == VOTES.c.request_id_a))
        .where(VOTES.c.unit_id == unit_id, VOTES.c.route == route, in_scope)
    ).scalar_one()
    if cast >= cap:
        scope = f"experiment {experiment_id!r}" if experiment_id else "outside experiments"
        raise Forbidden(
            f"This voter has cast {cast} votes on route {route!r} ({scope}), the most one "
            f"voter may (max_votes_per_voter = {cap}); a vote on a pair already voted on "
            "can still change.",
            code="vote_cap_reached",
        )


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
