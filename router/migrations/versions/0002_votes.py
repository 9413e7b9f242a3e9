"""votes, and indexes for the evaluator's aggregation

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('votes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('route', sa.String(length=200), nullable=False),
    sa.Column('request_id_a', sa.String(length=64), nullable=False),
    sa.Column('request_id_b', sa.String(length=64), nullable=False),
    sa.Column('winner', sa.String(length=8), nullable=False),
    sa.Column('unit_id', sa.String(length=200), nullable=True),
    sa.Column('battle_id', sa.String(length=64), nullable=True),
    sa.CheckConstraint("winner IN ('a', 'b', 'tie', 'both_bad')", name='ck_votes_winner'),
    sa.ForeignKeyConstraint(['request_id_a'], ['inference_log.request_id'], ),
    sa.ForeignKeyConstraint(['request_id_b'], ['inference_log.request_id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('battle_id', name='uq_votes_battle_id')
    )
    op.create_index('ix_votes_route_created', 'votes', ['route', 'created_at'], unique=False)
    op.create_index('ix_inference_log_units', 'inference_log', ['route', 'experiment_id', 'arm', 'unit_id', 'status', 'created_at'], unique=False)
    op.create_index('ix_feedback_latest', 'feedback', ['request_id', sa.text('updated_at DESC'), sa.text('id DESC'), 'value'], unique=False)
    op.create_index('ix_inference_log_samples', 'inference_log', ['route', 'experiment_id', 'arm', 'status', 'request_id', 'latency_ms', 'stream', 'ttft_ms', 'created_at'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        # Index-only lookups of rated and voted requests (SQLite would not use it).
        op.create_index('ix_inference_log_lookup', 'inference_log', ['request_id'], unique=False, postgresql_include=['route', 'experiment_id', 'arm', 'status', 'unit_id', 'created_at'])


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.drop_index('ix_inference_log_lookup', table_name='inference_log')
    op.drop_index('ix_feedback_latest', table_name='feedback')
    op.drop_index('ix_inference_log_samples', table_name='inference_log')
    op.drop_index('ix_inference_log_units', table_name='inference_log')
    op.drop_index('ix_votes_route_created', table_name='votes')
    op.drop_table('votes')
