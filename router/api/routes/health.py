"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from router.api.deps import EngineDep, MetricsDep, RoutesDep
from router.inference_log.db import ping

router = APIRouter(tags=["health"])


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/health/ready", response_model=None)
async def ready(routes: RoutesDep, engine: EngineDep) -> JSONResponse:
    """Arms loaded and database reachable (503 otherwise). A registry that cannot be read
    while the loaded versions keep serving makes the status ``degraded``, still 200."""
    checks: dict[str, Any] = {"arms": "ok" if routes.loaded else "no routes loaded"}
    try:
        await run_in_threadpool(ping, engine)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {exc.__class__.__name__}: {exc}"
    ok = all(v == "ok" for v in checks.values())
    checks["registry"] = routes.status
    status = "not_ready" if not ok else ("ready" if routes.status == "ok" else "degraded")
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(m: MetricsDep) -> Response:
    """Prometheus exposition format."""
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
