"""The audit trail of the admin API: who did what to what, and how it ended.

Every admin action, and every refused attempt at one, is one log line (logger
``router.audit``) and one ``audit_log`` row. The line is written first and always; the
row is best effort, so an action taken while the database is down is still on record.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool

from router.auth.models import AuditEntry
from router.inference_log.models import utcnow

log = logging.getLogger("router.audit")

AUDIT = AuditEntry.__table__  # type: ignore[attr-defined]
OK, REFUSED, FAILED = "ok", "refused", "failed"


def _insert(engine: Engine, row: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(AUDIT.insert().values(**row))


def list_entries(
    engine: Engine, *, limit: int, before: int | None = None, action: str | None = None
) -> list[dict[str, Any]]:
    """Newest first; ``before`` pages on (an id from the previous page)."""
    stmt = select(AUDIT).order_by(AUDIT.c.id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(AUDIT.c.id < before)
    if action is not None:
        stmt = stmt.where(AUDIT.c.action == action)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


class Auditor:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def record(
        self,
        *,
        actor: str,
        action: str,
        target: str | None,
        outcome: str,
        http_status: int,
        client: str | None,
        detail: str | None = None,
    ) -> None:
        row = {
            "created_at": utcnow(),
            "actor": actor,
            "action": action,
            "target": target[:200] if target else None,
            "outcome": outcome,
            "http_status": http_status,
            "client": client,
            "detail": detail,
        }
        level = logging.INFO if outcome == OK else logging.WARNING
        log.log(
            level,
            "admin %s %s",
            action,
            outcome,
            extra={k: v for k, v in row.items() if k != "created_at"},
        )
        try:
            await run_in_threadpool(_insert, self._engine, row)
        except Exception:
            log.exception("could not store an audit row (the line above keeps it)")
