"""The live routes: each with its loaded arms and current weights, changeable at run time.

Arms come from an ``ArmSource``: the settings (``StaticArmSource``) or the MLflow
registry (``router.registry_source``). ``watch`` polls the source; when a version
changes, the new one loads in the background and is swapped in atomically (one
assignment on the event loop). Requests hold the arm they started on, so in-flight
requests finish on the old version, which is closed once the last one is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import Gauge

from router.assignment import BUCKETS, ArmName
from router.backends import Backend, SpecBase, build_backend
from router.config import RouteConfig
from router.errors import RouteNotFound

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Arm:
    """One loaded model version serving one side of a route."""

    role: ArmName
    model: str
    version: str
    backend: Backend
    in_flight: int = 0  # requests using this arm now; a retired arm closes at zero
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def acquire(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    async def drained(self) -> None:
        """Return once no request uses this arm."""
        if self.in_flight:
            await self._idle.wait()


@dataclass(slots=True)
class Route:
    name: str
    champion: Arm
    challenger: Arm | None
    challenger_bps: int
    salt: str
    experiment_id: str | None
    shadow: bool

    def arm(self, role: ArmName) -> Arm:
        if role == "challenger" and self.challenger is not None:
            return self.challenger
        return self.champion

    @property
    def weights(self) -> dict[str, float]:
        """Share of units per arm, 0..1."""
        challenger = self.challenger_bps / BUCKETS if self.challenger else 0.0
        return {"champion": 1.0 - challenger, "challenger": challenger}


class ArmSource(Protocol):
    """Where routes and the specs of their arms come from."""

    def load(self) -> dict[str, RouteConfig]: ...


class StaticArmSource:
    """Routes exactly as the settings (or YAML file) give them."""

    def __init__(self, routes: dict[str, RouteConfig]) -> None:
        self._routes = routes

    def load(self) -> dict[str, RouteConfig]:
        return dict(self._routes)


class RouteTable:
    """Route name → ``Route``. Owns the backends: ``start`` loads them, ``close`` frees them."""

    def __init__(self, source: ArmSource, *, resolve_gguf: Callable[[str], Path]) -> None:
        self._source = source
        self._resolve_gguf = resolve_gguf
        self._routes: dict[str, Route] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        #: "ok", or "degraded: <why>" while the source cannot be read or a version not loaded.
        self.status = "ok"

    async def start(self) -> None:
        configs = await asyncio.to_thread(self._source.load)
        routes = {name: self._build(name, cfg) for name, cfg in configs.items()}
        backends = [
            arm.backend for r in routes.values() for arm in (r.champion, r.challenger) if arm
        ]
        try:
            await asyncio.gather(*(b.start() for b in backends))
        except BaseException:
            await asyncio.gather(*(b.aclose() for b in backends), return_exceptions=True)
            raise
        self._routes = routes

    async def refresh(self) -> list[str]:
        """Load what changed in the source and swap it in; returns what changed."""
        configs = await asyncio.to_thread(self._source.load)
        changes: list[str] = []
        for name, cfg in configs.items():
            route = self._routes.get(name)
            if route is None:
                new = self._build(name, cfg)
                arms = [a for a in (new.champion, new.challenger) if a]
                await asyncio.gather(*(a.backend.start() for a in arms))
                self._routes[name] = new
                changes.append(f"{name}: new route")
                continue
            for role, spec in (("champion", cfg.champion), ("challenger", cfg.challenger)):
                current: Arm | None = getattr(route, role)
                if spec is None and current is None:
                    continue
                if spec is not None and current is not None and current.version == spec.version:
                    continue
                arm = None
                if spec is not None:
                    arm = self._arm(role, spec)  # type: ignore[arg-type]
                    await arm.backend.start()  # the old version keeps serving meanwhile
                setattr(route, role, arm)  # the swap: the next request takes the new arm
                if current is not None:
                    self._retire(current)
                old = current.version if current else "none"
                changes.append(f"{name}@{role}: {old} -> {arm.version if arm else 'none'}")
        return changes

    async def watch(
        self,
        interval_s: float,
        *,
        max_backoff_s: float | None = None,
        up: Gauge | None = None,
    ) -> None:
        """Poll the source forever; while it fails, keep serving and back off.

        The backoff stays within a few intervals (``max_backoff_s``, default 4 of them):
        each read is bounded by the source, so trying is cheap, and a move made while
        the source was down lands on the first read that succeeds, soon after it is back.
        ``up`` (a gauge) is 1 after a good read, 0 after a failed one.
        """
        cap = max_backoff_s if max_backoff_s is not None else 4 * interval_s
        delay = interval_s
        while True:
            await asyncio.sleep(delay)
            try:
                for change in await self.refresh():
                    log.info("route changed", extra={"change": change})
            except Exception as exc:
                self.status = f"degraded: {exc}"
                delay = min(delay * 2, cap)
                if up is not None:
                    up.set(0)
                log.warning(
                    "arm source unavailable; serving the loaded versions",
                    extra={"error": str(exc), "retry_in_s": delay},
                )
            else:
                self.status, delay = "ok", interval_s
                if up is not None:
                    up.set(1)

    def _retire(self, arm: Arm) -> None:
        async def drain() -> None:
            await arm.drained()
            await arm.backend.aclose()

        task = asyncio.create_task(drain())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _arm(self, role: ArmName, spec: SpecBase) -> Arm:
        backend = build_backend(spec, resolve_gguf=self._resolve_gguf)
        return Arm(role, spec.name, spec.version, backend)

    def _build(self, name: str, cfg: RouteConfig) -> Route:
        return Route(
            name=name,
            champion=self._arm("champion", cfg.champion),
            challenger=self._arm("challenger", cfg.challenger) if cfg.challenger else None,
            challenger_bps=round(cfg.challenger_weight * BUCKETS / 100),
            salt=cfg.salt if cfg.salt is not None else name,
            experiment_id=cfg.experiment_id,
            shadow=cfg.shadow,
        )

    async def close(self) -> None:
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        routes, self._routes = self._routes, {}
        arms = [a for r in routes.values() for a in (r.champion, r.challenger) if a]
        await asyncio.gather(*(a.backend.aclose() for a in arms), return_exceptions=True)

    def get(self, name: str) -> Route:
        try:
            return self._routes[name]
        except KeyError:
            known = ", ".join(sorted(self._routes)) or "none"
            raise RouteNotFound(
                f"The model {name!r} does not exist: it is not a route of this router "
                f"(routes: {known})."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._routes

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes.values())

    def arms(self) -> Iterator[tuple[Route, Arm]]:
        """Every loaded arm with its route, champions first within a route."""
        for route in list(self._routes.values()):
            for arm in (route.champion, route.challenger):
                if arm is not None:
                    yield route, arm

    @property
    def loaded(self) -> bool:
        return bool(self._routes)

    def set_challenger_weight(self, name: str, percent: float) -> Route:
        """Move the split at run time; takes effect on the next request."""
        route = self.get(name)
        route.challenger_bps = round(percent * BUCKETS / 100)
        return route
