"""The OpenAI-compatible backend against a real HTTP engine (the fake server on loopback)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from router.backends import ChatParams, FakeSpec, OpenAIBackend, OpenAISpec
from router.backends.fake_server import create_fake_openai_app
from router.config import RouteConfig, Settings
from router.errors import BackendError, BackendTimeout, ContextLengthExceeded
from tests.servers import ServerThread, serve

HELLO = ChatParams(messages=[{"role": "user", "content": "hello remote engine"}], max_tokens=50)


@pytest.fixture(scope="module")
def engine_url() -> Iterator[str]:
    spec = FakeSpec(name="remote", mode="echo", tokens_per_s=2000, context_length=30)
    with serve(create_fake_openai_app(spec)) as server:
        yield f"{server.url}/v1"


def _backend(url: str, **spec: Any) -> OpenAIBackend:
    return OpenAIBackend(OpenAISpec(name="remote", base_url=url, remote_model="m", **spec))


async def test_complete_and_stream(engine_url: str) -> None:
    backend = _backend(engine_url)
    await backend.start()
    try:
        done = await backend.complete(HELLO)
        assert (done.text, done.finish_reason) == ("hello remote engine", "stop")
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (4, 3)
        deltas = [d async for d in backend.stream(HELLO)]
        assert "".join(d.text for d in deltas) == "hello remote engine"
        assert deltas[-1].finish_reason == "stop"
        assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3
    finally:
        await backend.aclose()


async def test_remote_context_error_is_the_clients(engine_url: str) -> None:
    backend = _backend(engine_url)
    await backend.start()
    long = ChatParams(messages=[{"role": "user", "content": "word " * 100}])
    try:
        with pytest.raises(ContextLengthExceeded):
            await backend.complete(long)
        with pytest.raises(ContextLengthExceeded):
            [d async for d in backend.stream(long)]
    finally:
        await backend.aclose()


async def test_unreachable_and_slow_engines() -> None:
    down = _backend("http://127.0.0.1:9/v1", connect_timeout_s=0.5)
    await down.start()
    with pytest.raises(BackendError, match="unreachable"):
        await down.complete(HELLO)
    await down.aclose()

    slow_spec = FakeSpec(name="slow", latency_ms=2_000)
    with serve(create_fake_openai_app(slow_spec)) as server:
        slow = _backend(f"{server.url}/v1", timeout_s=0.2)
        await slow.start()
        with pytest.raises(BackendTimeout):
            await slow.complete(HELLO)
        await slow.aclose()


async def test_api_key_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    async def record(request: Request) -> JSONResponse:
        seen.append(request.headers.get("authorization"))
        return JSONResponse(
            {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}], "usage": {}}
        )

    app = Starlette(routes=[Route("/v1/chat/completions", record, methods=["POST"])])
    with serve(app) as server:
        backend = _backend(f"{server.url}/v1", api_key_env="TEST_ENGINE_KEY")
        with pytest.raises(BackendError, match="TEST_ENGINE_KEY"):
            await backend.start()
        monkeypatch.setenv("TEST_ENGINE_KEY", "sk-secret")
        await backend.start()
        assert (await backend.complete(HELLO)).text == "ok"
        await backend.aclose()
    assert seen == ["Bearer sk-secret"]


def test_router_fronts_a_remote_engine_with_fallback(
    engine_url: str, make_settings: Callable[..., Settings], run_router: Any
) -> None:
    # Challenger: an engine that is down. Champion: the live remote engine.
    routes = {
        "chat": RouteConfig(
            champion=OpenAISpec(name="live", version="7", base_url=engine_url, remote_model="m"),
            challenger=OpenAISpec(
                name="down", version="8", base_url="http://127.0.0.1:9/v1", remote_model="m"
            ),
            challenger_weight=100,
        )
    }
    server: ServerThread
    with run_router(make_settings(routes=routes)) as (server, _):
        body = {"model": "chat", "messages": [{"role": "user", "content": "over the wire"}]}
        for stream in (False, True):
            r = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": stream})
            assert r.status_code == 200
            assert "over" in r.text and "wire" in r.text
            assert (r.headers["x-canary-arm"], r.headers["x-canary-model-version"]) == (
                "champion",
                "7",
            )
            row = httpx.get(f"{server.url}/v1/requests/{r.headers['x-request-id']}").json()
            assert (row["status"], row["model_version"]) == ("fallback", "8")
