"""One chat completion, end to end: assign an arm, call it, fall back, log, count.

Every request ends in exactly one inference row (``_finish``), whatever happened; shadow
calls add their own rows with arm ``shadow``. ``complete_arm``/``stream_arm`` answer from
an arm the caller picks (the arena's two sides) on the same path, without fallback.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from router.assignment import ArmName, assign
from router.backends import ChatParams, Completion, Delta, Usage
from router.config import Settings
from router.errors import BackendError, BackendTimeout, CanaryError, InvalidRequest
from router.inference_log.record import DISCONNECTED, FALLBACK, OK, RequestRecord
from router.inference_log.writer import LogWriter
from router.metrics import Metrics
from router.routes_table import Arm, Route, RouteTable
from router.schemas import ChatCompletionRequest

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ForcedArm:
    """An arm chosen by the caller instead of the split, and the reason the row records."""

    arm: ArmName
    reason: str


class ChatService:
    """Answers chat requests for every route; owns shadow tasks until ``close``."""

    def __init__(
        self, *, routes: RouteTable, writer: LogWriter, metrics: Metrics, settings: Settings
    ) -> None:
        self.routes = routes
        self._writer = writer
        self._metrics = metrics
        self._settings = settings
        self._shadow_slots = asyncio.Semaphore(settings.shadow_max_concurrency)
        self._background: set[asyncio.Task[None]] = set()
        # Arms each unfinished request uses; a version swapped out closes once released.
        self._held: dict[str, list[Arm]] = {}

    async def close(self) -> None:
        """Wait for shadow calls still running, so their rows are logged too."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- entry points -------------------------------------------------------------------
    async def complete(
        self, body: ChatCompletionRequest, *, unit: str | None, arm_override: str | None
    ) -> tuple[bytes, dict[str, str]]:
        """A whole ``chat.completion``: the JSON body and the response headers."""
        started = self._start(body, unit, arm_override, None)
        record, result = await self._answer(started, fallback=True)
        return _completion_json(record, result), _headers(record)

    async def stream(
        self, body: ChatCompletionRequest, *, unit: str | None, arm_override: str | None
    ) -> tuple[AsyncIterator[bytes], dict[str, str]]:
        """Server-sent ``chat.completion.chunk`` events and the response headers.

        The first token is awaited before returning, so a challenger that fails to start
        still falls back to the champion and the headers name the arm that answers.
        """
        record, route, arm, params = self._start(body, unit, arm_override, None)
        deltas, head = await self._open(record, route, arm, params, fallback=True)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = self._sse(record, self._relay(record, deltas, head), include_usage)
        # A client that leaves before the first event means the generator never starts,
        # so its ``finally`` never runs: log the request when the generator is collected.
        weakref.finalize(events, self._abandoned, record)
        return events, _headers(record)

    async def complete_arm(
        self, body: ChatCompletionRequest, *, arm: ArmName, reason: str, unit: str | None
    ) -> tuple[RequestRecord, Completion]:
        """A whole answer from ``arm`` itself: no split, no fallback, no shadow copy.

        The row records ``arm`` and ``reason``. Raises like ``complete``; a ``CanaryError``
        carries the ``request_id`` of the row that logged it.
        """
        started = self._start(body, unit, None, ForcedArm(arm, reason))
        return await self._answer(started, fallback=False)

    def stream_arm(
        self, body: ChatCompletionRequest, *, arm: ArmName, reason: str, unit: str | None
    ) -> tuple[RequestRecord, AsyncGenerator[str, None]]:
        """The row being filled and the text pieces of ``arm``'s streamed answer.

        Nothing is called until the pieces are iterated, so the request id is known
        first. A failure, before or after the first piece, is logged and raised from the
        iteration; the row is logged once the pieces end.
        """
        record, route, chosen, params = self._start(body, unit, None, ForcedArm(arm, reason))
        # Hold the version now: a swap before the first iteration must not close it.
        self._hold(record, chosen)
        pieces = self._open_and_relay(record, route, chosen, params)
        weakref.finalize(pieces, self._abandoned, record)
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
        self, route: str, message: str, status_code: int, code: str, *, status: str = "rejected"
    ) -> None:
        """Log a request refused before it reached a route (malformed JSON, bad fields)."""
        record = self._record_for(route, stream=False, messages=None)
        record.status, record.http_status = status, status_code
        record.error_type, record.error_message = code, message
        self._finish(record)

    # -- steps --------------------------------------------------------------------------
    def _record(self, body: ChatCompletionRequest) -> RequestRecord:
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        return self._record_for(body.model, stream=body.stream, messages=messages)

    def _record_for(
        self, route: str, *, stream: bool, messages: list[dict[str, Any]] | None
    ) -> RequestRecord:
        self._metrics.in_flight.labels(self._route_label(route)).inc()
        return RequestRecord(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            created_at=datetime.now(UTC),
            route=route,
            stream=stream,
            messages=messages,
        )

    def _start(
        self,
        body: ChatCompletionRequest,
        unit: str | None,
        arm_override: str | None,
        forced: ForcedArm | None,
    ) -> tuple[RequestRecord, Route, Arm, ChatParams]:
        """The request's row, route, arm and parameters; a refusal is logged and raised."""
        record = self._record(body)
        try:
            return (record, *self._prepare(record, body, unit, arm_override, forced))
        except BaseException as exc:
            _record_failure(record, exc)
            self._finish(record)
            raise

    def _prepare(
        self,
        record: RequestRecord,
        body: ChatCompletionRequest,
        unit: str | None,
        arm_override: str | None,
        forced: ForcedArm | None,
    ) -> tuple[Route, Arm, ChatParams]:
        route = self.check(body)
        unit_id = body.user or unit
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
        params = ChatParams(
            messages=[{"role": _role(m.role), "content": m.content} for m in body.messages],
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stop,  # type: ignore[arg-type]  # normalised to a list by the schema
            seed=body.seed,
        )
        shadowed = forced is None and role == "champion" and route.shadow
        if shadowed and route.challenger is not None:
            self._start_shadow(route, route.challenger, params, record)
        return route, arm, params

    async def _answer(
        self, started: tuple[RequestRecord, Route, Arm, ChatParams], *, fallback: bool
    ) -> tuple[RequestRecord, Completion]:
        """Call the arm for a whole answer; with ``fallback`` a failing challenger's request
        goes to the champion."""
        record, route, arm, params = started
        try:
            served, result = await self._with_fallback(
                record,
                route,
                arm,
                lambda a: self._timed(a.backend.complete(params)),
                fallback=fallback,
            )
            self._succeed(record, served, result)
            return record, result
        except BaseException as exc:
            _record_failure(record, exc)
            raise
        finally:
            self._finish(record)

    async def _open(
        self, record: RequestRecord, route: Route, arm: Arm, params: ChatParams, *, fallback: bool
    ) -> tuple[AsyncIterator[Delta], list[Delta]]:
        """Start the arm's stream up to its first token; a failure is logged and raised."""
        try:
            served, opened = await self._with_fallback(
                record, route, arm, lambda a: self._open_stream(a, params), fallback=fallback
            )
        except BaseException as exc:
            _record_failure(record, exc)
            self._finish(record)
            raise
        record.served_arm, record.served_model_version = served.role, served.version
        return opened

    async def _open_and_relay(
        self, record: RequestRecord, route: Route, arm: Arm, params: ChatParams
    ) -> AsyncGenerator[str, None]:
        deltas, head = await self._open(record, route, arm, params, fallback=False)
        async with aclosing(self._relay(record, deltas, head)) as pieces:
            async for piece in pieces:
                yield piece

    def _override(self, header: str | None) -> ArmName | None:
        if header is None or not self._settings.allow_arm_override:
            return None
        if header not in ("champion", "challenger"):
            raise InvalidRequest(
                f"X-Canary-Arm must be 'champion' or 'challenger', not {header!r}.",
                code="invalid_arm",
            )
        return header  # type: ignore[return-value]

    async def _timed(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._settings.request_timeout_s):
                return await call
        except TimeoutError as exc:
            raise BackendTimeout(
                f"the model did not answer within {self._settings.request_timeout_s:g} s"
            ) from exc

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
        self._hold(record, arm)
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
            self._hold(record, route.champion)
            return route.champion, await attempt(route.champion)

    async def _open_stream(
        self, arm: Arm, params: ChatParams
    ) -> tuple[AsyncIterator[Delta], list[Delta]]:
        """Start streaming and read up to the first token (or the end)."""
        deltas = aiter(arm.backend.stream(params))
        head: list[Delta] = []
        try:
            async with asyncio.timeout(self._settings.request_timeout_s):
                async for delta in deltas:
                    head.append(delta)
                    if delta.text or delta.finish_reason:
                        break
        except TimeoutError as exc:
            await deltas.aclose()  # type: ignore[attr-defined]
            raise BackendTimeout(
                f"no first token within {self._settings.request_timeout_s:g} s"
            ) from exc
        except BaseException:
            await deltas.aclose()  # type: ignore[attr-defined]
            raise
        return deltas, head

    async def _relay(
        self, record: RequestRecord, deltas: AsyncIterator[Delta], head: list[Delta]
    ) -> AsyncGenerator[str, None]:
        """The answer's text pieces, filling the row as they pass; logs the row at the end.

        A failure mid-stream is recorded on the row and raised as a ``CanaryError``.
        """
        parts: list[str] = []
        finish, usage = "stop", None
        try:
            pending = iter(head)
            while True:
                delta = next(pending, None)
                if delta is None:
                    async with asyncio.timeout(self._settings.request_timeout_s):
                        delta = await anext(deltas, None)
                    if delta is None:
                        break
                if delta.queue_wait_ms is not None:
                    record.queue_wait_ms = delta.queue_wait_ms
                if delta.text:
                    record.mark_first_token()
                    parts.append(delta.text)
                    yield delta.text
                if delta.finish_reason:
                    finish, usage = delta.finish_reason, delta.usage
            record.response_text = "".join(parts)
            self._succeed(record, None, Completion(record.response_text, finish, usage or Usage()))
        except asyncio.CancelledError as exc:  # the client went away mid-stream
            record.response_text = "".join(parts)
            _record_failure(record, exc)
            raise
        except (CanaryError, TimeoutError) as exc:
            error = exc if isinstance(exc, CanaryError) else BackendTimeout("the stream stalled")
            record.response_text = "".join(parts)
            record.status = OK  # a mid-stream failure is the served arm's, not a fallback
            record.fail(error)
            if error is exc:
                raise
            raise error from exc
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]
            self._finish(record)

    async def _sse(
        self, record: RequestRecord, pieces: AsyncGenerator[str, None], include_usage: bool
    ) -> AsyncIterator[bytes]:
        """``chat.completion.chunk`` events around the relayed pieces."""
        chunk = _ChunkWriter(record)
        async with aclosing(pieces):
            try:
                yield chunk.event({"role": "assistant", "content": ""})
                async for piece in pieces:
                    yield chunk.event({"content": piece})
                yield chunk.event({}, finish_reason=record.finish_reason)
                if include_usage:
                    yield chunk.usage(record)
                yield b"data: [DONE]\n\n"
            except CanaryError as error:
                # Headers are gone: the error travels as one last event, as OpenAI does.
                yield b"data: " + orjson.dumps(error.body()) + b"\n\n"

    def _succeed(self, record: RequestRecord, served: Arm | None, result: Completion) -> None:
        if served is not None:
            record.served_arm, record.served_model_version = served.role, served.version
        if record.status != FALLBACK:
            record.status = OK
        record.response_text = result.text
        record.finish_reason = result.finish_reason
        record.prompt_tokens = result.usage.prompt_tokens
        record.completion_tokens = result.usage.completion_tokens
        if result.queue_wait_ms and record.queue_wait_ms is None:
            record.queue_wait_ms = result.queue_wait_ms
        price = self._settings.price_for(record.model_name or "", record.model_version or "")
        if price is not None:
            record.cost_usd = (
                result.usage.prompt_tokens * price.prompt
                + result.usage.completion_tokens * price.completion
            ) / 1_000_000

    def _hold(self, record: RequestRecord, arm: Arm) -> None:
        arm.acquire()
        self._held.setdefault(record.request_id, []).append(arm)

    def _abandoned(self, record: RequestRecord) -> None:
        if not record.finished:
            record.status, record.http_status = DISCONNECTED, 499
            self._finish(record)

    def _route_label(self, route: str) -> str:
        """Clients choose ``model``; only known routes become label values."""
        return route if route in self.routes else "unknown"

    def _finish(self, record: RequestRecord) -> None:
        """Log the row and count it; once per request, whichever path ends it."""
        if record.finished:
            return
        record.finished = True
        for arm in self._held.pop(record.request_id, ()):
            arm.release()
        record.latency_ms = record.elapsed_ms()
        m = self._metrics
        m.in_flight.labels(self._route_label(record.route)).dec()
        self._writer.submit(record.row(store_prompts=self._settings.store_prompts))
        if record.arm is None:  # refused before an arm was picked
            m.requests.labels(self._route_label(record.route), "none", "", record.status).inc()
        else:
            labels = (record.route, record.arm, record.model_version or "")
            m.requests.labels(*labels, record.status).inc()
            m.latency.labels(*labels).observe(record.latency_ms / 1000)
            if record.ttft_ms is not None:
                m.ttft.labels(*labels).observe(record.ttft_ms / 1000)
            if record.queue_wait_ms is not None:
                m.queue_wait.labels(*labels).observe(record.queue_wait_ms / 1000)
            if record.prompt_tokens:
                m.prompt_tokens.labels(*labels).inc(record.prompt_tokens)
            if record.completion_tokens:
                m.completion_tokens.labels(*labels).inc(record.completion_tokens)
        log.info(
            "chat completion",
            extra={
                "request_id": record.request_id,
                "route": record.route,
                "arm": record.arm,
                "served_arm": record.served_arm,
                "status": record.status,
                "latency_ms": round(record.latency_ms, 2),
            },
        )

    # -- shadow -------------------------------------------------------------------------
    def _start_shadow(
        self, route: Route, challenger: Arm, params: ChatParams, parent: RequestRecord
    ) -> None:
        if self._shadow_slots.locked():
            self._metrics.shadow_skipped.labels(route.name).inc()
            return
        task = asyncio.create_task(self._shadow(route, challenger, params, parent))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow(
        self, route: Route, challenger: Arm, params: ChatParams, parent: RequestRecord
    ) -> None:
        async with self._shadow_slots:
            record = self._record_for(route.name, stream=False, messages=parent.messages)
            record.shadow_of = parent.request_id
            record.experiment_id = route.experiment_id
            record.arm = record.served_arm = "shadow"
            record.model_name, record.model_version = challenger.model, challenger.version
            record.served_model_version = challenger.version
            record.unit_id, record.assignment_reason = parent.unit_id, parent.assignment_reason
            self._hold(record, challenger)
            try:
                result = await self._timed(challenger.backend.complete(params))
                self._succeed(record, None, result)
            except Exception as exc:
                record.fail(exc)
            finally:
                self._finish(record)


class _ChunkWriter:
    """Serialises ``chat.completion.chunk`` events for one stream."""

    def __init__(self, record: RequestRecord) -> None:
        self._base = {
            "id": record.request_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": record.route,
        }

    def event(self, delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        body = {
            **self._base,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def usage(self, record: RequestRecord) -> bytes:
        body = {**self._base, "choices": [], "usage": _usage(record)}
        return b"data: " + orjson.dumps(body) + b"\n\n"


def _role(role: str) -> str:
    # OpenAI's newer "developer" role is a system prompt to every engine we front.
    return "system" if role == "developer" else role


def _usage(record: RequestRecord) -> dict[str, int]:
    prompt, completion = record.prompt_tokens or 0, record.completion_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion_json(record: RequestRecord, result: Completion) -> bytes:
    return orjson.dumps(
        {
            "id": record.request_id,
            "object": "chat.completion",
            "created": int(record.created_at.timestamp()),
            "model": record.route,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": _usage(record),
        }
    )


def _headers(record: RequestRecord) -> dict[str, str]:
    return {
        "x-request-id": record.request_id,
        "x-canary-arm": record.served_arm or record.arm or "",
        "x-canary-model-version": record.served_model_version or record.model_version or "",
    }


def _record_failure(record: RequestRecord, exc: BaseException) -> None:
    if isinstance(exc, CanaryError):
        exc.request_id = record.request_id
    if isinstance(exc, asyncio.CancelledError):
        record.fail(exc, status=DISCONNECTED)
        record.http_status = 499  # nginx's "client closed request"
    elif record.status == FALLBACK and isinstance(exc, CanaryError):
        # The champion failed too: keep the challenger's error and add this one.
        record.error_message = f"{record.error_message}; then the champion: {exc.message}"
        record.http_status = exc.status_code
    else:
        record.fail(exc)
