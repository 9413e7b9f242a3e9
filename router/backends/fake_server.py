"""The fake model served over HTTP as a minimal OpenAI-compatible engine.

For tests and benchmarks of the OpenAI backend: what the router fronts in production
(vLLM, llama-server) is replaced by this, behind the same wire protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from router.backends.base import ChatParams, Delta
from router.backends.fake import FakeBackend, FakeSpec
from router.errors import CanaryError


def create_fake_openai_app(spec: FakeSpec | None = None) -> Starlette:
    """``POST /v1/chat/completions`` answered by a ``FakeBackend``, and ``GET /v1/models``
    (the engine health check); plain Starlette: fast."""
    backend = FakeBackend(spec or FakeSpec(name="fake"))

    async def completions(request: Request) -> Response:
        body = orjson.loads(await request.body())
        params = ChatParams(
            messages=body["messages"],
            max_tokens=body.get("max_tokens"),
            temperature=body.get("temperature"),
        )
        try:
            if body.get("stream"):
                deltas = aiter(backend.stream(params))
                first = await anext(deltas)  # errors before the first event get a status
                return StreamingResponse(_events(first, deltas), media_type="text/event-stream")
            result = await backend.complete(params)
        except CanaryError as exc:
            return Response(orjson.dumps(exc.body()), status_code=exc.status_code)
        usage = {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.prompt_tokens + result.usage.completion_tokens,
        }
        payload = {
            "id": "fake",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": usage,
        }
        return Response(orjson.dumps(payload), media_type="application/json")

    async def models(request: Request) -> Response:
        model = {"id": backend.spec.name, "object": "model", "created": 0, "owned_by": "fake"}
        return Response(
            orjson.dumps({"object": "list", "data": [model]}), media_type="application/json"
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


async def _events(first: Delta, rest: AsyncIterator[Delta]) -> AsyncIterator[bytes]:
    async def all_deltas() -> AsyncIterator[Delta]:
        yield first
        async for delta in rest:
            yield delta

    async for delta in all_deltas():
        chunk: dict[str, object] = {
            "id": "fake",
            "object": "chat.completion.chunk",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": delta.text} if delta.text else {},
                    "finish_reason": delta.finish_reason,
                }
            ],
        }
        if delta.usage is not None:
            chunk["usage"] = {
                "prompt_tokens": delta.usage.prompt_tokens,
                "completion_tokens": delta.usage.completion_tokens,
            }
        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    yield b"data: [DONE]\n\n"
