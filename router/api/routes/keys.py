"""Client API keys (admin): make one (shown once), list them, revoke one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from router.api.deps import AdminDep, EngineDep, GateDep
from router.api.json_body import JSONRoute
from router.auth import keys
from router.errors import NotFound
from router.schemas import KeyIn

router = APIRouter(tags=["keys"], route_class=JSONRoute, dependencies=[AdminDep])


@router.post("/v1/keys", status_code=201, name="keys.create")
async def create_key(body: KeyIn, request: Request, engine: EngineDep) -> dict[str, Any]:
    """Make a key. The answer's ``key`` is the only time it is shown: only its hash is kept."""
    key, row = await run_in_threadpool(
        keys.create_key, engine, name=body.name, routes=body.routes, rpm=body.rpm, tpm=body.tpm
    )
    request.state.audit_target = f"{row['id']} ({body.name})"
    return {**row, "key": key}


@router.get("/v1/keys", name="keys.list")
async def list_keys(engine: EngineDep) -> list[dict[str, Any]]:
    """Every key (never the key itself), oldest first, revoked ones included."""
    return await run_in_threadpool(keys.list_keys, engine)


@router.delete("/v1/keys/{key_id}", name="keys.revoke")
async def revoke_key(key_id: str, engine: EngineDep, gate: GateDep) -> dict[str, Any]:
    """Revoke a key: refused (403) here at once, on other replicas within ``keys_refresh_s``."""
    row = await run_in_threadpool(keys.revoke_key, engine, key_id=key_id)
    if row is None:
        raise NotFound(f"No API key {key_id!r}.", code="key_not_found")
    await gate.keys.load()
    return row
