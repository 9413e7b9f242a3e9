"""tool calls in the inference log

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 04:10:00

``inference_log.tool_calls``: the answer's tool calls (OpenAI's ``message.tool_calls``,
streamed pieces merged), null when it made none; the prompt's own tool calls and tool
results are in ``prompt_messages`` as the client sent them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: no table copy on SQLite (which would drop the log's trigger).
    op.add_column("inference_log", sa.Column("tool_calls", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("inference_log", "tool_calls")
