"""Pairwise votes: a reviewer saw two answers side by side and picked one (or neither).

A vote counts once: it judges two answers shown to one voter, so both requests must have
carried the same unit (the same ``user``, or the same API key without one), and that
unit is the voter. Each voter has one vote per pair (a re-vote replaces it, whichever
order the pair is sent in) and at most ``max_votes_per_voter`` per route and experiment.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from router.api.deps import ClientDep, EngineDep, MetricsDep, RoutesDep, SettingsDep, WriterDep
from router.api.json_body import JSONRoute
from router.api.routes.feedback import check_owner
from router.arena import ARENA
from router.auth.principal import Principal
from router.errors import Forbidden, InvalidRequest, NotFound
from router.inference_log import crud
from router.inference_log.models import winner_arm
from router.metrics import route_label
from router.schemas import VoteIn, VotePublic

router = APIRouter(tags=["votes"], route_class=JSONRoute)

ARMS = ("champion", "challenger")
_FIELDS = ("request_id_a", "request_id_b")


async def _pair(
    body: VoteIn, engine: EngineDep, writer: WriterDep, principal: Principal
) -> list[dict[str, Any]]:
    """Both logged rows, in (a, b) order, once they are shown to be a valid pair that
    this caller may vote on."""
    ids = [body.request_id_a, body.request_id_b]
    if ids[0] == ids[1]:
        raise InvalidRequest(
            "request_id_a and request_id_b are the same request.", code="same_request"
        )
    if any(writer.is_pending(i) for i in ids):
        await writer.flush()  # a row is still in the writer's buffer: commit it first
    found = await run_in_threadpool(crud.get_requests_brief, engine, request_ids=ids)
    for field, request_id in zip(_FIELDS, ids, strict=True):
        if request_id not in found:
            raise NotFound(
                f"{field}: no request with id {request_id!r} was logged.", code="request_not_found"
            )
    a, b = found[ids[0]], found[ids[1]]
    # Whose rows they are before anything about them: a stranger learns no route or arm.
    for field, row in zip(_FIELDS, (a, b), strict=True):
        check_owner(principal, row, field)
    for row in (a, b):
        principal.require_route(row["route"])
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
    if a["assignment_reason"] == b["assignment_reason"] == ARENA:
        raise InvalidRequest(
            "Both answers come from the arena: vote on their battle "
            "(POST /v1/arena/battles/{battle_id}/vote).",
            code="arena_answers",
        )
    return [a, b]


def _voter(a: dict[str, Any], b: dict[str, Any], user: str | None) -> str:
    """The unit both answers were shown to, which is the voter; 403 otherwise."""
    if not (crud.carried_unit(a) and crud.carried_unit(b) and a["unit_id"] == b["unit_id"]):
        raise Forbidden(
            "A vote judges two answers shown to one voter: make both requests with the same "
            "'user' (or with the same API key and no 'user'), then vote on them. These two "
            "were not made for one user.",
            code="not_your_answers",
        )
    voter: str = a["unit_id"]
    if user is not None and user != voter:
        raise Forbidden(
            "'user' is not the user both answers were made for; leave it out (the voter is "
            "that user) or send the same value the requests had.",
            code="voter_mismatch",
        )
    return voter


@router.post("/v1/votes")
async def post_vote(
    body: VoteIn,
    engine: EngineDep,
    writer: WriterDep,
    metrics: MetricsDep,
    routes: RoutesDep,
    settings: SettingsDep,
    principal: ClientDep,
) -> VotePublic:
    """Vote on two answers of one route, one from each arm, both made for the voter: a,
    b, tie or both bad. Voting on the pair again replaces the vote."""
    a, b = await _pair(body, engine, writer, principal)
    row = await run_in_threadpool(
        crud.upsert_vote,
        engine,
        route=a["route"],
        request_id_a=body.request_id_a,
        request_id_b=body.request_id_b,
        winner=body.winner,
        unit_id=_voter(a, b, body.user),
        key_id=principal.key_id,
        cap=settings.max_votes_per_voter,
    )
    outcome = winner_arm(body.winner, a["arm"], b["arm"])
    metrics.votes.labels(route_label(a["route"], routes), outcome).inc()
    # Stored in ascending id order; answered in the order the client sent.
    return VotePublic.model_validate(
        {
            **row,
            "request_id_a": body.request_id_a,
            "request_id_b": body.request_id_b,
            "winner": body.winner,
            "arm_a": a["arm"],
            "arm_b": b["arm"],
            "winner_arm": outcome,
        }
    )
