"""Pairwise votes: a reviewer saw two answers side by side and picked one (or neither)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from router.api.deps import EngineDep, MetricsDep, RoutesDep, WriterDep
from router.api.json_body import JSONRoute
from router.errors import InvalidRequest, NotFound
from router.inference_log import crud
from router.inference_log.models import winner_arm
from router.metrics import route_label
from router.schemas import VoteIn, VotePublic

router = APIRouter(tags=["votes"], route_class=JSONRoute)

ARMS = ("champion", "challenger")


async def _pair(body: VoteIn, engine: EngineDep, writer: WriterDep) -> list[dict[str, Any]]:
    """Both logged rows, in (a, b) order, once they are shown to be a valid pair."""
    ids = [body.request_id_a, body.request_id_b]
    if ids[0] == ids[1]:
        raise InvalidRequest(
            "request_id_a and request_id_b are the same request.", code="same_request"
        )
    if any(writer.is_pending(i) for i in ids):
        await writer.flush()  # a row is still in the writer's buffer: commit it first
    found = await run_in_threadpool(crud.get_requests_brief, engine, request_ids=ids)
    for field, request_id in zip(("request_id_a", "request_id_b"), ids, strict=True):
        if request_id not in found:
            raise NotFound(
                f"{field}: no request with id {request_id!r} was logged.", code="request_not_found"
            )
    a, b = found[ids[0]], found[ids[1]]
    if a["route"] != b["route"]:
        raise InvalidRequest(
            f"The requests belong to different routes ({a['route']!r} and {b['route']!r}).",
            code="route_mismatch",
        )
    if {a["arm"], b["arm"]} != set(ARMS):
        raise InvalidRequest(
            "A vote compares the champion with the challenger; these answers came from "
            f"{a['arm'] or 'no arm'!r} and {b['arm'] or 'no arm'!r}.",
            code="arms_not_compared",
        )
    return [a, b]


@router.post("/v1/votes")
async def post_vote(
    body: VoteIn,
    engine: EngineDep,
    writer: WriterDep,
    metrics: MetricsDep,
    routes: RoutesDep,
) -> VotePublic:
    """Vote on two answers of one route, one from each arm: a, b, tie or both bad."""
    a, b = await _pair(body, engine, writer)
    unit = body.user or (a["unit_id"] if a["unit_id"] == b["unit_id"] else None)
    row = await run_in_threadpool(
        crud.insert_vote,
        engine,
        route=a["route"],
        request_id_a=body.request_id_a,
        request_id_b=body.request_id_b,
        winner=body.winner,
        unit_id=unit,
    )
    outcome = winner_arm(body.winner, a["arm"], b["arm"])
    metrics.votes.labels(route_label(a["route"], routes), outcome).inc()
    return VotePublic.model_validate(
        {**row, "arm_a": a["arm"], "arm_b": b["arm"], "winner_arm": outcome}
    )
