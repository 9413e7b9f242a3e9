"""The fake model served over HTTP as a minimal OpenAI-compatible engine.

For tests and benchmarks of the OpenAI backend: what the router fronts in production
(vLLM, llama-server) is replaced by this, behind the same wire protocol. Every field of
the request besides the sampling ones reaches the fake as ``ChatParams.options``, so it
answers tool calls, JSON, several choices and logprobs as ``FakeBackend`` does; a stream
told to fail (``FakeSpec.fail_after_chunks``) fails on the wire as
``FakeSpec.stream_failure`` says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from router.backends.base import ChatParams, Delta
from router.backends.fake import FakeBackend, FakeSpec
from router.errors import CanaryError
from router.schemas import ROUTER_FIELDS


class _Disconnect(Exception):
    """Raised inside the response body: the server drops the connection mid-body."""


def create_fake_openai_app(
    spec: FakeSpec | None = None, *, received: list[dict[str, Any]] | None = None
) -> Starlette:
    """``POST /v1/chat/completions`` answered by a ``FakeBackend``, and ``GET /v1/models``
    (the engine health check); plain Starlette: fast. ``received``, when given, gets
    every request body as sent (for tests of what reaches the engine)."""
    backend = FakeBackend(spec or FakeSpec(name="fake"))

    async def completions(request: Request) -> Response:
        body = orjson.loads(await request.body())
        if received is not None:
            received.append(body)
        stop = body.get("stop")
        params = ChatParams(
            messages=body["messages"],
            max_tokens=body.get("max_tokens") or body.get("max_completion_tokens"),
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
            stop=[stop] if isinstance(stop, str) else stop,
            seed=body.get("seed"),
            options={k: v for k, v in body.items() if k not in ROUTER_FIELDS},
        )
        model = body.get("model", "fake")
        try:
            if body.get("stream"):
                deltas = aiter(backend.stream(params))
                first = await anext(deltas)  # errors before the first event get a status
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                events = _events(first, deltas, model, include_usage, backend.spec.stream_failure)
                return StreamingResponse(events, media_type="text/event-stream")
            result = await backend.complete(params)
        except CanaryError as exc:
            return Response(
                orjson.dumps(exc.body()), status_code=exc.status_code, media_type="application/json"
            )
        usage = {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.prompt_tokens + result.usage.completion_tokens,
        }
        choices = result.choices or [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        ]
        payload = {
            "id": "fake",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": choices,
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


async def _events(
    first: Delta, rest: AsyncIterator[Delta], model: str, include_usage: bool, failure: str
) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` events as OpenAI sends them: the role first, a chunk per
    delta, usage on the last one (when asked for), ``[DONE]``; or the failure."""

    def event(choice: dict[str, Any], usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": "fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [choice],
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def all_deltas() -> AsyncIterator[Delta]:
        yield first
        async for delta in rest:
            yield delta

    role = {"role": "assistant", "content": ""}
    yield event({"index": 0, "delta": role, "logprobs": None, "finish_reason": None})
    try:
        async for delta in all_deltas():
            content = {"content": delta.text} if delta.text else {}
            choice = {
                "index": delta.index,
                "delta": {**content, **(delta.fields or {})},
                "logprobs": delta.logprobs,
                "finish_reason": delta.finish_reason,
            }
            usage = None
            if delta.usage is not None and include_usage:
                usage = {
                    "prompt_tokens": delta.usage.prompt_tokens,
                    "completion_tokens": delta.usage.completion_tokens,
                    "total_tokens": delta.usage.prompt_tokens + delta.usage.completion_tokens,
                }
            yield event(choice, usage)
    except CanaryError as exc:
        if failure == "disconnect":
            raise _Disconnect(exc.message) from exc
        if failure == "truncate":
            return
        error = {"message": exc.message, "type": "server_error", "code": exc.code}
        yield b"data: " + orjson.dumps({"error": error}) + b"\n\n"
    yield b"data: [DONE]\n\n"
