"""Streamed answers: open the arm's stream, relay its pieces into the row, write SSE.

Every wait for the next chunk is bounded by ``request_timeout_s`` (a stalled engine) and
by shutdown's deadline (``Drain``); the ``yield`` to the consumer is always outside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

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
                    if delta.text or delta.finish_reason:
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
    ) -> AsyncGenerator[str, None]:
        """The answer's text pieces, filling the row as they pass; logs the row at the end.

        A failure mid-stream (the engine's, a stall, shutdown's deadline) is recorded on
        the row and raised as a ``CanaryError``.
        """
        parts: list[str] = []
        finish, usage = "stop", None
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
                if delta.text:
                    record.mark_first_token()
                    parts.append(delta.text)
                    yield delta.text
                if delta.finish_reason:
                    finish, usage = delta.finish_reason, delta.usage
            record.response_text = "".join(parts)
            completion = Completion(record.response_text, finish, usage or Usage())
            self._ledger.succeed(record, None, completion)
        except (CanaryError, TimeoutError) as exc:
            error = exc if isinstance(exc, CanaryError) else BackendTimeout("the stream stalled")
            record.response_text = "".join(parts)
            record.status = OK  # a mid-stream failure is the served arm's, not a fallback
            self._ledger.fail(record, error)
            if error is exc:
                raise
            raise error from exc
        except (asyncio.CancelledError, GeneratorExit) as exc:
            # Cancelled, or closed unfinished: the client went away (or shutdown cut it).
            record.response_text = "".join(parts)
            self._ledger.fail(record, exc)
            raise
        finally:
            await deltas.aclose()  # type: ignore[attr-defined]
            self._ledger.finish(record)


async def sse(
    record: RequestRecord, pieces: AsyncGenerator[str, None], include_usage: bool
) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` events around the relayed pieces, then ``[DONE]``; a
    failure after the headers went out is one last error event instead, as OpenAI does."""
    chunk = ChunkWriter(record)
    async with aclosing(pieces):
        try:
            yield chunk.event({"role": "assistant", "content": ""})
            async for piece in pieces:
                yield chunk.event({"content": piece})
            yield chunk.event({}, finish_reason=record.finish_reason)
            if include_usage:
                yield chunk.usage(record)
            yield DONE
        except CanaryError as error:
            yield error_event(error)
