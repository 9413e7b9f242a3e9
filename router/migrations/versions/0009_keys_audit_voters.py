"""API keys, the admin audit log, and who asked and who voted

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 03:00:00

- ``api_keys``: client virtual keys (the SHA-256 of each, never the key) with their
  allowed routes and limits; ``audit_log``: every admin action and refused attempt.
- ``inference_log.key_id`` (the key that made the request) and ``unit_source`` (where
  the unit came from: ``user``, ``safety_identifier``, ``header``, ``key``; null when
  the request had none and got a fresh id).
- ``feedback.key_id``, ``votes.key_id`` and ``arena_battles.key_id``: the key that
  rated, voted or started the battle.
- One vote per voter per pair: ``/v1/votes`` stores a pair with its request ids in
  ascending order (the winner flipped to match), so (voter, a, b) is unique whichever
  order a client sends; existing votes are put in that order and, where one voter voted
  on a pair several times, only the latest is kept. Arena votes keep their side order
  (their ``winner`` names a battle's side) and stay one per battle.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("key_prefix", sa.String(32), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("last_used_at", _TZ, nullable=True),
        sa.Column("revoked_at", _TZ, nullable=True),
        sa.Column("routes", sa.JSON(), nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("client", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_audit_log_created", "audit_log", ["created_at"])
    # Plain ADD COLUMNs (nullable, no default): instant on Postgres, and on SQLite no
    # table copy, which would drop the unit_totals trigger with the table.
    op.add_column("inference_log", sa.Column("key_id", sa.String(32), nullable=True))
    op.add_column("inference_log", sa.Column("unit_source", sa.String(24), nullable=True))
    op.add_column("feedback", sa.Column("key_id", sa.String(32), nullable=True))
    op.add_column("votes", sa.Column("key_id", sa.String(32), nullable=True))
    op.add_column("arena_battles", sa.Column("key_id", sa.String(32), nullable=True))
    op.execute(
        "UPDATE votes SET request_id_a = request_id_b, request_id_b = request_id_a, "
        "winner = CASE winner WHEN 'a' THEN 'b' WHEN 'b' THEN 'a' ELSE winner END "
        "WHERE battle_id IS NULL AND request_id_a > request_id_b"
    )
    op.execute(
        "DELETE FROM votes WHERE unit_id IS NOT NULL AND id NOT IN (SELECT max(id) FROM "
        "votes WHERE unit_id IS NOT NULL GROUP BY unit_id, request_id_a, request_id_b)"
    )
    op.create_index(
        "uq_votes_voter_pair",
        "votes",
        ["unit_id", "request_id_a", "request_id_b"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_votes_voter_pair", table_name="votes")
    op.drop_column("arena_battles", "key_id")
    op.drop_column("votes", "key_id")
    op.drop_column("feedback", "key_id")
    op.drop_column("inference_log", "unit_source")
    op.drop_column("inference_log", "key_id")
    op.drop_index("ix_audit_log_created", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("api_keys")
