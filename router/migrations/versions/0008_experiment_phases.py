"""experiment phases

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 09:00:00

``experiments.phases``: every traffic change (start, advance, pause, resume, halt) appends
a phase ``{"stage", "status", "challenger_percent", "started_at"}`` (``started_at`` in
ISO-8601 UTC); a phase lasts until the next one starts. The statistics count only rows of
running phases (router.evaluation.phases.aggregate_look).

Existing experiments get the phases their decisions tell: a running phase of stage 0 at
``created_at``, then one phase per acted ``advance`` (the stage after the decision's,
capped at the last; the status stays), ``pause``, ``resume`` and ``halt``, at the
decision's time, as ``router.evaluation.reporting.stages_of`` reads the stages. The
current stage starts at ``stage_started_at`` (set in the advance's own transaction, so a
little before its decision). If the replay does not end in the experiment's stage or live
status (a decision lost), a last phase at ``stage_started_at`` or ``updated_at`` says
where it is. A promoted or rolled-back experiment's last phase stays as it was while it
ran (its traffic carries no experiment id after the end).

SQLite cannot make a column NOT NULL in place and Alembic's batch copy would drop
``experiments`` under the ``decisions`` foreign key (the connection enforces foreign keys
and the migration runs in one transaction, where the pragma cannot be turned off): on
SQLite the column comes with a default of ``[]`` that the backfill overwrites, so it is
NOT NULL from the start.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_EXPERIMENTS = sa.table(
    "experiments",
    sa.column("id", sa.String),
    sa.column("status", sa.String),
    sa.column("stage_index", sa.Integer),
    sa.column("stages", sa.JSON),
    sa.column("stage_started_at", sa.DateTime(timezone=True)),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
    sa.column("phases", sa.JSON),
)
_DECISIONS = sa.table(
    "decisions",
    sa.column("id", sa.Integer),
    sa.column("experiment_id", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("action", sa.String),
    sa.column("stage_index", sa.Integer),
    sa.column("acted", sa.Boolean),
)
#: Decisions that changed traffic: an advance (the status stays), and these, with the
#: phase status each leaves.
_STATUS = {"pause": "paused", "resume": "running", "halt": "halted"}
_CHANGES = ("advance", *_STATUS)
#: Experiment statuses that say what the last phase is; the rest (promoted, rolled back)
#: ended while the last phase ran.
_LIVE = ("running", "paused", "halted")


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _phases(exp: Any, decisions: Sequence[Any]) -> list[dict[str, Any]]:
    stages = list(exp.stages)

    def phase(stage: int, status: str, at: datetime) -> dict[str, Any]:
        return {
            "stage": stage,
            "status": status,
            "challenger_percent": float(stages[stage]),
            "started_at": _utc(at).isoformat(),
        }

    phases = [phase(0, "running", exp.created_at)]
    stage_started = 0  # the phase where the latest stage began
    for d in decisions:
        last = phases[-1]
        if d.action == "advance":
            stage = min(int(d.stage_index) + 1, len(stages) - 1)
            if stage == last["stage"]:
                continue
            phases.append(phase(stage, last["status"], d.created_at))
            stage_started = len(phases) - 1
        elif _STATUS[d.action] != last["status"]:
            phases.append(phase(last["stage"], _STATUS[d.action], d.created_at))
    stage = int(exp.stage_index)
    if phases[-1]["stage"] != stage:
        status = exp.status if exp.status in _LIVE else phases[-1]["status"]
        phases.append(phase(stage, status, max(_utc(exp.stage_started_at), _start(phases[-1]))))
    elif stage > 0:
        # The exact moment the weights changed, when it fits between its neighbours.
        at = _utc(exp.stage_started_at)
        after = _start(phases[stage_started - 1])
        before = _start(phases[stage_started + 1]) if stage_started + 1 < len(phases) else None
        if after <= at and (before is None or at <= before):
            phases[stage_started]["started_at"] = at.isoformat()
    if exp.status in _LIVE and phases[-1]["status"] != exp.status:
        at = max(_utc(exp.updated_at), _start(phases[-1]))
        phases.append(phase(stage, exp.status, at))
    return phases


def _start(phase: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(phase["started_at"])


def upgrade() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    op.add_column(
        "experiments",
        sa.Column(
            "phases", sa.JSON(), nullable=not sqlite, server_default="[]" if sqlite else None
        ),
    )
    for exp in bind.execute(sa.select(_EXPERIMENTS)).all():
        decisions = bind.execute(
            sa.select(_DECISIONS.c.action, _DECISIONS.c.stage_index, _DECISIONS.c.created_at)
            .where(
                _DECISIONS.c.experiment_id == exp.id,
                _DECISIONS.c.acted.is_(True),
                _DECISIONS.c.action.in_(list(_CHANGES)),
            )
            .order_by(_DECISIONS.c.id)
        ).all()
        bind.execute(
            sa.update(_EXPERIMENTS)
            .where(_EXPERIMENTS.c.id == exp.id)
            .values(phases=_phases(exp, decisions))
        )
    if not sqlite:
        op.alter_column("experiments", "phases", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN in place (SQLite >= 3.35): no copy, as in upgrade().
    op.drop_column("experiments", "phases")
