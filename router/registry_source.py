"""Arms from the MLflow model registry: route = registered model, arms = its aliases.

``models:/<route>@champion`` and ``models:/<route>@challenger`` become backend specs.
Our own flavours take the native fast path (in-process llama.cpp on the GGUF artifact,
pooled HTTP to the remote engine); any other chat pyfunc goes through its ``predict``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from registry.http_bounds import bounded_http
from router.backends import LlamaCppSpec, OpenAISpec, PyfuncSpec, SpecBase
from router.config import RouteConfig

if TYPE_CHECKING:
    from registry.store import Registry, ResolvedVersion


def _fields(spec: type[BaseModel], params: dict[str, Any]) -> dict[str, Any]:
    """The params a spec knows (a version may carry more than this router uses)."""
    return {k: v for k, v in params.items() if k in spec.model_fields and v is not None}


def spec_for(resolved: ResolvedVersion, registry: Registry) -> SpecBase:
    """The backend spec that serves one registered version."""
    identity = {"name": resolved.route, "version": resolved.version}
    if resolved.flavour == "gguf" and resolved.gguf_path is not None:
        params = {**_fields(LlamaCppSpec, resolved.params), **identity}
        return LlamaCppSpec.model_validate({**params, "gguf": str(resolved.gguf_path)})
    if resolved.flavour == "openai":
        return OpenAISpec.model_validate({**_fields(OpenAISpec, resolved.params), **identity})
    return PyfuncSpec(
        name=resolved.route,
        version=resolved.version,
        model_uri=resolved.model_uri,
        tracking_uri=registry.tracking_uri,
        registry_uri=registry.registry_uri,
    )


class RegistryArmSource:
    """Reads every route that has a ``@champion``; a missing ``@challenger`` means none.

    Each REST call of a read tries once and waits at most ``timeout_s``: a registry that
    is down shows in readiness within seconds, not after MLflow's minutes of retries
    (the next poll is the retry).
    """

    def __init__(
        self, registry: Registry, *, challenger_weight: float, timeout_s: float = 5.0
    ) -> None:
        self.registry = registry
        self._weight = challenger_weight
        self.timeout_s = timeout_s

    def load(self) -> dict[str, RouteConfig]:
        with bounded_http(self.timeout_s):
            return self._load()

    def _load(self) -> dict[str, RouteConfig]:
        routes = {}
        for route in self.registry.routes():
            champion = self.registry.resolve(route, "champion")
            if champion is None:  # the alias moved away between the two calls
                continue
            challenger = self.registry.resolve(route, "challenger")
            routes[route] = RouteConfig(
                champion=spec_for(champion, self.registry),  # type: ignore[arg-type]
                challenger=(
                    spec_for(challenger, self.registry) if challenger else None  # type: ignore[arg-type]
                ),
                challenger_weight=self._weight if challenger else 0.0,
            )
        return routes
