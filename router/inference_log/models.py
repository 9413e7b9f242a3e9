"""Tables of the inference log. Alembic migrations in ``router/migrations`` mirror these."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, Text, UniqueConstraint
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
    assignment_reason: str | None = Field(default=None, max_length=16)
    bucket: int | None = None
    stream: bool = False
    prompt_messages: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    prompt_chars: int = 0
    prompt_sha256: str | None = Field(default=None, max_length=64)
    response_text: str | None = Field(default=None, sa_column=Column(Text))
    response_chars: int = 0
    response_sha256: str | None = Field(default=None, max_length=64)
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


class Feedback(SQLModel, table=True):
    """A thumbs up or down on one logged request; one per (request, unit), re-rating updates."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("request_id", "unit_id", name="uq_feedback_request_unit"),)

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(foreign_key="inference_log.request_id", index=True, max_length=64)
    unit_id: str = Field(max_length=200)
    value: str = Field(max_length=8)
    comment: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
