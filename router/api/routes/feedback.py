"""Thumbs on logged requests, and the logged requests themselves.

Who may rate what (a thumb must not be forgeable with a request id alone):

- the caller must be allowed to see the request: the API key that made it, or the admin
  (a request made without a key belongs to every keyless caller), else 403
  ``not_your_request``;
- a request that carried a unit (``crud.carried_unit``) is rated by that unit: a key that
  was the unit proves it; otherwise the body's ``user`` must name it, else 403
  ``unit_mismatch`` (which never says what the unit is);
- a request without a unit got a fresh id that only its caller saw: whoever holds the
  request id may rate it, as ``user`` or as that fresh unit.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from router.api.deps import ClientDep, EngineDep, MetricsDep, RoutesDep, WriterDep
from router.api.json_body import JSONRoute
from router.auth.principal import Principal
from router.errors import Forbidden, NotFound
from router.inference_log import crud
from router.metrics import arm_label, route_label
from router.schemas import FeedbackIn, FeedbackPublic, RequestPublic

router = APIRouter(tags=["feedback"], route_class=JSONRoute)


async def _logged(request_id: str, engine: EngineDep, writer: WriterDep) -> dict[str, Any]:
    if writer.is_pending(request_id):
        await writer.flush()  # the row is still in the writer's buffer: commit it first
    row = await run_in_threadpool(crud.get_request, engine, request_id=request_id)
    if row is None:
        raise NotFound(f"No request with id {request_id!r} was logged.", code="request_not_found")
    return row


def check_owner(principal: Principal, row: dict[str, Any], field: str | None = None) -> None:
    """403 ``not_your_request`` unless ``principal`` may see (and rate or vote on) the
    logged ``row``; ``field`` names the body field that named the row, if any."""
    if principal.may_see(row["key_id"]):
        return
    named = f"{field}: request" if field else "Request"
    whose = (
        "was made without an API key, so only keyless callers"
        if row["key_id"] is None
        else "was made with another API key, so only that key"
    )
    raise Forbidden(
        f"{named} {row['request_id']!r} {whose} and the admin may see, rate or vote on it.",
        code="not_your_request",
    )


def _rater(row: dict[str, Any], user: str | None) -> str:
    """Who rates ``row``: its unit when it carried one (403 ``unit_mismatch`` when
    ``user`` does not name it), else ``user`` or the fresh unit it was given."""
    unit: str = row["unit_id"] or "anonymous"
    if not crud.carried_unit(row):
        return user or unit
    if row["unit_source"] == "key":
        if user is None or user == unit:
            return unit  # the key that made it is the unit, and the caller holds it
        raise Forbidden(
            f"Request {row['request_id']!r} was made for its API key, without a user: it is "
            "rated as that key; leave 'user' out.",
            code="unit_mismatch",
        )
    if user != unit:
        raise Forbidden(
            f"Request {row['request_id']!r} was made for a user (its 'user', "
            "'safety_identifier' or X-Canary-Unit header): only that user may rate it. "
            + (
                "Send 'user' with the same value the request had."
                if user is None
                else "'user' is not the one the request was made for."
            ),
            code="unit_mismatch",
        )
    return unit


@router.post("/v1/feedback")
async def post_feedback(
    body: FeedbackIn,
    engine: EngineDep,
    writer: WriterDep,
    metrics: MetricsDep,
    routes: RoutesDep,
    principal: ClientDep,
) -> FeedbackPublic:
    """Rate a logged answer up or down; the same unit rating again replaces its rating.

    A request made for a user is rated by that user only: send the same ``user``."""
    logged = await _logged(body.request_id, engine, writer)
    check_owner(principal, logged)
    principal.require_route(logged["route"])
    row = await run_in_threadpool(
        crud.upsert_feedback,
        engine,
        request_id=body.request_id,
        unit_id=_rater(logged, body.user),
        value=body.value,
        comment=body.comment,
        key_id=principal.key_id,
    )
    # Rows of refused requests carry the client's ``model``: never a label value.
    metrics.feedback.labels(
        route_label(logged["route"], routes), arm_label(logged["arm"]), body.value
    ).inc()
    return FeedbackPublic.model_validate(row)


@router.get("/v1/requests/{request_id}")
async def get_request(
    request_id: str, engine: EngineDep, writer: WriterDep, principal: ClientDep
) -> RequestPublic:
    """The inference-log row of one request, with its feedback (the key that made the
    request, or the admin)."""
    row = await _logged(request_id, engine, writer)
    check_owner(principal, row)
    return RequestPublic.model_validate(row)
