"""Tables of the inference log. Alembic migrations in ``router/migrations`` mirror these."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class InferenceRecord(SQLModel, table=True):
    """One request, whatever happened to it.

    ``arm``/``model_version`` are the assigned arm (failures count against it);
    ``served_arm``/``served_model_version`` are what actually answered, which differ
    only on a fallback.
    """

    __tablename__ = "inference_log"
    __table_args__ = (
        Index("ix_inference_log_route_created", "route", "created_at"),
        Index("ix_inference_log_experiment_arm", "experiment_id", "arm"),
    )

    request_id: str = Field(primary_key=True, max_length=64)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    route: str = Field(max_length=200)
    experiment_id: str | None = Field(default=None, max_length=64)
    arm: str | None = Field(default=None, max_length=16)
    model_name: str | None = Field(default=None, max_length=200)
    model_version: str | None = Field(default=None, max_length=64)
    served_arm: str | None = Field(default=None, max_length=16)
    served_model_version: str | None = Field(default=None, max_length=64)
    shadow_of: str | None = Field(default=None, max_length=64)
    unit_id: str | None = Field(default=None, max_length=200)
    #: Where the unit came from: user, safety_identifier, header, key; None: a fresh id.
    unit_source: str | None = Field(default=None, max_length=24)
    assignment_reason: str | None = Field(default=None, max_length=16)
    bucket: int | None = None
    stream: bool = False
    prompt_messages: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    prompt_chars: int = 0
    prompt_sha256: str | None = Field(default=None, max_length=64)
    response_text: str | None = Field(default=None, sa_column=Column(Text))
    response_chars: int = 0
    response_sha256: str | None = Field(default=None, max_length=64)
    #: The answer's tool calls (OpenAI's ``message.tool_calls``), when it made any.
    tool_calls: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    finish_reason: str | None = Field(default=None, max_length=32)
    status: str = Field(max_length=24)
    http_status: int = 200
    error_type: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, sa_column=Column(Text))
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    queue_wait_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    key_id: str | None = Field(default=None, max_length=32)  # the client's API key


class Feedback(SQLModel, table=True):
    """A thumbs up or down on one logged request; one per (request, unit), re-rating updates."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("request_id", "unit_id", name="uq_feedback_request_unit"),)

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(foreign_key="inference_log.request_id", index=True, max_length=64)
    unit_id: str = Field(max_length=200)
    value: str = Field(max_length=8)
    comment: str | None = Field(default=None, sa_column=Column(Text))
    key_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


#: ``Vote.winner`` values: the answer of ``request_id_a``, of ``request_id_b``, or neither.
WINNERS = ("a", "b", "tie", "both_bad")


def winner_arm(winner: str, arm_a: str, arm_b: str) -> str:
    """The arm a vote favours (``champion``/``challenger``), else ``tie``/``both_bad``."""
    return {"a": arm_a, "b": arm_b}.get(winner, winner)


class Vote(SQLModel, table=True):
    """A blind side-by-side vote between two logged answers of one route.

    Which arm won is not stored: the analysis joins ``request_id_a``/``request_id_b`` to
    their rows' ``arm``, so a vote can never disagree with the log. ``unit_id`` is the
    voter: one vote per voter per pair (``/v1/votes`` stores a pair in ascending id
    order), one per battle in the arena.
    """

    __tablename__ = "votes"
    __table_args__ = (
        UniqueConstraint("battle_id", name="uq_votes_battle_id"),
        Index("uq_votes_voter_pair", "unit_id", "request_id_a", "request_id_b", unique=True),
        CheckConstraint("winner IN ('a', 'b', 'tie', 'both_bad')", name="ck_votes_winner"),
        Index("ix_votes_route_created", "route", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    route: str = Field(max_length=200)
    request_id_a: str = Field(foreign_key="inference_log.request_id", max_length=64)
    request_id_b: str = Field(foreign_key="inference_log.request_id", max_length=64)
    winner: str = Field(max_length=8)
    unit_id: str | None = Field(default=None, max_length=200)
    battle_id: str | None = Field(default=None, max_length=64)
    key_id: str | None = Field(default=None, max_length=32)


class ArenaBattle(SQLModel, table=True):
    """A blind side-by-side battle: one prompt answered by both arms, shown as ``a`` and ``b``.

    ``request_id_a``/``request_id_b`` are the two answers' inference rows in side order.
    There is no foreign key: a battle is stored before its rows, which arrive through the
    asynchronous writer. The vote, once cast, is the ``votes`` row with this ``battle_id``.
    """

    __tablename__ = "arena_battles"
    __table_args__ = (Index("ix_arena_battles_route_created", "route", "created_at"),)

    battle_id: str = Field(primary_key=True, max_length=64)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    route: str = Field(max_length=200)
    unit_id: str = Field(max_length=200)
    request_id_a: str = Field(max_length=64)
    request_id_b: str = Field(max_length=64)
    #: Prompts so far; ``request_id_a``/``request_id_b`` are the latest turn's answers.
    turns: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    key_id: str | None = Field(default=None, max_length=32)  # whose battle it is


class UnitTotals(SQLModel, table=True):
    """Running totals of one unit's counted requests on one arm of a route's experiment.

    Kept by a database trigger on every log insert (migration 0006 holds it and says which
    rows count); nothing else writes here. ``experiment_id`` is '' outside experiments.
    ``last_split_at`` is the unit's latest request the traffic split assigned.
    """

    __tablename__ = "unit_totals"

    route: str = Field(primary_key=True, max_length=200)
    experiment_id: str = Field(primary_key=True, max_length=64)
    arm: str = Field(primary_key=True, max_length=16)
    unit_id: str = Field(primary_key=True, max_length=200)
    requests: int
    failures: int
    split_requests: int
    last_split_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


# Indexes for the evaluator (migration 0002 creates them), each covering one of its
# queries, so none reads the wide log rows with their prompts and answers:
# - the per-unit GROUP BY, read in (arm, unit) order: no sort;
# - the latency/TTFT samples: the first N request ids of the arm's successful requests,
#   read off the index in order;
# - the latest rating per request: a window over ratings already in that order;
# - on Postgres, rated and voted requests looked up by id without visiting the heap
#   (SQLite always takes its primary-key index for an id lookup, so it gets none).
_log = InferenceRecord.__table__  # type: ignore[attr-defined]
_feedback = Feedback.__table__  # type: ignore[attr-defined]
Index(
    "ix_inference_log_units",
    *(_log.c[n] for n in ("route", "experiment_id", "arm", "unit_id", "status", "created_at")),
    _log.c.assignment_reason,  # migration 0005: units of the traffic split, index-only
)
Index(
    "ix_inference_log_samples",
    *(_log.c[n] for n in ("route", "experiment_id", "arm", "status", "request_id")),
    *(_log.c[n] for n in ("latency_ms", "stream", "ttft_ms", "created_at")),
)
Index(
    "ix_inference_log_lookup",
    _log.c.request_id,
    postgresql_include=["route", "experiment_id", "arm", "status", "unit_id", "created_at"],
).ddl_if(dialect="postgresql")
Index(
    "ix_feedback_latest",
    _feedback.c.request_id,
    _feedback.c.updated_at.desc(),
    _feedback.c.id.desc(),
    _feedback.c.value,
)
