"""The blind arena: both arms answer one prompt side by side; a vote reveals who was who."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from router.api.deps import (
    ClientDep,
    EngineDep,
    MetricsDep,
    ServiceDep,
    SettingsDep,
    WriterDep,
)
from router.api.json_body import JSONRoute
from router.arena import Arena
from router.schemas import (
    BattleIn,
    BattlePublic,
    BattleState,
    BattleTurnIn,
    BattleVoteIn,
    BattleVotePublic,
)

router = APIRouter(tags=["arena"], route_class=JSONRoute)


async def _arena(
    service: ServiceDep,
    engine: EngineDep,
    writer: WriterDep,
    metrics: MetricsDep,
    principal: ClientDep,
    settings: SettingsDep,
) -> Arena:
    return Arena(
        chat=service,
        engine=engine,
        writer=writer,
        metrics=metrics,
        principal=principal,
        max_votes_per_voter=settings.max_votes_per_voter,
    )


ArenaDep = Annotated[Arena, Depends(_arena)]


def _sse(events: AsyncIterator[bytes], status_code: int) -> StreamingResponse:
    return StreamingResponse(
        events,
        status_code=status_code,
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


@router.post(
    "/v1/arena/battles",
    status_code=201,
    response_model=BattlePublic,
    responses={201: {"content": {"text/event-stream": {}}, "description": "With stream: SSE."}},
)
async def start_battle(body: BattleIn, arena: ArenaDep) -> BattlePublic | StreamingResponse:
    """Ask champion and challenger the same prompt; answers come back blind as a and b."""
    if body.stream:
        return _sse(await arena.stream(body), 201)
    return await arena.battle(body)


@router.post(
    "/v1/arena/battles/{battle_id}/turns",
    response_model=BattlePublic,
    responses={200: {"content": {"text/event-stream": {}}, "description": "With stream: SSE."}},
)
async def follow_up(
    battle_id: str, body: BattleTurnIn, arena: ArenaDep
) -> BattlePublic | StreamingResponse:
    """A follow-up: each side answers it in its own conversation, still blind."""
    if body.stream:
        return _sse(await arena.follow_up_stream(battle_id, body), 200)
    return await arena.follow_up(battle_id, body)


@router.get("/v1/arena/battles/{battle_id}")
async def get_battle(battle_id: str, arena: ArenaDep) -> BattleState:
    """A battle's answers; which arm and version gave each only once it is voted on."""
    return await arena.get(battle_id)


@router.post("/v1/arena/battles/{battle_id}/vote")
async def vote_battle(battle_id: str, body: BattleVoteIn, arena: ArenaDep) -> BattleVotePublic:
    """Vote a, b, tie or both bad (once per battle), and see who each side was."""
    return await arena.vote(battle_id, body)
