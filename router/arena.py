"""The blind arena: one prompt to both arms at once, the answers shown as ``a`` and ``b``.

A battle can go on for several turns: each follow-up goes to the same arm on each side,
with that side's own conversation so far (rebuilt from its latest logged row), and the
battle then points at the new turn's rows. The vote is on the battle as it stands.

Each side is an ordinary inference row (the forced arm, ``assignment_reason`` "arena",
the route's live experiment), answered without fallback so that each side shows its own
arm's answer. Which side is which arm is drawn per battle (``secrets``) and stays hidden
until the vote, which lands in ``votes`` with the battle's id: the evaluator counts it
like any other pairwise vote. Battles live in ``arena_battles``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import orjson
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from router.assignment import ArmName, Unit, unit_of
from router.auth.principal import Principal
from router.completions import ChatService
from router.config import Settings
from router.errors import CanaryError, Conflict, Forbidden, InvalidRequest, NotFound
from router.inference_log import crud
from router.inference_log.models import winner_arm
from router.inference_log.record import DISCONNECTED, OK, RequestRecord
from router.inference_log.writer import LogWriter
from router.metrics import Metrics
from router.schemas import (
    BattleAnswer,
    BattleIn,
    BattlePublic,
    BattleSide,
    BattleState,
    BattleTurnIn,
    BattleVoteIn,
    BattleVotePublic,
    ChatCompletionRequest,
    RevealedAnswer,
)

__all__ = ["ARENA", "Arena", "side_error"]

log = logging.getLogger(__name__)

#: ``assignment_reason`` of the arena's rows.
ARENA = "arena"
#: ``Settings.max_votes_per_voter``'s default, for an ``Arena`` not told the setting.
DEFAULT_MAX_VOTES: int = Settings.model_fields["max_votes_per_voter"].default
SIDES = ("a", "b")

# What a failed side says. The row keeps the backend's own words, but those may name the
# model or its endpoint and would give the blind comparison away.
_SIDE_ERRORS = {
    "timeout": "The model did not answer in time.",
    "context_length_exceeded": "The conversation is too long for this model.",
    DISCONNECTED: "The answer was cut off before it finished.",
}
_SIDE_ERROR = "The model failed to answer."


def side_error(code: str | None) -> str:
    """The readable, anonymous message for a side that failed with ``code``."""
    return _SIDE_ERRORS.get(code or "", _SIDE_ERROR)


class Arena:
    """Battles on the routes of one ``ChatService``; cheap, made per request."""

    def __init__(
        self,
        *,
        chat: ChatService,
        engine: Engine,
        writer: LogWriter,
        metrics: Metrics,
        principal: Principal,
        max_votes_per_voter: int = DEFAULT_MAX_VOTES,
    ) -> None:
        self._chat = chat
        self._engine = engine
        self._writer = writer
        self._metrics = metrics
        self._principal = principal  # who asks: battles are theirs, votes bound to them
        self._max_votes = max_votes_per_voter

    # -- battles --------------------------------------------------------------------------
    async def battle(self, body: BattleIn) -> BattlePublic:
        """Ask both arms at once and wait for both answers (a failed side shows an error)."""
        request, unit, arms = self._draw(body)
        ids, answers = await self._complete((request, request), arms, unit)
        row = await self._store(request.model, unit, ids)
        return _public(row, answers)

    async def stream(self, body: BattleIn) -> AsyncIterator[bytes]:
        """Server-sent events: ``battle`` first, then both sides' events as they come.

        The battle is stored before the first event, so its id can be looked up at once;
        a vote is accepted once both answers are logged.
        """
        request, unit, arms = self._draw(body)
        key_id = self._principal.key_id
        sides = [
            self._chat.stream_arm(request, arm=arm, reason=ARENA, unit=unit, key_id=key_id)
            for arm in arms
        ]
        row = await self._store(request.model, unit, [record.request_id for record, _ in sides])
        return self._events(row, sides)

    async def follow_up(self, battle_id: str, body: BattleTurnIn) -> BattlePublic:
        """The next turn: each side answers ``body`` after its own earlier turns."""
        battle, requests, arms = await self._next_turn(battle_id, body)
        ids, answers = await self._complete(requests, arms, self._unit_of(battle))
        return _public(await self._advance(battle, ids), answers)

    async def follow_up_stream(self, battle_id: str, body: BattleTurnIn) -> AsyncIterator[bytes]:
        """``follow_up`` as server-sent events, the same ones a streamed battle sends."""
        battle, requests, arms = await self._next_turn(battle_id, body)
        unit, key_id = self._unit_of(battle), self._principal.key_id
        sides = [
            self._chat.stream_arm(request, arm=arm, reason=ARENA, unit=unit, key_id=key_id)
            for request, arm in zip(requests, arms, strict=True)
        ]
        try:
            row = await self._advance(battle, [record.request_id for record, _ in sides])
        except Conflict:
            for _, pieces in sides:  # never started: logged as abandoned, nothing was asked
                await pieces.aclose()
            raise
        return self._events(row, sides)

    async def get(self, battle_id: str) -> BattleState:
        """The battle's answers; who gave them only once it is voted on."""
        battle = await self._battle(battle_id)
        revealed = battle["winner"] is not None
        outcome = _outcome(battle) if revealed else None
        return BattleState(
            battle_id=battle["battle_id"],
            route=battle["route"],
            created_at=battle["created_at"],
            turn=battle["turns"],
            revealed=revealed,
            winner=battle["winner"],
            winner_arm=outcome,  # type: ignore[arg-type]  # one of WinnerArm
            a=_logged_answer(battle, "a", revealed),
            b=_logged_answer(battle, "b", revealed),
        )

    async def vote(self, battle_id: str, body: BattleVoteIn) -> BattleVotePublic:
        """Store the vote (once per battle, by the battle's unit, within the voter's cap)
        and reveal who each side was."""
        battle = await self._battle(battle_id)
        voter: str = battle["unit_id"]
        if body.user is not None and body.user != voter:
            raise Forbidden(
                f"'user' is not the user battle {battle_id!r} was started for: its vote is "
                "that user's; leave 'user' out or send the same value the battle had.",
                code="voter_mismatch",
            )
        if battle["winner"] is not None:
            raise Conflict(f"Battle {battle_id!r} already has a vote.", code="vote_exists")
        if battle["a"] is None or battle["b"] is None:
            raise Conflict(
                f"Battle {battle_id!r} is still being answered; vote once both answers are in.",
                code="battle_in_progress",
            )
        await run_in_threadpool(
            crud.insert_vote,
            self._engine,
            route=battle["route"],
            request_id_a=battle["request_id_a"],
            request_id_b=battle["request_id_b"],
            winner=body.winner,
            unit_id=voter,
            battle_id=battle_id,
            key_id=self._principal.key_id,
            cap=self._max_votes,
        )
        battle["winner"] = body.winner
        outcome = _outcome(battle)
        self._metrics.votes.labels(battle["route"], outcome).inc()
        self._metrics.arena_votes.labels(battle["route"], outcome).inc()
        return BattleVotePublic(
            battle_id=battle_id,
            winner=body.winner,
            winner_arm=outcome,  # type: ignore[arg-type]  # one of WinnerArm
            a=_side(battle["a"]),
            b=_side(battle["b"]),
        )

    # -- steps ----------------------------------------------------------------------------
    def _draw(self, body: BattleIn) -> tuple[ChatCompletionRequest, Unit, tuple[ArmName, ...]]:
        """The chat request both arms get, the unit, and the arms in side order (a, b)."""
        request = ChatCompletionRequest(
            model=body.route,
            messages=body.messages,
            user=body.user,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            stream=body.stream,
        )
        route = self._chat.check(request)  # 404 unknown route, 400 limits
        if route.challenger is None:
            raise InvalidRequest(
                f"Route {route.name!r} has no challenger: a battle needs both arms.",
                code="no_challenger",
            )
        self._principal.require_route(route.name)
        unit = unit_of(user=body.user, key_id=self._principal.key_id)
        if unit.id is None:
            unit = Unit(f"anon-{uuid.uuid4().hex}")
        arms: tuple[ArmName, ...] = ("champion", "challenger")
        if secrets.randbelow(2):
            arms = arms[::-1]
        return request, unit, arms

    async def _next_turn(
        self, battle_id: str, body: BattleTurnIn
    ) -> tuple[dict[str, Any], list[ChatCompletionRequest], tuple[ArmName, ...]]:
        """The battle, each side's request for the follow-up (its own conversation so far,
        then ``body``), and the sides' arms; 409 when the battle cannot go on."""
        battle = await self._battle(battle_id)
        if battle["winner"] is not None:
            raise Conflict(
                f"Battle {battle_id!r} has been voted on; start a new battle to go on.",
                code="vote_exists",
            )
        if battle["a"] is None or battle["b"] is None:
            raise Conflict(
                f"Battle {battle_id!r} is still being answered; follow up once both "
                "answers are in.",
                code="battle_in_progress",
            )
        requests = []
        for side in SIDES:
            row = battle[side]
            if row["status"] != OK:
                raise Conflict(
                    f"Model {side.upper()} failed to answer the last turn; vote on the battle "
                    "or start a new one.",
                    code="side_failed",
                )
            if row["prompt_messages"] is None or row["response_text"] is None:
                raise Conflict(
                    "This router does not store prompts and answers (store_prompts is off), "
                    "so a battle cannot go on: start a new one.",
                    code="history_not_stored",
                )
            messages = [
                *row["prompt_messages"],
                {"role": "assistant", "content": row["response_text"]},
                {"role": "user", "content": body.content},
            ]
            requests.append(
                ChatCompletionRequest(
                    model=battle["route"],
                    messages=messages,
                    user=battle["unit_id"],
                    max_tokens=body.max_tokens,
                    temperature=body.temperature,
                    stream=body.stream,
                )
            )
        route = self._chat.check(requests[0])  # 404 route gone, 400 limits
        arms: tuple[ArmName, ...] = (battle["a"]["arm"], battle["b"]["arm"])
        serving = {"champion": route.champion, "challenger": route.challenger}
        for side, arm in zip(SIDES, arms, strict=True):
            now = serving[arm]
            if now is None or now.version != battle[side]["model_version"]:
                raise Conflict(
                    f"The models of route {route.name!r} changed since battle {battle_id!r} "
                    "began; start a new battle.",
                    code="battle_models_changed",
                )
        return battle, requests, arms

    async def _complete(
        self,
        requests: Sequence[ChatCompletionRequest],
        arms: tuple[ArmName, ...],
        unit: Unit,
    ) -> tuple[list[str], list[BattleAnswer]]:
        """Each side's request to its arm, at once: the rows' ids and the answers."""
        key_id = self._principal.key_id
        results = await asyncio.gather(
            *(
                self._chat.complete_arm(request, arm=arm, reason=ARENA, unit=unit, key_id=key_id)
                for request, arm in zip(requests, arms, strict=True)
            ),
            return_exceptions=True,
        )
        ids, answers = [], []
        for result in results:
            if isinstance(result, CanaryError) and result.request_id is not None:
                ids.append(result.request_id)
                answers.append(BattleAnswer(content=None, finish_reason=None, error=_error(result)))
            elif isinstance(result, BaseException):
                raise result  # a bug, not a model failing: the row is logged, answer 500
            else:
                record, completion = result
                ids.append(record.request_id)
                answers.append(
                    BattleAnswer(
                        content=completion.text,
                        finish_reason=completion.finish_reason,
                        error=None,
                        tool_calls=_anonymous(completion.tool_calls),
                    )
                )
        return ids, answers

    async def _advance(self, battle: dict[str, Any], request_ids: list[str]) -> dict[str, Any]:
        row = await run_in_threadpool(
            crud.advance_battle,
            self._engine,
            battle_id=battle["battle_id"],
            turn=battle["turns"],
            request_id_a=request_ids[0],
            request_id_b=request_ids[1],
        )
        if row is None:
            raise Conflict(
                f"Battle {battle['battle_id']!r} moved on meanwhile (another follow-up or a "
                "vote came first); reload it.",
                code="battle_changed",
            )
        return row

    async def _store(self, route: str, unit: Unit, request_ids: list[str]) -> dict[str, Any]:
        row = await run_in_threadpool(
            crud.insert_battle,
            self._engine,
            battle_id=f"battle-{uuid.uuid4().hex}",
            route=route,
            unit_id=unit.id or "",  # always set: ``_draw`` gives anonymous battles an id
            request_id_a=request_ids[0],
            request_id_b=request_ids[1],
            key_id=self._principal.key_id,
        )
        self._metrics.arena_battles.labels(route).inc()
        return row

    def _unit_of(self, battle: dict[str, Any]) -> Unit:
        """The battle's unit, for its follow-ups' rows: where it came from is told by
        the id (a fresh ``anon-`` id, the key's id, or the user the battle named)."""
        unit_id: str = battle["unit_id"]
        if unit_id.startswith("anon-"):
            return Unit(unit_id)
        return Unit(unit_id, "key" if unit_id == battle.get("key_id") else "user")

    async def _battle(self, battle_id: str) -> dict[str, Any]:
        """The stored battle with both rows; rows still in the writer's buffer are committed.

        Only the key that started the battle (or the admin; a battle started without a
        key is every keyless caller's) may see it, follow it up or vote on it: 403
        ``not_your_battle`` for anyone else.
        """
        battle = await run_in_threadpool(crud.get_battle, self._engine, battle_id=battle_id)
        if battle is None:
            raise NotFound(f"No arena battle {battle_id!r}.", code="battle_not_found")
        if not self._principal.may_see(battle["key_id"]):
            whose = "without an API key" if battle["key_id"] is None else "with another API key"
            raise Forbidden(
                f"Arena battle {battle_id!r} was started {whose}: only its own caller and the "
                "admin may see it, follow it up or vote on it.",
                code="not_your_battle",
            )
        self._principal.require_route(battle["route"])
        ids = (battle["request_id_a"], battle["request_id_b"])
        if any(self._writer.is_pending(i) for i in ids):
            await self._writer.flush()
            battle = await run_in_threadpool(crud.get_battle, self._engine, battle_id=battle_id)
            assert battle is not None  # battles are never deleted
        return battle

    async def _events(
        self,
        battle: dict[str, Any],
        sides: list[tuple[RequestRecord, AsyncGenerator[str, None]]],
    ) -> AsyncIterator[bytes]:
        """Merge both sides' streams into one event stream, in the order pieces arrive."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        pumps = [
            asyncio.create_task(_pump(side, record, pieces, queue))
            for side, (record, pieces) in zip(SIDES, sides, strict=True)
        ]
        try:
            yield _event(
                {
                    "type": "battle",
                    "battle_id": battle["battle_id"],
                    "route": battle["route"],
                    "turn": battle["turns"],
                }
            )
            running = len(pumps)
            while running:
                event = await queue.get()
                if event is None:  # that side is over
                    running -= 1
                else:
                    yield _event(event)
            yield b"data: [DONE]\n\n"
        finally:
            # The client left early: stop both sides (their rows say client_disconnected).
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)


async def _pump(
    side: str,
    record: RequestRecord,
    pieces: AsyncGenerator[str, None],
    queue: asyncio.Queue[dict[str, Any] | None],
) -> None:
    """Feed one side's events into the merged stream, then ``None``."""
    try:
        async with aclosing(pieces):
            async for piece in pieces:
                queue.put_nowait({"type": "delta", "side": side, "content": piece})
        done: dict[str, Any] = {"type": "done", "side": side, "finish_reason": record.finish_reason}
        calls = _anonymous(record.tool_calls)
        if calls:
            done["tool_calls"] = calls
        queue.put_nowait(done)
    except CanaryError as exc:
        queue.put_nowait({"type": "error", "side": side, "message": _error(exc)})
    except Exception:
        log.exception("arena side failed", extra={"request_id": record.request_id})
        queue.put_nowait({"type": "error", "side": side, "message": side_error(None)})
    finally:
        queue.put_nowait(None)


def _public(row: dict[str, Any], answers: list[BattleAnswer]) -> BattlePublic:
    return BattlePublic(
        battle_id=row["battle_id"],
        route=row["route"],
        created_at=row["created_at"],
        turn=row["turns"],
        a=answers[0],
        b=answers[1],
    )


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _error(exc: CanaryError) -> str:
    return side_error(exc.code or exc.type)


def _outcome(battle: dict[str, Any]) -> str:
    return winner_arm(battle["winner"], battle["a"]["arm"], battle["b"]["arm"])


def _anonymous(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """An answer's tool calls without their ids: how an engine makes them could tell
    which model answered (the row keeps them)."""
    return [{k: v for k, v in call.items() if k != "id"} for call in calls] if calls else None


def _side(row: dict[str, Any]) -> BattleSide:
    return BattleSide(
        arm=row["arm"],
        model=row["model_name"],
        version=row["model_version"],
        request_id=row["request_id"],
    )


def _logged_answer(battle: dict[str, Any], side: str, revealed: bool) -> BattleAnswer:
    """A side as logged: None fields while it is being answered; who, once revealed."""
    row = battle[side]
    if row is None:
        return BattleAnswer(content=None, finish_reason=None, error=None)
    failed = row["status"] != OK
    answer = BattleAnswer(
        content=row["response_text"],
        finish_reason=row["finish_reason"],
        error=side_error(row["status"] if row["status"] == DISCONNECTED else row["error_type"])
        if failed
        else None,
        tool_calls=_anonymous(row["tool_calls"]),
    )
    if not revealed:
        return answer
    return RevealedAnswer(**answer.model_dump(), **_side(row).model_dump())
