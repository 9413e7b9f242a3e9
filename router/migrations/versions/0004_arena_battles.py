"""arena battles

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No foreign keys to inference_log: a battle is stored before the writer commits
    # its two answers' rows.
    op.create_table(
        "arena_battles",
        sa.Column("battle_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("unit_id", sa.String(length=200), nullable=False),
        sa.Column("request_id_a", sa.String(length=64), nullable=False),
        sa.Column("request_id_b", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("battle_id"),
    )
    op.create_index("ix_arena_battles_route_created", "arena_battles", ["route", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_arena_battles_route_created", table_name="arena_battles")
    op.drop_table("arena_battles")
