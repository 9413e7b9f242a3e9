"""Streamed answers: open the arm's stream, relay its pieces into the row, write SSE.

Every wait for the next chunk is bounded by ``request_timeout_s`` (a stalled engine) and
by shutdown's deadline (``Drain``); the ``yield`` to the consumer is always outside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from router.backends import ChatParams, Completion, Delta, Usage
from router.completions.drain import Drain
from router.completions.ledger import Ledger
from router.completions.payloads import DONE, ChunkWriter, error_event
from router.errors import BackendTimeout, CanaryError
from router.inference_log.record import OK, RequestRecord
from router.routes_table import Arm


class StreamRelay:
    """Starts streams and relays them, filling and finishing the request's row."""

    def __init__(self, *, ledger: Ledger, drain: Drain, timeout_s: float) -> None:
        self._ledger = ledger
        self._drain = drain
        self._timeout_s = timeout_s

    async def open(self, arm: Arm, params: ChatParams) -> tuple[AsyncIterator[Delta], list[Delta]]:
        """Start streaming and read up to the first token (or the end)."""
        deltas = aiter(arm.backend.stream(params))
        head: list[Delta] = []
        try:
            async with self._drain.timeout(self._timeout_s):
                async for delta in deltas:
                    head.append(delta)
                    if delta.text or delta.fields or delta.finish_reason:
                        break
        except TimeoutError as exc:
            await deltas.aclose()  # type: ignore[attr-defined]
            raise BackendTimeout(f"no first token within {self._timeout_s:g} s") from exc
        except BaseException:
            await deltas.aclose()  # type: ignore[attr-defined]
            raise
        return deltas, head

    async def relay(
        self, record: RequestRecord, deltas: AsyncIterator[Delta], head: list[Delta]
    ) -> AsyncGenerator[Delta, None]:
        """The answer's pieces for the client (text, tool-call pieces, logprobs, each
        choice's end), filling the row as they pass; logs the row at the end.

        A failure mid-stream (the engine's, a stall, shutdown's deadline) is recorded on
        the row, with the text so far, and raised as a ``CanaryError``.
        """
        answer = _Answer()
        try:
            pending = iter(head)
            while True:
                delta = next(pending, None)
                if delta is None:
                    async with self._drain.timeout(self._timeout_s):
                        delta = await anext(deltas, None)
                    if delta is None:
                        break
                if delta.queue_wait_ms is not None:
                    record.queue_wait_ms = delta.queue_wait_ms
                if delta.text or delta.fields:
                    record.mark_first_token()
                answer.add(delta)
                if delta.text or delta.fields or delta.logprobs or delta.finish_reason:
                    yield delta
            completion = Completion(answer.text(), answer.finish, answer.usage or Usage())
            self._ledger.succeed(record, None, completion)
            record.tool_calls = answer.tool_calls()
        except (CanaryError, TimeoutError) as exc:
            error = exc if isinstance(exc, CanaryError) else BackendTimeout("the stream stalled")
            answer.fill(record)
            record.status = OK  # a mid-stream failure is the served arm's, not a fallback
            self._ledger.fail(record, error)
            if error is exc:
                raise
            raise error from exc
        except (asyncio.CancelledError, GeneratorExit) as exc:
            # Cancelled, or closed unfinished: the client went away (or shutdown cut it).
            answer.fill(record)
            self._ledger.fail(record, exc)
            raise
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]
            self._ledger.finish(record)


class _Answer:
    """What a stream said in its first choice, gathered for the row: the text, the tool
    calls (their pieces merged by index, arguments joined), the finish and the usage."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish = "stop"
        self.usage: Usage | None = None

    def add(self, delta: Delta) -> None:
        if delta.usage is not None:
            self.usage = delta.usage
        if delta.index != 0:
            return
        if delta.text:
            self.parts.append(delta.text)
        for piece in (delta.fields or {}).get("tool_calls") or ():
            call = self.calls.setdefault(piece.get("index", 0), {"function": {"arguments": ""}})
            for key in ("id", "type"):
                if piece.get(key):
                    call[key] = piece[key]
            function = piece.get("function") or {}
            if function.get("name"):
                call["function"]["name"] = function["name"]
            call["function"]["arguments"] += function.get("arguments") or ""
        if delta.finish_reason:
            self.finish = delta.finish_reason

    def text(self) -> str:
        return "".join(self.parts)

    def tool_calls(self) -> list[dict[str, Any]] | None:
        return [self.calls[i] for i in sorted(self.calls)] or None

    def fill(self, record: RequestRecord) -> None:
        """The row of an answer cut short: what it said so far."""
        record.response_text = self.text()
        record.tool_calls = self.tool_calls()


async def sse(
    record: RequestRecord, pieces: AsyncGenerator[Delta, None], include_usage: bool
) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` events around the relayed pieces, then ``[DONE]``; a
    failure after the headers went out is one last error event instead, as OpenAI does."""
    chunk = ChunkWriter(record)
    started: set[int] = set()
    finished: set[int] = set()
    async with aclosing(pieces):
        try:
            yield chunk.event({"role": "assistant", "content": ""})
            started.add(0)
            async for delta in pieces:
                body: dict[str, Any] = {**(delta.fields or {})}
                if delta.index not in started:  # another choice's first piece (n > 1)
                    body["role"] = "assistant"
                    started.add(delta.index)
                if delta.text:
                    body["content"] = delta.text
                if delta.finish_reason:
                    finished.add(delta.index)
                yield chunk.event(body, delta.finish_reason, delta.index, delta.logprobs)
            if 0 not in finished:
                yield chunk.event({}, finish_reason=record.finish_reason)
            if include_usage:
                yield chunk.usage(record)
            yield DONE
        except CanaryError as error:
            yield error_event(error)
