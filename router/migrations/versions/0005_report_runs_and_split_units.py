"""report runs, and the assignment reason in the evaluator's per-unit index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 02:00:00

``experiments.report_run_id``: the MLflow run holding an ended experiment's report.
``ix_inference_log_units`` gains ``assignment_reason``: only rows the traffic split
assigned count as units for SRM and the per-stage minimums, and the per-unit GROUP BY
must still read nothing but this index.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_UNITS = ["route", "experiment_id", "arm", "unit_id", "status", "created_at"]


def upgrade() -> None:
    op.add_column(
        "experiments", sa.Column("report_run_id", sa.String(length=64), nullable=True)
    )
    op.drop_index("ix_inference_log_units", table_name="inference_log")
    op.create_index(
        "ix_inference_log_units", "inference_log", [*_UNITS, "assignment_reason"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_inference_log_units", table_name="inference_log")
    op.create_index("ix_inference_log_units", "inference_log", _UNITS, unique=False)
    op.drop_column("experiments", "report_run_id")
