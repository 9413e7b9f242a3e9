"""``ChatService``: one chat completion, end to end: assign an arm, call it, fall back.

Every request ends in exactly one inference row (``Ledger.finish``), whatever happened;
shadow calls add their own rows with arm ``shadow``. ``complete_arm``/``stream_arm``
answer from an arm the caller picks (the arena's two sides) on the same path, without
fallback. ``drain`` is shutdown's first step.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from router.assignment import ArmName, Unit, assign
from router.backends import ChatParams, Completion, Delta
from router.completions.drain import Drain, answer_within
from router.completions.ledger import Ledger
from router.completions.payloads import completion_json, headers
from router.completions.shadow import Shadows
from router.completions.streaming import StreamRelay, sse
from router.config import Settings
from router.errors import BackendError, InvalidRequest
from router.inference_log.record import FALLBACK, REJECTED, RequestRecord
from router.inference_log.writer import LogWriter
from router.metrics import Metrics
from router.routes_table import Arm, Route, RouteTable
from router.schemas import ChatCompletionRequest

log = logging.getLogger(__name__)
T = TypeVar("T")
Started = tuple[RequestRecord, Route, Arm, ChatParams]


@dataclass(frozen=True, slots=True)
class ForcedArm:
    """An arm chosen by the caller instead of the split, and the reason the row records."""

    arm: ArmName
    reason: str


class ChatService:
    """Answers chat requests for every route; owns shadow tasks until ``close``."""

    def __init__(
        self,
        *,
        routes: RouteTable,
        writer: LogWriter,
        metrics: Metrics,
        settings: Settings,
        spend: Callable[[str, int], None] | None = None,
    ) -> None:
        self.routes = routes
        self._settings = settings
        self._drain = Drain()
        self._ledger = Ledger(
            routes=routes,
            writer=writer,
            metrics=metrics,
            settings=settings,
            drain=self._drain,
            spend=spend,
        )
        self._streams = StreamRelay(
            ledger=self._ledger, drain=self._drain, timeout_s=settings.request_timeout_s
        )
        self._shadows = Shadows(
            ledger=self._ledger,
            metrics=metrics,
            max_concurrency=settings.shadow_max_concurrency,
            drain=self._drain,
            timeout_s=settings.request_timeout_s,
        )

    @property
    def draining(self) -> bool:
        """Shutdown has begun (readiness can answer 503 so balancers stop sending)."""
        return self._drain.draining

    async def drain(self, grace_s: float) -> None:
        """Shutdown: let requests in flight finish for up to ``grace_s``, then end the rest.

        Each one left ends with ``ServerShuttingDown`` (a stream: one SSE error event; a
        whole answer: a 503) and its row gets status ``shutdown``.
        """
        self._drain.draining = True
        try:
            async with asyncio.timeout(grace_s):
                await self._ledger.idle()
        except TimeoutError:
            log.warning("shutdown grace over; ending the requests still running")
        self._drain.expire()

    async def close(self) -> None:
        """Wait for shadow calls still running, so their rows are logged too."""
        await self._shadows.close()

    # -- entry points -------------------------------------------------------------------
    async def complete(
        self,
        body: ChatCompletionRequest,
        *,
        unit: Unit,
        key_id: str | None = None,
        arm_override: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A whole ``chat.completion``: the JSON body and the response headers."""
        started = self._start(body, unit, key_id, arm_override, None)
        record, result = await self._answer(started, fallback=True)
        return completion_json(record, result), headers(record)

    async def stream(
        self,
        body: ChatCompletionRequest,
        *,
        unit: Unit,
        key_id: str | None = None,
        arm_override: str | None = None,
    ) -> tuple[AsyncIterator[bytes], dict[str, str]]:
        """Server-sent ``chat.completion.chunk`` events and the response headers.

        The first token is awaited before returning, so a challenger that fails to start
        still falls back to the champion and the headers name the arm that answers.
        """
        record, route, arm, params = self._start(body, unit, key_id, arm_override, None)
        deltas, head = await self._open(record, route, arm, params, fallback=True)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = sse(record, self._streams.relay(record, deltas, head), include_usage)
        # A client that leaves before the first event means the generator never starts,
        # so its ``finally`` never runs: log the request when the generator is collected.
        weakref.finalize(events, self._ledger.abandoned, record)
        return events, headers(record)

    async def complete_arm(
        self,
        body: ChatCompletionRequest,
        *,
        arm: ArmName,
        reason: str,
        unit: Unit,
        key_id: str | None = None,
    ) -> tuple[RequestRecord, Completion]:
        """A whole answer from ``arm`` itself: no split, no fallback, no shadow copy.

        The row records ``arm`` and ``reason``. Raises like ``complete``; a ``CanaryError``
        carries the ``request_id`` of the row that logged it.
        """
        started = self._start(body, unit, key_id, None, ForcedArm(arm, reason))
        return await self._answer(started, fallback=False)

    def stream_arm(
        self,
        body: ChatCompletionRequest,
        *,
        arm: ArmName,
        reason: str,
        unit: Unit,
        key_id: str | None = None,
    ) -> tuple[RequestRecord, AsyncGenerator[str, None]]:
        """The row being filled and the text pieces of ``arm``'s streamed answer.

        Nothing is called until the pieces are iterated, so the request id is known
        first. A failure, before or after the first piece, is logged and raised from the
        iteration; the row is logged once the pieces end.
        """
        record, route, chosen, params = self._start(
            body, unit, key_id, None, ForcedArm(arm, reason)
        )
        # Hold the version now: a swap before the first iteration must not close it.
        self._ledger.hold(record, chosen)
        pieces = self._open_and_relay(record, route, chosen, params)
        weakref.finalize(pieces, self._ledger.abandoned, record)
        return record, pieces

    def check(self, body: ChatCompletionRequest) -> Route:
        """The route ``body`` asks for, once its limits are checked (404/400 otherwise)."""
        route = self.routes.get(body.model)
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is not None and max_tokens > self._settings.max_tokens_limit:
            raise InvalidRequest(
                f"max_tokens is {max_tokens}; this router allows at most "
                f"{self._settings.max_tokens_limit}.",
                code="max_tokens_too_large",
            )
        return route

    def log_rejected(
        self,
        route: str,
        message: str,
        status_code: int,
        code: str,
        *,
        status: str = REJECTED,
        key_id: str | None = None,
    ) -> None:
        """Log a request refused before it reached a route (malformed JSON, bad fields)."""
        record = self._ledger.open(route, stream=False, messages=None)
        record.key_id = key_id
        record.status, record.http_status = status, status_code
        record.error_type, record.error_message = code, message
        self._ledger.finish(record)

    # -- steps --------------------------------------------------------------------------
    def _start(
        self,
        body: ChatCompletionRequest,
        unit: Unit,
        key_id: str | None,
        arm_override: str | None,
        forced: ForcedArm | None,
    ) -> Started:
        """The request's row, route, arm and parameters; a refusal is logged and raised."""
        messages = body.message_dicts()
        record = self._ledger.open(body.model, stream=body.stream, messages=messages)
        record.key_id = key_id
        try:
            return (record, *self._prepare(record, body, unit, arm_override, forced))
        except BaseException as exc:
            self._ledger.fail(record, exc)
            self._ledger.finish(record)
            raise

    def _prepare(
        self,
        record: RequestRecord,
        body: ChatCompletionRequest,
        unit: Unit,
        arm_override: str | None,
        forced: ForcedArm | None,
    ) -> tuple[Route, Arm, ChatParams]:
        route = self.check(body)
        unit_id = unit.id
        reason: str
        if forced is None:
            a = assign(
                route=route.name,
                salt=route.salt,
                challenger_bps=route.challenger_bps,
                has_challenger=route.challenger is not None,
                unit_id=unit_id,
                override=self._override(arm_override),
            )
            role, unit_id, reason, record.bucket = a.arm, a.unit_id, a.reason, a.bucket
        else:
            if forced.arm == "challenger" and route.challenger is None:
                raise InvalidRequest(
                    f"Route {route.name!r} has no challenger.", code="no_challenger"
                )
            role, reason = forced.arm, forced.reason
            unit_id = unit_id or f"anon-{uuid.uuid4().hex}"
        arm = route.arm(role)
        record.experiment_id = route.experiment_id
        record.arm, record.model_name, record.model_version = role, arm.model, arm.version
        record.unit_id, record.assignment_reason = unit_id, reason
        record.unit_source = unit.source
        params = ChatParams(
            messages=[_as_engine_message(m) for m in record.messages or ()],
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop,  # type: ignore[arg-type]  # normalised to a list by the schema
            seed=body.seed,
            options=body.options(),
        )
        shadowed = forced is None and role == "champion" and route.shadow
        if shadowed and route.challenger is not None:
            self._shadows.start(route, route.challenger, params, record)
        return route, arm, params

    async def _answer(
        self, started: Started, *, fallback: bool
    ) -> tuple[RequestRecord, Completion]:
        """Call the arm for a whole answer; with ``fallback`` a failing challenger's request
        goes to the champion."""
        record, route, arm, params = started
        timeout_s = self._settings.request_timeout_s
        try:
            served, result = await self._with_fallback(
                record,
                route,
                arm,
                lambda a: answer_within(self._drain, timeout_s, a.backend.complete(params)),
                fallback=fallback,
            )
            self._ledger.succeed(record, served, result)
            return record, result
        except BaseException as exc:
            self._ledger.fail(record, exc)
            raise
        finally:
            self._ledger.finish(record)

    async def _open(
        self, record: RequestRecord, route: Route, arm: Arm, params: ChatParams, *, fallback: bool
    ) -> tuple[AsyncIterator[Delta], list[Delta]]:
        """Start the arm's stream up to its first token; a failure is logged and raised."""
        try:
            served, opened = await self._with_fallback(
                record, route, arm, lambda a: self._streams.open(a, params), fallback=fallback
            )
        except BaseException as exc:
            self._ledger.fail(record, exc)
            self._ledger.finish(record)
            raise
        record.served_arm, record.served_model_version = served.role, served.version
        return opened

    async def _open_and_relay(
        self, record: RequestRecord, route: Route, arm: Arm, params: ChatParams
    ) -> AsyncGenerator[str, None]:
        """The arm's answer as text pieces (the arena shows text)."""
        deltas, head = await self._open(record, route, arm, params, fallback=False)
        async with aclosing(self._streams.relay(record, deltas, head)) as pieces:
            async for delta in pieces:
                if delta.index == 0 and delta.text:
                    yield delta.text

    def _override(self, header: str | None) -> ArmName | None:
        if header is None or not self._settings.allow_arm_override:
            return None
        if header not in ("champion", "challenger"):
            raise InvalidRequest(
                f"X-Canary-Arm must be 'champion' or 'challenger', not {header!r}.",
                code="invalid_arm",
            )
        return header  # type: ignore[return-value]

    async def _with_fallback(
        self,
        record: RequestRecord,
        route: Route,
        arm: Arm,
        attempt: Callable[[Arm], Awaitable[T]],
        *,
        fallback: bool,
    ) -> tuple[Arm, T]:
        """Try the assigned arm; a failing challenger hands the request to the champion."""
        self._ledger.hold(record, arm)
        try:
            return arm, await attempt(arm)
        except BackendError as exc:
            if not fallback or arm.role != "challenger":
                raise
            record.fail(exc, status=FALLBACK)
            log.warning(
                "challenger failed; falling back to champion",
                extra={"request_id": record.request_id, "route": route.name, "error": exc.message},
            )
            self._ledger.hold(record, route.champion)
            answered = await attempt(route.champion)
            record.http_status = 200  # what the client gets; the error stays on the row
            return route.champion, answered


def _as_engine_message(message: dict[str, Any]) -> dict[str, Any]:
    # OpenAI's newer "developer" role is a system prompt to every engine we front.
    if message["role"] == "developer":
        return {**message, "role": "system"}
    return message
