"""The router as a faithful OpenAI proxy, checked with the official ``openai`` SDK against
a remote OpenAI-compatible engine (the HTTP fake, which records what reaches it): every
row of README's compatibility table for remote engines. The local llama.cpp arm's rows
are in ``test_llama_cpp_openai.py``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from router.backends import FakeSpec, OpenAISpec
from router.backends.fake_server import create_fake_openai_app
from router.config import RouteConfig, Settings
from tests.servers import ServerThread, serve
from tests.tools import WEATHER_TOOL as WEATHER

Run = Callable[..., AbstractContextManager[tuple[ServerThread, Any]]]
HI = [{"role": "user", "content": "hello"}]


class Engine:
    """A remote engine and the bodies it received."""

    def __init__(self, server: ServerThread, received: list[dict[str, Any]]) -> None:
        self.url, self.received = f"{server.url}/v1", received

    @property
    def last(self) -> dict[str, Any]:
        return self.received[-1]


def _engine(**spec: Any) -> Iterator[Engine]:
    received: list[dict[str, Any]] = []
    app = create_fake_openai_app(FakeSpec(name="remote", **spec), received=received)
    with serve(app) as server:
        yield Engine(server, received)


@pytest.fixture
def engine() -> Iterator[Engine]:
    yield from _engine(tool_arguments={"city": "Paris"}, unsupported_options=["audio"])


@pytest.fixture
def failing_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    yield from _engine(tokens_per_s=1000, fail_after_chunks=3, stream_failure=request.param)


def _router(make_settings: Callable[..., Settings], run_router: Run, engine: Engine) -> Any:
    champion = OpenAISpec(name="remote", version="1", base_url=engine.url, remote_model="m")
    routes = {"chat": RouteConfig(champion=champion, challenger=None)}
    return run_router(make_settings(routes=routes))


@pytest.fixture
def router(
    make_settings: Callable[..., Settings], run_router: Run, engine: Engine
) -> Iterator[ServerThread]:
    with _router(make_settings, run_router, engine) as (server, _):
        yield server


def sdk(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def row(server: ServerThread, request_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/v1/requests/{request_id}").json())


#: Every chat-completions field of README's table that a remote engine gets as sent.
PASSED_THROUGH: dict[str, Any] = {
    "tools": [WEATHER],
    "tool_choice": "none",
    "parallel_tool_calls": False,
    "response_format": {"type": "json_object"},
    "logprobs": True,
    "top_logprobs": 2,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logit_bias": {"50256": -100},
    "metadata": {"team": "search"},
    "n": 2,
    "service_tier": "default",
    "store": False,
    "reasoning_effort": "low",
}


def test_every_field_reaches_the_remote_engine_as_sent(
    router: ServerThread, engine: Engine
) -> None:
    sent = {**PASSED_THROUGH, "max_tokens": 20, "temperature": 0.3, "top_p": 0.9, "seed": 7}
    completion = sdk(router).chat.completions.create(
        model="chat",
        messages=HI,
        user="alice",
        extra_body={"top_k": 40, "chat_template_kwargs": {"enable_thinking": False}},
        **sent,
    )
    upstream = engine.last
    for field, value in {**sent, "top_k": 40}.items():
        assert upstream[field] == value, field
    assert upstream["chat_template_kwargs"] == {"enable_thinking": False}
    assert upstream["model"] == "m" and upstream["messages"] == HI
    assert "user" not in upstream  # the router's own unit, not the engine's business
    assert [c.index for c in completion.choices] == [0, 1]  # n = 2, as the engine answered
    assert completion.choices[0].logprobs is not None
    json.loads(completion.choices[0].message.content or "")  # json_object


def test_tool_calls_an_agent_loop_and_the_rows(router: ServerThread, engine: Engine) -> None:
    client = sdk(router)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(
        model="chat", messages=messages, tools=[WEATHER], user="agent"
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == (  # type: ignore[union-attr]
        "get_weather",
        {"city": "Paris"},
    )
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
    ]
    second = client.chat.completions.create(
        model="chat", messages=messages, tools=[WEATHER], user="agent"
    )
    assert "18 C and sunny" in (second.choices[0].message.content or "")
    assert engine.last["messages"][1]["tool_calls"][0]["id"] == call.id
    assert engine.last["messages"][2] == messages[2]

    logged = [row(router, c.id) for c in (first, second)]
    assert logged[0]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert logged[0]["finish_reason"] == "tool_calls"
    assert [m["role"] for m in logged[1]["prompt_messages"]] == ["user", "assistant", "tool"]
    assert logged[1]["tool_calls"] is None and logged[1]["finish_reason"] == "stop"


def test_streamed_tool_calls_keep_their_indices(router: ServerThread) -> None:
    stream = sdk(router).chat.completions.create(
        model="chat", messages=HI, tools=[WEATHER], stream=True, user="s"
    )
    chunks = list(stream)
    pieces = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or []) if c.choices]
    assert len(pieces) >= 3 and {p.index for p in pieces} == {0}
    assert pieces[0].function.name == "get_weather"  # type: ignore[union-attr]
    arguments = "".join(p.function.arguments or "" for p in pieces)  # type: ignore[union-attr]
    assert json.loads(arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    logged = row(router, chunks[0].id)
    assert logged["tool_calls"][0]["function"]["arguments"] == arguments


class Weather(BaseModel):
    city: str
    degrees: int


def test_parse_with_a_pydantic_model(router: ServerThread, engine: Engine) -> None:
    parsed = sdk(router).chat.completions.parse(model="chat", messages=HI, response_format=Weather)
    assert isinstance(parsed.choices[0].message.parsed, Weather)
    schema = engine.last["response_format"]
    assert schema["type"] == "json_schema" and schema["json_schema"]["name"] == "Weather"


def test_content_parts_names_and_developer_messages(router: ServerThread, engine: Engine) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "name": "ann", "content": [{"type": "text", "text": "hi"}]},
    ]
    assert sdk(router).chat.completions.create(model="chat", messages=messages).choices  # type: ignore[arg-type]
    assert engine.last["messages"][1] == messages[1]  # parts and name as sent
    assert engine.last["messages"][0] == {"role": "system", "content": "Be brief."}
    # An image reaches the engine as sent; this text-only one refuses it with a 400.
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(router).chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": [image]}],  # type: ignore[list-item]
        )
    assert engine.last["messages"][0]["content"] == [image]
    assert refused.value.param == "messages.0.content.0"


def test_an_engine_refusal_is_a_400_naming_the_field(router: ServerThread) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(router).chat.completions.create(
            model="chat", messages=HI, extra_body={"audio": {"voice": "alloy"}}
        )
    assert refused.value.param == "audio"


@pytest.mark.parametrize("failing_engine", ["error_event", "truncate", "disconnect"], indirect=True)
def test_a_stream_that_fails_midway_raises_in_the_sdk_and_logs_an_error(
    make_settings: Callable[..., Settings], run_router: Run, failing_engine: Engine
) -> None:
    with _router(make_settings, run_router, failing_engine) as (server, _):
        stream = sdk(server).chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "a long answer please"}],
            stream=True,
        )
        seen: list[Any] = []
        with pytest.raises(openai.APIError):
            for chunk in stream:
                seen.append(chunk)
        text = "".join(c.choices[0].delta.content or "" for c in seen if c.choices)
        assert text  # the pieces before the failure were relayed
        logged = row(server, seen[0].id)
    assert logged["status"] == "error" and logged["http_status"] == 502
    assert logged["response_text"] == text


def test_models_and_endpoints_that_are_not_chat(router: ServerThread) -> None:
    client = sdk(router)
    assert client.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.models.retrieve("gpt-9")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as embeddings:
        client.embeddings.create(model="chat", input="hi")
    assert embeddings.value.code == "unsupported_endpoint"
    assert "chat completions" in embeddings.value.message
    for path in ("/v1/completions", "/v1/responses"):
        r = httpx.post(f"{router.url}{path}", json={"model": "chat"})
        assert (r.status_code, r.json()["error"]["code"]) == (404, "unsupported_endpoint")
