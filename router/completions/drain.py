"""Shutdown's clock for requests in flight.

Every wait on a model (a whole answer, the first token, each later chunk) runs inside
``Drain.timeout``. At the end of the shutdown grace period ``expire`` moves all of those
timeouts to now, so each request ends promptly with ``ServerShuttingDown`` wherever it
waits, and can still tell its client (an SSE error event, a 503) and log its row. Waits
never span a ``yield``: a stream suspended in its consumer meets the expired clock on its
next wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from types import TracebackType
from typing import TypeVar

from router.errors import BackendTimeout, ServerShuttingDown

T = TypeVar("T")

SHUTDOWN_MESSAGE = "The router is shutting down; the request was cut at the end of its grace."


class Drain:
    """Whether shutdown has begun, whether its grace has run out, and the waits it ends."""

    def __init__(self) -> None:
        self.draining = False
        self.expired = False
        self._waits: set[asyncio.Timeout] = set()

    def timeout(self, delay: float) -> _Wait:
        """``asyncio.timeout(delay)`` that shutdown can end early (``ServerShuttingDown``)."""
        return _Wait(self, delay)

    def expire(self) -> None:
        """The grace is over: every wait in progress, and any later one, ends now."""
        self.expired = True
        now = asyncio.get_running_loop().time()
        for wait in self._waits:
            if not wait.expired():  # already firing: it ends on its own
                wait.reschedule(now)

    @staticmethod
    def error() -> ServerShuttingDown:
        return ServerShuttingDown(SHUTDOWN_MESSAGE)


class _Wait:
    """One registered ``asyncio.Timeout``; a class, not a generator, so no ``yield`` sits
    inside the timeout."""

    def __init__(self, drain: Drain, delay: float) -> None:
        self._drain, self._delay = drain, delay
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> None:
        if self._drain.expired:
            raise self._drain.error()
        self._timeout = asyncio.timeout(self._delay)
        await self._timeout.__aenter__()
        self._drain._waits.add(self._timeout)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._timeout is not None
        self._drain._waits.discard(self._timeout)
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError as timed_out:
            if self._drain.expired:
                raise self._drain.error() from timed_out
            raise


async def answer_within(drain: Drain, timeout_s: float, call: Awaitable[T]) -> T:
    """Await a model's whole answer: ``BackendTimeout`` past ``timeout_s``,
    ``ServerShuttingDown`` once shutdown's grace has run out."""
    try:
        async with drain.timeout(timeout_s):
            return await call
    except ServerShuttingDown:
        if isinstance(call, Coroutine):
            call.close()  # refused before it ran: no "never awaited" warning
        raise
    except TimeoutError as exc:
        raise BackendTimeout(f"the model did not answer within {timeout_s:g} s") from exc
