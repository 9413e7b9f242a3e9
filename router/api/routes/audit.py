"""The admin audit trail: every admin action and every refused attempt (admin only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from router.api.deps import AdminDep, EngineDep
from router.api.json_body import JSONRoute
from router.auth.audit import list_entries

router = APIRouter(tags=["audit"], route_class=JSONRoute, dependencies=[AdminDep])


@router.get("/v1/audit", name="audit.list")
async def list_audit(
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None,
        Query(ge=1, le=2**63 - 1, description="Page on: entries older than this id."),
    ] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
) -> list[dict[str, Any]]:
    """Newest first: who (actor, client address) did what (action, target) and how it ended."""
    return await run_in_threadpool(list_entries, engine, limit=limit, before=before, action=action)
