"""Engine health: every loaded arm's backend is checked in the background.

Readiness reads the last results instead of calling engines itself, so a load balancer
polling ``/health/ready`` often never multiplies the traffic to the engines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from router.assignment import ArmName
from router.metrics import Metrics
from router.routes_table import Arm, Route, RouteTable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineState:
    """The last check of one arm's engine."""

    route: str
    arm: ArmName
    version: str
    error: str | None  # None: it answered
    checked_at: float  # time.monotonic()

    def describe(self) -> str:
        if self.error is None:
            return "ok"
        return f"down: {self.route}@{self.arm} version {self.version}: {self.error}"


class EngineChecker:
    """Checks every loaded arm each ``interval_s``; a check gets ``timeout_s`` at most."""

    def __init__(
        self, routes: RouteTable, *, metrics: Metrics, interval_s: float, timeout_s: float = 5.0
    ) -> None:
        self._routes = routes
        self._metrics = metrics
        self._interval = interval_s
        self._timeout = timeout_s
        self._states: dict[tuple[str, str], EngineState] = {}

    async def run(self) -> None:
        """Check now, then every interval, until cancelled."""
        while True:
            await self.check_all()
            await asyncio.sleep(self._interval)

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(route, arm) for route, arm in self._routes.arms()))

    async def _check(self, route: Route, arm: Arm) -> None:
        error: str | None = None
        try:
            await asyncio.wait_for(arm.backend.check(), self._timeout)
        except TimeoutError:
            error = f"no answer to the health check in {self._timeout:g} s"
        except Exception as exc:
            error = str(exc) or type(exc).__name__
        key = (route.name, arm.role)
        previous = self._states.get(key)
        self._states[key] = EngineState(route.name, arm.role, arm.version, error, time.monotonic())
        self._metrics.engine_up.labels(route.name, arm.role).set(0 if error else 1)
        if previous is None or (previous.error is None) != (error is None):
            level = logging.INFO if error is None else logging.WARNING
            log.log(
                level,
                "engine up" if error is None else "engine down",
                extra={
                    "route": route.name,
                    "arm": arm.role,
                    "version": arm.version,
                    "error": error,
                },
            )

    def report(self) -> dict[str, dict[str, str]]:
        """Route → arm → ``ok``, ``down: <route@arm version: error>`` or ``unchecked``.

        A result for a version no longer loaded does not count: the arm it was about is gone.
        """
        out: dict[str, dict[str, str]] = {}
        for route, arm in self._routes.arms():
            state = self._states.get((route.name, arm.role))
            fresh = state is not None and state.version == arm.version
            out.setdefault(route.name, {})[arm.role] = (
                state.describe() if state is not None and fresh else "unchecked"
            )
        return out
