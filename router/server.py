"""How ``canary serve`` runs uvicorn: connection hygiene and a graceful shutdown.

Connections: idle keep-alive connections live ``keepalive_timeout_s`` (longer than client
pools keep theirs, so the client always closes first and never sends a request into a
connection the server is closing); request headers must arrive within
``header_timeout_s`` (``router.header_timeout``); past ``max_connections`` uvicorn
answers 503 at once.

Shutdown (SIGTERM or Ctrl+C): listening stops at once and idle connections close; the
app's requests in flight get ``shutdown_grace_s`` to finish; then each one still running
ends with ``server_shutting_down`` (a stream: one SSE error event, then the end) and its
row is logged with status ``shutdown``. uvicorn's own deadline is a few seconds later, so
those last events go out and the lifespan then drains the inference log.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Callable, Coroutine
from contextlib import suppress
from functools import partial

import uvicorn
from fastapi import FastAPI

from router.app import drain
from router.config import Settings
from router.header_timeout import HeaderDeadline, protocol_class

log = logging.getLogger(__name__)

#: After the grace: time for the final events to be written before uvicorn cancels.
SHUTDOWN_MARGIN_S = 5


class RouterServer(uvicorn.Server):
    """``uvicorn.Server`` whose shutdown first tells the app to drain its requests."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        drain: Callable[[float], Coroutine[None, None, None]],
        grace_s: float,
    ) -> None:
        super().__init__(config)
        self._drain, self._grace_s = drain, grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The drain runs beside uvicorn's shutdown, which stops listening, closes idle
        # connections and waits for the busy ones until timeout_graceful_shutdown.
        draining = asyncio.create_task(self._drain(self._grace_s))
        try:
            await super().shutdown(sockets)
        finally:
            draining.cancel()
            with suppress(asyncio.CancelledError):
                await draining
        if not getattr(self.lifespan, "should_exit", False):
            # A clean, complete shutdown exits 0; uvicorn would re-raise the signal it
            # caught, and the process would end as killed by SIGTERM.
            self._captured_signals.clear()


def build_config(app: FastAPI, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings from the router's."""

    def count_header_timeout() -> None:
        metrics = getattr(app.state, "metrics", None)  # set in the lifespan, before listening
        if metrics is not None:
            metrics.connections_closed.labels("header_timeout").inc()

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(HeaderDeadline(settings.header_timeout_s, count_header_timeout)),
        log_config=None,
        access_log=False,  # every request is in the inference log already
        timeout_keep_alive=math.ceil(settings.keepalive_timeout_s),
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s) + SHUTDOWN_MARGIN_S,
    )


def serve(app: FastAPI, settings: Settings, *, host: str, port: int) -> None:
    """Run ``app`` until SIGTERM or Ctrl+C, then shut down as the module says."""
    config = build_config(app, settings, host=host, port=port)
    RouterServer(config, drain=partial(drain, app), grace_s=settings.shutdown_grace_s).run()
