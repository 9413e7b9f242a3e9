"""The routes this router serves, as OpenAI's model list and in full."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from router.api.deps import AdminDep, ClientDep, MetricsDep, RoutesDep
from router.api.json_body import JSONRoute
from router.auth.principal import Principal
from router.routes_table import Arm, Route, RouteTable
from router.schemas import ArmPublic, RoutePublic, WeightsIn

router = APIRouter(tags=["routes"], route_class=JSONRoute)


def _visible(routes: RouteTable, principal: Principal) -> list[Route]:
    """The routes this caller's key may use."""
    allowed = principal.key.routes if principal.key is not None else None
    return [r for r in routes if allowed is None or r.name in allowed]


@router.get("/v1/models")
async def list_models(routes: RoutesDep, principal: ClientDep) -> dict[str, Any]:
    """Every route the caller may use, in OpenAI's model-list shape."""
    data = [
        {"id": r.name, "object": "model", "created": 0, "owned_by": "canary-router"}
        for r in _visible(routes, principal)
    ]
    return {"object": "list", "data": data}


def _arm(arm: Arm, weight: float) -> ArmPublic:
    backend = getattr(arm.backend.spec, "backend", type(arm.backend).__name__)
    return ArmPublic(model=arm.model, version=arm.version, backend=backend, weight=weight)


def route_public(route: Route) -> RoutePublic:
    weights = route.weights
    return RoutePublic(
        name=route.name,
        salt=route.salt,
        experiment_id=route.experiment_id,
        shadow=route.shadow,
        champion=_arm(route.champion, weights["champion"]),
        challenger=_arm(route.challenger, weights["challenger"]) if route.challenger else None,
    )


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, routes: RoutesDep, principal: ClientDep) -> dict[str, Any]:
    """One route, in OpenAI's model shape (404 ``model_not_found`` for any other id)."""
    route = routes.get(model_id)
    principal.require_route(route.name)
    return {"id": route.name, "object": "model", "created": 0, "owned_by": "canary-router"}


@router.get("/v1/routes")
async def list_routes(routes: RoutesDep, principal: ClientDep) -> list[RoutePublic]:
    """Routes with their arms, versions and the live traffic split."""
    return [route_public(r) for r in _visible(routes, principal)]


@router.get("/v1/routes/{route}")
async def get_route(route: str, routes: RoutesDep, principal: ClientDep) -> RoutePublic:
    """One route with its arms and split."""
    found = routes.get(route)
    principal.require_route(found.name)
    return route_public(found)


@router.put("/v1/routes/{route}/weights", dependencies=[AdminDep], name="route.weights")
async def set_weights(
    route: str, body: WeightsIn, routes: RoutesDep, metrics: MetricsDep
) -> RoutePublic:
    """Change the challenger's share of units at run time (admin)."""
    r = routes.set_challenger_weight(route, body.challenger)
    for arm, weight in r.weights.items():
        metrics.traffic_weight.labels(r.name, arm).set(weight)
    return route_public(r)
