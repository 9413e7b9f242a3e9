"""per-unit running totals of the inference log, kept by a trigger

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 04:00:00

Each look of the evaluator needs, per (arm, unit), the unit's requests and failed
requests, whether the traffic split assigned it and when it last did. Grouping the log
for that read a million index entries per look (over 1 s of the 2 s budget on SQLite).
``unit_totals`` holds those numbers, one row per (route, experiment, arm, unit), kept up
to date by a trigger on every insert into ``inference_log``, in the inserting
transaction: whoever writes the log (the writer, a spill replay, a bulk load) keeps the
totals right, and a look reads ~100k small rows instead.

The trigger restates which rows count (router.evaluation.aggregate: arms ``champion`` and
``challenger``, not ``rejected``; ``FAILED`` statuses; ``SPLIT`` reasons), as a migration
must: tests/router/test_aggregate.py checks the totals against the log scan. Log rows are
never updated or deleted, so an insert trigger is all it takes. ``experiment_id`` is ''
outside experiments (a key column cannot be NULL).

SQLite has row triggers only: one upsert per inserted row. Postgres gets a statement
trigger over the inserted rows (a transition table): one grouped upsert per batch, in key
order so that two writers' batches cannot deadlock.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_KEY = "route, experiment_id, arm, unit_id"


# Conditions on a log row; ``row`` is "NEW." inside the SQLite row trigger.
def _counted(row: str = "") -> str:
    return (
        f"{row}arm IN ('champion', 'challenger') AND {row}status <> 'rejected'"
        f" AND {row}unit_id IS NOT NULL"
    )


def _failed(row: str = "") -> str:
    return f"{row}status IN ('error', 'timeout', 'fallback')"


def _split(row: str = "") -> str:
    return f"{row}assignment_reason IN ('hash', 'unassigned')"


def _totals(source: str) -> str:
    """The rows of ``unit_totals`` for the log rows in ``source``."""
    return f"""
        SELECT route, coalesce(experiment_id, ''), arm, unit_id, count(*),
               count(*) FILTER (WHERE {_failed()}),
               count(*) FILTER (WHERE {_split()}),
               max(created_at) FILTER (WHERE {_split()})
        FROM {source} WHERE {_counted()}
        GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"""


_SQLITE_TRIGGER = f"""
CREATE TRIGGER unit_totals_on_log_insert AFTER INSERT ON inference_log
FOR EACH ROW WHEN {_counted("NEW.")}
BEGIN
    INSERT INTO unit_totals
    VALUES (NEW.route, coalesce(NEW.experiment_id, ''), NEW.arm, NEW.unit_id, 1,
            CASE WHEN {_failed('NEW.')} THEN 1 ELSE 0 END,
            CASE WHEN {_split('NEW.')} THEN 1 ELSE 0 END,
            CASE WHEN {_split('NEW.')} THEN NEW.created_at END)
    ON CONFLICT ({_KEY}) DO UPDATE SET
        requests = requests + 1,
        failures = failures + excluded.failures,
        split_requests = split_requests + excluded.split_requests,
        last_split_at = CASE WHEN last_split_at IS NULL OR excluded.last_split_at > last_split_at
                             THEN excluded.last_split_at ELSE last_split_at END;
END"""

_POSTGRES_FUNCTION = f"""
CREATE FUNCTION unit_totals_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO unit_totals {_totals("new_rows")}
    ON CONFLICT ({_KEY}) DO UPDATE SET
        requests = unit_totals.requests + excluded.requests,
        failures = unit_totals.failures + excluded.failures,
        split_requests = unit_totals.split_requests + excluded.split_requests,
        last_split_at = greatest(unit_totals.last_split_at, excluded.last_split_at);
    RETURN NULL;
END $$"""

_POSTGRES_TRIGGER = """
CREATE TRIGGER unit_totals_on_log_insert AFTER INSERT ON inference_log
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION unit_totals_add()"""


def upgrade() -> None:
    op.create_table(
        "unit_totals",
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("experiment_id", sa.String(length=64), nullable=False),
        sa.Column("arm", sa.String(length=16), nullable=False),
        sa.Column("unit_id", sa.String(length=200), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("split_requests", sa.Integer(), nullable=False),
        sa.Column("last_split_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("route", "experiment_id", "arm", "unit_id"),
    )
    op.execute(f"INSERT INTO unit_totals {_totals('inference_log')}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRES_FUNCTION)
        op.execute(_POSTGRES_TRIGGER)
    else:
        op.execute(_SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER unit_totals_on_log_insert ON inference_log")
        op.execute("DROP FUNCTION unit_totals_add()")
    else:
        op.execute("DROP TRIGGER unit_totals_on_log_insert")
    op.drop_table("unit_totals")
