"""The OpenAI-compatible backend against a real HTTP engine (the fake server on loopback)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from router.backends import ChatParams, Delta, FakeSpec, OpenAIBackend, OpenAISpec, Usage
from router.backends.fake_server import create_fake_openai_app
from router.config import RouteConfig, Settings
from router.errors import BackendError, BackendTimeout, ContextLengthExceeded, InvalidRequest
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
        assert done.choices is None  # one plain text choice
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


# -- a faithful proxy: options out, tool calls, choices and logprobs back ---------------
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
CLOCK_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
ASK = [{"role": "user", "content": "weather in Paris"}]
Engine = tuple[OpenAIBackend, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def recording_engine() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The fake engine, remembering every request body it received."""
    received: list[dict[str, Any]] = []
    spec = FakeSpec(name="engine", mode="echo")
    with serve(create_fake_openai_app(spec, received=received)) as server:
        yield f"{server.url}/v1", received


@pytest_asyncio.fixture(loop_scope="function")
async def engine(recording_engine: tuple[str, list[dict[str, Any]]]) -> AsyncIterator[Engine]:
    """A started backend of the recording engine, and what the engine has received."""
    url, received = recording_engine
    backend = _backend(url)
    await backend.start()
    received.clear()
    try:
        yield backend, received
    finally:
        await backend.aclose()


async def test_every_option_and_message_reaches_the_engine_unchanged(
    engine: Engine,
) -> None:
    backend, received = engine
    options = {
        "tools": [WEATHER_TOOL, CLOCK_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object", "properties": {}}},
        },
        "logprobs": True,
        "top_logprobs": 3,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "logit_bias": {"50256": -100},
        "metadata": {"team": "search"},
        "n": 2,
        "top_k": 40,  # not OpenAI's: an extra_body field for vLLM
        "chat_template_kwargs": {"enable_thinking": False},
    }
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "weather in Paris?", "name": "ann"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
    ]
    params = ChatParams(messages=messages, max_tokens=20, seed=7, options=options)
    await backend.complete(params)
    _ = [d async for d in backend.stream(params)]
    assert len(received) == 2
    for body, streamed in zip(received, (False, True), strict=True):
        assert {k: body[k] for k in options} == options
        assert body["messages"] == messages
        assert (body["model"], body["max_tokens"], body["seed"]) == ("m", 20, 7)
        assert body.get("stream", False) is streamed
        if streamed:
            assert body["stream_options"] == {"include_usage": True}


async def test_options_never_override_the_backends_own_fields(
    engine: Engine,
) -> None:
    backend, received = engine
    params = ChatParams(
        messages=ASK, options={"model": "other", "stream": False, "messages": [], "user": "u"}
    )
    _ = [d async for d in backend.stream(params)]
    body = received[-1]
    assert (body["model"], body["stream"], body["messages"]) == ("m", True, ASK)
    assert body["user"] == "u"  # not ours: passed on


async def test_tool_calls_come_back_whole_and_streamed(
    engine: Engine,
) -> None:
    backend, _ = engine
    params = ChatParams(messages=ASK, options={"tools": [WEATHER_TOOL], "tool_choice": "auto"})
    done = await backend.complete(params)
    assert (done.text, done.finish_reason) == ("", "tool_calls")
    assert done.choices is not None and len(done.choices) == 1
    message = done.choices[0]["message"]
    assert message["content"] is None
    assert done.tool_calls == message["tool_calls"]
    call = message["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "weather in Paris", "days": 0}

    deltas = [d async for d in backend.stream(params)]
    pieces = [d.fields["tool_calls"][0] for d in deltas if d.fields]
    assert len(pieces) >= 3  # the name, then the arguments in two pieces or more
    assert all(p["index"] == 0 for p in pieces)
    assert pieces[0]["function"]["name"] == "get_weather" and pieces[0]["id"].startswith("call_")
    assert all("name" not in p["function"] for p in pieces[1:])
    arguments = "".join(p["function"]["arguments"] for p in pieces)
    assert json.loads(arguments) == {"city": "weather in Paris", "days": 0}
    assert all(d.text == "" for d in deltas)
    assert deltas[-1].finish_reason == "tool_calls" and deltas[-1].usage is not None
    assert [d.finish_reason for d in deltas].count("tool_calls") == 1


async def test_the_answer_after_a_tool_result_is_text(
    engine: Engine,
) -> None:
    backend, _ = engine
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny and 21 C"},
    ]
    params = ChatParams(messages=messages, options={"tools": [WEATHER_TOOL]})
    done = await backend.complete(params)
    assert "sunny and 21 C" in done.text and done.finish_reason == "stop"
    assert done.choices is None  # plain text: nothing more to relay


async def test_several_choices_and_logprobs(
    engine: Engine,
) -> None:
    backend, _ = engine
    params = ChatParams(
        messages=[{"role": "user", "content": "one two three"}],
        options={"n": 2, "logprobs": True, "top_logprobs": 2},
    )
    done = await backend.complete(params)
    assert done.choices is not None
    assert [c["index"] for c in done.choices] == [0, 1]
    for choice in done.choices:
        assert choice["message"]["content"] == "one two three"
        tokens = choice["logprobs"]["content"]
        assert [t["token"] for t in tokens] == ["one", " two", " three"]
        assert all(len(t["top_logprobs"]) == 2 for t in tokens)
    assert done.text == "one two three" and done.usage.completion_tokens == 6

    deltas = [d async for d in backend.stream(params)]
    for index in (0, 1):
        mine = [d for d in deltas if d.index == index]
        assert "".join(d.text for d in mine) == "one two three"
        assert [d.finish_reason for d in mine if d.finish_reason] == ["stop"]
        assert all(d.logprobs and len(d.logprobs["content"]) == 1 for d in mine if d.text)
    assert deltas[-1].index == 0 and deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 6

    one = await backend.complete(ChatParams(messages=ASK, options={"n": 1}))
    assert one.choices is None and one.text == "weather in Paris"


async def test_json_schema_answers_parse(
    engine: Engine,
) -> None:
    backend, _ = engine
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "temp": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "ok": {"type": "boolean"},
        },
        "required": ["city", "temp", "tags", "ok"],
    }
    rf = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}}
    params = ChatParams(messages=ASK, options={"response_format": rf})
    answer = json.loads((await backend.complete(params)).text)
    assert answer == {"city": "weather in Paris", "temp": 0.0, "tags": [], "ok": False}
    streamed = "".join([d.text async for d in backend.stream(params)])
    assert json.loads(streamed) == answer


async def _stream_of(spec: FakeSpec) -> tuple[list[str], BaseException | None]:
    """Stream HELLO from an HTTP fake with ``spec``: the texts that arrived and the error."""
    with serve(create_fake_openai_app(spec)) as server:
        backend = _backend(f"{server.url}/v1")
        await backend.start()
        texts: list[str] = []
        try:
            async for delta in backend.stream(HELLO):
                texts.append(delta.text)
        except BackendError as exc:
            return texts, exc
        finally:
            await backend.aclose()
    return texts, None


async def test_an_engine_error_mid_stream_is_raised() -> None:
    spec = FakeSpec(name="e", mode="echo", fail_after_chunks=2)
    texts, error = await _stream_of(spec)
    assert texts == ["hello", " remote"]
    assert isinstance(error, BackendError) and "fail_after_chunks" in error.message


async def test_a_stream_cut_short_is_raised() -> None:
    spec = FakeSpec(name="e", mode="echo", fail_after_chunks=1, stream_failure="truncate")
    texts, error = await _stream_of(spec)
    assert texts == ["hello"]
    assert isinstance(error, BackendError) and "ended before the answer finished" in error.message

    spec = FakeSpec(name="e", mode="echo", fail_after_chunks=1, stream_failure="disconnect")
    texts, error = await _stream_of(spec)
    assert texts == ["hello"]
    assert isinstance(error, BackendError) and "broke off" in error.message


async def test_an_engine_400_about_a_field_is_the_clients() -> None:
    spec = FakeSpec(name="e", unsupported_options=["tools"])
    with serve(create_fake_openai_app(spec)) as server:
        backend = _backend(f"{server.url}/v1")
        await backend.start()
        params = ChatParams(messages=ASK, options={"tools": [WEATHER_TOOL]})
        try:
            with pytest.raises(InvalidRequest) as whole:
                await backend.complete(params)
            with pytest.raises(InvalidRequest) as streamed:
                _ = [d async for d in backend.stream(params)]
        finally:
            await backend.aclose()
    for error in (whole.value, streamed.value):
        assert error.status_code == 400 and error.param == "tools"
        assert error.code == "unsupported_parameter"
        assert "'tools' is not supported" in error.message


def _mock(status: int, body: Any, content_type: str = "application/json") -> OpenAIBackend:
    """A backend whose engine always answers ``status`` with ``body`` (bytes or JSON)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers={"content-type": content_type})

    spec = OpenAISpec(name="mock", base_url="http://engine/v1", remote_model="m")
    return OpenAIBackend(spec, transport=httpx.MockTransport(answer))


@pytest.mark.parametrize(
    ("status", "body", "expected", "param"),
    [
        # vLLM's older flat error object
        (400, {"object": "error", "message": "tools unsupported", "param": "tool_choice",
               "code": 400}, InvalidRequest, "tool_choice"),
        (422, {"error": {"message": "bad logit_bias", "param": "logit_bias"}}, InvalidRequest,
         "logit_bias"),
        (400, b"plain text complaint", InvalidRequest, None),
        (400, {"error": {"message": "This model's maximum context length is 2048 tokens"}},
         ContextLengthExceeded, None),
        (401, {"error": {"message": "bad key"}}, BackendError, None),
        (403, {"error": {"message": "forbidden"}}, BackendError, None),
        (404, {"error": {"message": "no model m"}}, BackendError, None),
        (429, {"error": {"message": "busy"}}, BackendError, None),
        (500, {"error": {"message": "boom"}}, BackendError, None),
    ],
)  # fmt: skip
async def test_engine_statuses(status: int, body: Any, expected: type, param: str | None) -> None:
    backend = _mock(status, body)
    await backend.start()
    for call in ("complete", "stream"):
        with pytest.raises(expected) as caught:
            if call == "complete":
                await backend.complete(HELLO)
            else:
                _ = [d async for d in backend.stream(HELLO)]
        error = caught.value
        assert type(error) is expected
        assert error.param == param
        if expected is InvalidRequest:
            assert error.status_code == 400
            assert error.message == (body.decode() if isinstance(body, bytes) else
                                     (body.get("error") or body)["message"])  # fmt: skip
    await backend.aclose()


def _sse(*events: Any) -> bytes:
    out = b""
    for event in events:
        if isinstance(event, bytes):
            out += event
        else:
            out += b"data: " + json.dumps(event).encode() + b"\n\n"
    return out


def _chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0, **more: Any) -> Any:
    choice = {"index": index, "delta": delta, "finish_reason": finish, **more}
    return {"object": "chat.completion.chunk", "choices": [choice]}


async def _deltas(body: bytes, content_type: str = "text/event-stream") -> list[Delta]:
    backend = _mock(200, body, content_type)
    await backend.start()
    try:
        return [d async for d in backend.stream(HELLO)]
    finally:
        await backend.aclose()


async def test_stream_relays_refusals_and_holds_the_first_choices_finish() -> None:
    body = _sse(
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"refusal": "I can't"}),
        _chunk({"refusal": " help."}),
        _chunk({"content": "!"}, "stop", logprobs={"content": [{"token": "!", "logprob": -1}]}),
        {"object": "chat.completion.chunk", "choices": [], "usage": {
            "prompt_tokens": 5, "completion_tokens": 3}},
        b"data: [DONE]\n\n",
    )  # fmt: skip
    deltas = await _deltas(body)
    assert [d.fields for d in deltas[:2]] == [{"refusal": "I can't"}, {"refusal": " help."}]
    assert (deltas[2].text, deltas[2].finish_reason) == ("!", None)
    assert deltas[2].logprobs == {"content": [{"token": "!", "logprob": -1}]}
    last = deltas[-1]
    assert (last.finish_reason, last.usage) == ("stop", Usage(5, 3))
    assert len(deltas) == 4


async def test_stream_ends_and_breaks() -> None:
    # [DONE] without a finish reason: "stop"; without usage: pieces are counted.
    deltas = await _deltas(
        _sse(_chunk({"content": "a"}), _chunk({"content": "b"}), b"data: [DONE]\n\n")
    )
    assert "".join(d.text for d in deltas) == "ab"
    assert (deltas[-1].finish_reason, deltas[-1].usage) == ("stop", Usage(0, 2))
    # A finish reason without [DONE] (some llama.cpp forks): a whole answer.
    deltas = await _deltas(_sse(_chunk({"content": "a"}), _chunk({}, "length")))
    assert deltas[-1].finish_reason == "length"
    # Neither: cut off.
    with pytest.raises(BackendError, match="ended before the answer finished"):
        await _deltas(_sse(_chunk({"content": "a"})))
    # Errors: OpenAI's and vLLM's shapes, and an SSE error event.
    for error in (
        {"error": {"message": "engine overloaded", "type": "server_error"}},
        {"object": "error", "message": "engine overloaded", "code": 500},
    ):
        with pytest.raises(BackendError, match="mid-stream: engine overloaded"):
            await _deltas(_sse(_chunk({"content": "a"}), error, b"data: [DONE]\n\n"))
    with pytest.raises(BackendError, match="mid-stream: engine overloaded"):
        await _deltas(_sse(_chunk({"content": "a"}), b'event: error\ndata: {"message": '
                                                     b'"engine overloaded"}\n\n'))  # fmt: skip
    # Not a stream of events, or not JSON in one.
    with pytest.raises(BackendError, match="did not stream events"):
        await _deltas(b'{"choices": []}', "application/json")
    with pytest.raises(BackendError, match="malformed stream"):
        await _deltas(b"data: {not json\n\n")


@pytest.mark.parametrize(
    ("message", "plain"),
    [
        ({"role": "assistant", "content": "hi"}, True),
        # vLLM sets these even when empty
        ({"role": "assistant", "content": "hi", "tool_calls": [], "reasoning_content": None}, True),
        ({"role": "assistant", "content": None, "refusal": "no"}, False),
        ({"role": "assistant", "content": "hi", "reasoning_content": "because"}, False),
    ],
)
async def test_complete_keeps_whatever_is_more_than_text(
    message: dict[str, Any], plain: bool
) -> None:
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    backend = _mock(200, {"choices": [choice], "usage": {"prompt_tokens": 1}})
    await backend.start()
    done = await backend.complete(HELLO)
    await backend.aclose()
    assert done.text == (message["content"] or "")
    assert done.choices == (None if plain else [choice])
