"""multi-turn arena battles

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 05:00:00

``arena_battles.turns``: how many prompts the battle has had. A follow-up moves the
battle's ``request_id_a``/``request_id_b`` to the new turn's answers, whose logged prompts
hold each side's whole conversation; a vote is on the battle as it stands.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("arena_battles") as batch:
        batch.add_column(sa.Column("turns", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("arena_battles") as batch:
        batch.drop_column("turns")
