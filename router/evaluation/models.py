"""Tables of experiments and of the decisions taken on them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index
from sqlmodel import Field, SQLModel

#: Experiment ``status`` values. Live: ``running``, ``paused`` and ``halted`` (stopped by a
#: sample ratio mismatch or broken data, resumable by an admin); the rest are final.
RUNNING, PAUSED, HALTED, PROMOTED, ROLLED_BACK, INCONCLUSIVE = (
    "running",
    "paused",
    "halted",
    "promoted",
    "rolled_back",
    "inconclusive",
)
LIVE = (RUNNING, PAUSED, HALTED)
#: The acted decision that leaves an experiment in each final status.
ENDED_BY = {PROMOTED: "promote", ROLLED_BACK: "rollback", INCONCLUSIVE: "inconclusive"}


class Experiment(SQLModel, table=True):
    """A canary of one challenger version against the champion on one route."""

    __tablename__ = "experiments"
    __table_args__ = (Index("ix_experiments_route_status", "route", "status"),)

    id: str = Field(primary_key=True, max_length=64)
    route: str = Field(max_length=200)
    status: str = Field(max_length=16)
    stage_index: int = 0
    stages: list[float] = Field(sa_column=Column(JSON, nullable=False))
    policy: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    champion_version: str = Field(max_length=64)
    challenger_version: str = Field(max_length=64)
    #: When the current stage's weights took effect: SRM and per-stage minimums count from it.
    stage_started_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: Every traffic change (start, advance, pause, resume, halt) appends a phase
    #: ``{"stage", "status", "challenger_percent", "started_at"}`` (ISO-8601 UTC); a phase
    #: lasts until the next starts. Only rows of running phases count (migration 0008).
    phases: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: The MLflow run holding the report, once the ended experiment's report is logged.
    report_run_id: str | None = Field(default=None, max_length=64)


class Decision(SQLModel, table=True):
    """One evaluation: what the policy said, why, on which analysis, and whether it acted."""

    __tablename__ = "decisions"

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: str = Field(foreign_key="experiments.id", index=True, max_length=64)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    action: str = Field(max_length=16)
    reasons: list[str] = Field(sa_column=Column(JSON, nullable=False))
    analysis: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    stage_index: int = 0
    acted: bool = False
    actor: str = Field(max_length=64)
