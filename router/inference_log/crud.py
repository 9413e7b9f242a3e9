"""Reads of the inference log and writes of feedback. Keyword-only, engine first."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from router.inference_log.db import insert
from router.inference_log.models import Feedback, InferenceRecord, utcnow

FEEDBACK = Feedback.__table__  # type: ignore[attr-defined]
LOG = InferenceRecord.__table__  # type: ignore[attr-defined]


def get_request(engine: Engine, *, request_id: str) -> dict[str, Any] | None:
    """The logged row with its feedback, or None."""
    with engine.connect() as conn:
        row = conn.execute(select(LOG).where(LOG.c.request_id == request_id)).mappings().first()
        if row is None:
            return None
        feedback = conn.execute(
            select(FEEDBACK).where(FEEDBACK.c.request_id == request_id).order_by(FEEDBACK.c.id)
        ).mappings()
        return {**row, "feedback": [dict(f) for f in feedback]}


def upsert_feedback(
    engine: Engine, *, request_id: str, unit_id: str, value: str, comment: str | None
) -> dict[str, Any]:
    """Store a thumb; the same unit rating the same request again replaces its rating."""
    now = utcnow()
    values = insert(engine, FEEDBACK).values(
        request_id=request_id,
        unit_id=unit_id,
        value=value,
        comment=comment,
        created_at=now,
        updated_at=now,
    )
    stmt = values.on_conflict_do_update(
        index_elements=["request_id", "unit_id"],
        set_={"value": value, "comment": comment, "updated_at": now},
    ).returning(*FEEDBACK.c)
    with engine.begin() as conn:
        return dict(conn.execute(stmt).mappings().one())
