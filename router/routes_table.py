"""The live routes: each with its loaded arms and current weights, changeable at run time.

Arms come from an ``ArmSource``. Here that is the settings (``StaticArmSource``); the
MLflow registry provides the same interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from router.assignment import BUCKETS, ArmName
from router.backends import Backend, SpecBase, build_backend
from router.config import RouteConfig
from router.errors import RouteNotFound


@dataclass(frozen=True, slots=True)
class Arm:
    """One loaded model version serving one side of a route."""

    role: ArmName
    model: str
    version: str
    backend: Backend


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

    async def start(self) -> None:
        configs = self._source.load()
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

    def _build(self, name: str, cfg: RouteConfig) -> Route:
        def arm(role: ArmName, spec: SpecBase) -> Arm:
            backend = build_backend(spec, resolve_gguf=self._resolve_gguf)
            return Arm(role, spec.name, spec.version, backend)

        return Route(
            name=name,
            champion=arm("champion", cfg.champion),
            challenger=arm("challenger", cfg.challenger) if cfg.challenger else None,
            challenger_bps=round(cfg.challenger_weight * BUCKETS / 100),
            salt=cfg.salt if cfg.salt is not None else name,
            experiment_id=cfg.experiment_id,
            shadow=cfg.shadow,
        )

    async def close(self) -> None:
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

    @property
    def loaded(self) -> bool:
        return bool(self._routes)

    def set_challenger_weight(self, name: str, percent: float) -> Route:
        """Move the split at run time; takes effect on the next request."""
        route = self.get(name)
        route.challenger_bps = round(percent * BUCKETS / 100)
        return route
