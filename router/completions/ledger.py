"""The inference row of every request: opened, filled, finished exactly once, counted.

Also the arms each unfinished request holds (a version swapped out closes once the last
holder lets go) and the rows still open, which shutdown waits for.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from router.backends import Completion
from router.completions.drain import Drain
from router.config import Settings
from router.errors import CanaryError, ServerShuttingDown
from router.inference_log.record import DISCONNECTED, FALLBACK, OK, SHUTDOWN, RequestRecord
from router.inference_log.writer import LogWriter
from router.metrics import Metrics, route_label
from router.routes_table import Arm, RouteTable

# The request log line keeps the name it had before the package was split: dashboards
# and tests filter on it.
log = logging.getLogger("router.completions")


class Ledger:
    """Opens and finishes rows; ``finish`` hands each to the writer once, whatever path
    ends the request."""

    def __init__(
        self,
        *,
        routes: RouteTable,
        writer: LogWriter,
        metrics: Metrics,
        settings: Settings,
        drain: Drain,
        spend: Callable[[str, int], None] | None = None,
    ) -> None:
        self._routes = routes
        self._spend = spend  # charges a key's tokens to its tokens-per-minute limit
        self._writer = writer
        self._metrics = metrics
        self._settings = settings
        self._drain = drain
        self._held: dict[str, list[Arm]] = {}
        self._open: set[str] = set()
        self._idle = asyncio.Event()

    def open(
        self, route: str, *, stream: bool, messages: list[dict[str, Any]] | None
    ) -> RequestRecord:
        """A new row for a request to ``route``, counted in flight until finished."""
        self._metrics.in_flight.labels(route_label(route, self._routes)).inc()
        record = RequestRecord(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            created_at=datetime.now(UTC),
            route=route,
            stream=stream,
            messages=messages,
        )
        self._open.add(record.request_id)
        return record

    async def idle(self) -> None:
        """Return once no row is open."""
        while self._open:
            self._idle.clear()
            await self._idle.wait()

    def hold(self, record: RequestRecord, arm: Arm) -> None:
        """``record`` uses ``arm`` until it finishes."""
        arm.acquire()
        self._held.setdefault(record.request_id, []).append(arm)

    def succeed(self, record: RequestRecord, served: Arm | None, result: Completion) -> None:
        """Fill the row from a whole answer (a fallback keeps its status)."""
        if served is not None:
            record.served_arm, record.served_model_version = served.role, served.version
        if record.status != FALLBACK:
            record.status = OK
        record.response_text = result.text
        record.tool_calls = result.tool_calls
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

    def fail(self, record: RequestRecord, exc: BaseException) -> None:
        """Record why the request failed; a ``CanaryError`` learns its row's id."""
        if isinstance(exc, CanaryError):
            exc.request_id = record.request_id
        gone = isinstance(exc, asyncio.CancelledError | GeneratorExit)
        if gone and self._drain.expired:
            # Past the grace uvicorn cancels what is left: that is shutdown, not the client.
            exc, gone = self._drain.error(), False
        if isinstance(exc, ServerShuttingDown):
            record.fail(exc, status=SHUTDOWN)
        elif gone:
            record.fail(exc, status=DISCONNECTED)
            record.http_status = 499  # nginx's "client closed request"
        elif record.status == FALLBACK and isinstance(exc, CanaryError):
            # The champion failed too: keep the challenger's error and add this one.
            record.error_message = f"{record.error_message}; then the champion: {exc.message}"
            record.http_status = exc.status_code
        else:
            record.fail(exc)

    def abandoned(self, record: RequestRecord) -> None:
        """A stream collected before it ran: its client left (or shutdown cut it)."""
        if record.finished:
            return
        if self._drain.expired:
            self.fail(record, self._drain.error())
        else:
            record.status, record.http_status = DISCONNECTED, 499
        self.finish(record)

    def finish(self, record: RequestRecord) -> None:
        """Log the row and count it; once per request, whichever path ends it."""
        if record.finished:
            return
        record.finished = True
        for arm in self._held.pop(record.request_id, ()):
            arm.release()
        self._open.discard(record.request_id)
        if not self._open:
            self._idle.set()
        record.latency_ms = record.elapsed_ms()
        self._metrics.in_flight.labels(route_label(record.route, self._routes)).dec()
        self._writer.submit(record.row(store_prompts=self._settings.store_prompts))
        self._count(record)
        tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        if self._spend is not None and record.key_id is not None and tokens:
            self._spend(record.key_id, tokens)
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

    def _count(self, record: RequestRecord) -> None:
        m = self._metrics
        if record.arm is None:  # refused before an arm was picked
            m.requests.labels(
                route_label(record.route, self._routes), "none", "", record.status
            ).inc()
            return
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
