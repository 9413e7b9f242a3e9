"""OpenAI-compatible chat completions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response, StreamingResponse

from router.api.deps import ClientDep, ServiceDep
from router.api.json_body import JSONRoute
from router.assignment import unit_of
from router.errors import NotFound
from router.schemas import ChatCompletionRequest

router = APIRouter(tags=["chat"], route_class=JSONRoute)

#: OpenAI endpoints this router does not route: a clear 404 rather than a generic one.
NOT_ROUTED = ("/v1/completions", "/v1/embeddings", "/v1/responses")


@router.post("/v1/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    service: ServiceDep,
    principal: ClientDep,
    x_canary_unit: Annotated[str | None, Header(max_length=200)] = None,
    x_canary_arm: Annotated[str | None, Header()] = None,
) -> Response:
    """Answer a chat like OpenAI does; the route's champion or challenger replies."""
    principal.require_route(body.model)
    key_id = principal.key_id
    unit = unit_of(
        user=body.user,
        safety_identifier=body.safety_identifier,
        header=x_canary_unit,
        key_id=key_id,
    )
    request.state.in_service = True  # from here on the service logs the request itself
    if body.stream:
        events, headers = await service.stream(
            body, unit=unit, key_id=key_id, arm_override=x_canary_arm
        )
        headers["cache-control"] = "no-cache"
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    payload, headers = await service.complete(
        body, unit=unit, key_id=key_id, arm_override=x_canary_arm
    )
    return Response(payload, media_type="application/json", headers=headers)


async def not_routed(request: Request) -> Response:
    raise NotFound(
        f"This router serves chat completions (POST /v1/chat/completions); "
        f"{request.url.path} is not routed to the models behind it.",
        code="unsupported_endpoint",
    )


for _path in NOT_ROUTED:
    router.add_api_route(_path, not_routed, methods=["POST"], include_in_schema=False)
