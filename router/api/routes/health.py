"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.api.deps import MetricsDep
from router.readiness import Readiness

router = APIRouter(tags=["health"])


async def _readiness(request: Request) -> Readiness:
    """Built in the app's lifespan."""
    return request.app.state.readiness


ReadinessDep = Annotated[Readiness, Depends(_readiness)]


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/health/ready", response_model=None)
async def ready(readiness: ReadinessDep) -> JSONResponse:
    """Can this router serve: 200 ``ready``, 200 ``degraded`` with the reasons in
    ``checks``, or 503 ``not_ready`` (no routes loaded, or requests cannot be recorded)."""
    status_code, body = await readiness.report()
    return JSONResponse(body, status_code=status_code)


@router.get("/metrics")
async def metrics(m: MetricsDep) -> Response:
    """Prometheus exposition format."""
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
