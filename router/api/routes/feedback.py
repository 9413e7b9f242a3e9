"""Thumbs on logged requests, and the logged requests themselves."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from router.api.deps import EngineDep, MetricsDep, RoutesDep, WriterDep
from router.api.json_body import JSONRoute
from router.errors import NotFound
from router.inference_log import crud
from router.metrics import arm_label, route_label
from router.schemas import FeedbackIn, FeedbackPublic, RequestPublic

router = APIRouter(tags=["feedback"], route_class=JSONRoute)


async def _logged(request_id: str, engine: EngineDep, writer: WriterDep) -> RequestPublic:
    if writer.is_pending(request_id):
        await writer.flush()  # the row is still in the writer's buffer: commit it first
    row = await run_in_threadpool(crud.get_request, engine, request_id=request_id)
    if row is None:
        raise NotFound(f"No request with id {request_id!r} was logged.", code="request_not_found")
    return RequestPublic.model_validate(row)


@router.post("/v1/feedback")
async def post_feedback(
    body: FeedbackIn,
    engine: EngineDep,
    writer: WriterDep,
    metrics: MetricsDep,
    routes: RoutesDep,
) -> FeedbackPublic:
    """Rate a logged answer up or down; the same unit rating again replaces its rating."""
    logged = await _logged(body.request_id, engine, writer)
    unit = body.user or logged.unit_id or "anonymous"
    row = await run_in_threadpool(
        crud.upsert_feedback,
        engine,
        request_id=body.request_id,
        unit_id=unit,
        value=body.value,
        comment=body.comment,
    )
    # Rows of refused requests carry the client's ``model``: never a label value.
    metrics.feedback.labels(
        route_label(logged.route, routes), arm_label(logged.arm), body.value
    ).inc()
    return FeedbackPublic.model_validate(row)


@router.get("/v1/requests/{request_id}")
async def get_request(request_id: str, engine: EngineDep, writer: WriterDep) -> RequestPublic:
    """The inference-log row of one request, with its feedback."""
    return await _logged(request_id, engine, writer)
