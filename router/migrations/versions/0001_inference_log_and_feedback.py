"""inference log and feedback

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 22:03:37.895235
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('inference_log',
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('route', sa.String(length=200), nullable=False),
    sa.Column('experiment_id', sa.String(length=64), nullable=True),
    sa.Column('arm', sa.String(length=16), nullable=True),
    sa.Column('model_name', sa.String(length=200), nullable=True),
    sa.Column('model_version', sa.String(length=64), nullable=True),
    sa.Column('served_arm', sa.String(length=16), nullable=True),
    sa.Column('served_model_version', sa.String(length=64), nullable=True),
    sa.Column('shadow_of', sa.String(length=64), nullable=True),
    sa.Column('unit_id', sa.String(length=200), nullable=True),
    sa.Column('assignment_reason', sa.String(length=16), nullable=True),
    sa.Column('bucket', sa.Integer(), nullable=True),
    sa.Column('stream', sa.Boolean(), nullable=False),
    sa.Column('prompt_messages', sa.JSON(), nullable=True),
    sa.Column('prompt_chars', sa.Integer(), nullable=False),
    sa.Column('prompt_sha256', sa.String(length=64), nullable=True),
    sa.Column('response_text', sa.Text(), nullable=True),
    sa.Column('response_chars', sa.Integer(), nullable=False),
    sa.Column('response_sha256', sa.String(length=64), nullable=True),
    sa.Column('finish_reason', sa.String(length=32), nullable=True),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('http_status', sa.Integer(), nullable=False),
    sa.Column('error_type', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('ttft_ms', sa.Float(), nullable=True),
    sa.Column('queue_wait_ms', sa.Float(), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=True),
    sa.Column('completion_tokens', sa.Integer(), nullable=True),
    sa.Column('cost_usd', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('request_id')
    )
    op.create_index('ix_inference_log_experiment_arm', 'inference_log', ['experiment_id', 'arm'], unique=False)
    op.create_index('ix_inference_log_route_created', 'inference_log', ['route', 'created_at'], unique=False)
    op.create_table('feedback',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(length=64), nullable=False),
    sa.Column('unit_id', sa.String(length=200), nullable=False),
    sa.Column('value', sa.String(length=8), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['inference_log.request_id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('request_id', 'unit_id', name='uq_feedback_request_unit')
    )
    op.create_index(op.f('ix_feedback_request_id'), 'feedback', ['request_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_feedback_request_id'), table_name='feedback')
    op.drop_table('feedback')
    op.drop_index('ix_inference_log_route_created', table_name='inference_log')
    op.drop_index('ix_inference_log_experiment_arm', table_name='inference_log')
    op.drop_table('inference_log')
