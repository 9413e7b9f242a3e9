"""Readiness = "can this router serve?", with the reasons when it serves in a reduced way.

``not_ready`` (503) only when it cannot: no routes loaded, requests can no longer be
recorded (the inference log says ``down``), or shutdown has begun. Everything else that
is wrong but survivable (database not answering while rows go to the local journal,
registry unreadable, an engine failing its check) is ``degraded``: still 200, so a load
balancer does not drain every replica that shares the broken dependency, while
operators see why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Engine

from router.engine_checks import EngineChecker
from router.inference_log.db import ping
from router.inference_log.writer import LogHealth
from router.routes_table import RouteTable


class RecordsRequests(Protocol):
    """What readiness needs of the inference log writer."""

    def health(self) -> LogHealth: ...


class DatabaseProbe:
    """A database ping bounded in time, shared and cached.

    At most one ping runs at a time (callers share it), and its result is reused for
    ``cache_s``: readiness polled many times a second costs one query, and a server
    that accepts TCP but never answers holds one thread, not one per poll. A caller
    waits ``timeout_s`` at most; the ping itself ends on the driver's connect timeout.
    """

    def __init__(self, engine: Engine, *, timeout_s: float = 3.0, cache_s: float = 1.0) -> None:
        self._engine = engine
        self._timeout = timeout_s
        self._cache_s = cache_s
        self._inflight: asyncio.Task[None] | None = None
        self._last: tuple[float, str | None] | None = None  # (when, None or the failure)

    async def check(self) -> str | None:
        """None when the database answered; else why not."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self._cache_s:
            return self._last[1]
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(asyncio.to_thread(ping, self._engine))
        try:
            await asyncio.wait_for(asyncio.shield(self._inflight), self._timeout)
            result = None
        except TimeoutError:
            result = f"no answer in {self._timeout:g} s"
        except Exception as exc:
            result = f"unreachable: {type(exc).__name__}: {str(exc).strip()[:300]}"
        self._last = (time.monotonic(), result)
        return result

    async def aclose(self) -> None:
        """Forget a ping still running (its thread ends on the connect timeout)."""
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()


class Readiness:
    """Puts the checks together; ``report`` is what ``/health/ready`` answers."""

    def __init__(
        self,
        *,
        routes: RouteTable,
        writer: RecordsRequests,
        database: DatabaseProbe,
        engines: EngineChecker | None,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.routes = routes
        self.draining = draining
        self.writer = writer
        self.database = database
        self.engines = engines

    async def report(self) -> tuple[int, dict[str, Any]]:
        """``(http status, {"status": ready|degraded|not_ready, "checks": {...}})``."""
        log_health = self.writer.health()
        database = await self.database.check()
        engines = self.engines.report() if self.engines is not None else {}
        checks: dict[str, Any] = {
            "arms": "ok" if self.routes.loaded else "no routes loaded",
            "log": "ok"
            if log_health.status == "ok"
            else f"{log_health.status}: {log_health.reason}",
            "database": database or "ok",
            "registry": self.routes.status,
            "engines": engines,
        }
        if self.draining():
            checks["shutdown"] = "draining: finishing the requests in flight"
        if not self.routes.loaded or log_health.status == "down" or self.draining():
            return 503, {"status": "not_ready", "checks": checks}
        engines_ok = all(
            s in ("ok", "unchecked") for arms in engines.values() for s in arms.values()
        )
        degraded = (
            log_health.status != "ok"
            or database is not None
            or self.routes.status != "ok"
            or not engines_ok
        )
        return 200, {"status": "degraded" if degraded else "ready", "checks": checks}
