"""The fake engine's OpenAI behaviours, in process and on the wire (``fake_server``)."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import orjson
import pytest

from router.backends import ChatParams, Delta, FakeBackend, FakeSpec
from router.backends.fake_server import create_fake_openai_app
from router.errors import BackendError, InvalidRequest
from tests.servers import serve

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query"],
            },
        },
    },
    {"type": "function", "function": {"name": "clock"}},
]
ASK = [{"role": "user", "content": "find cats"}]


def _fake(**spec: Any) -> FakeBackend:
    return FakeBackend(FakeSpec(name="fake", mode="echo", **spec))


async def _stream(backend: FakeBackend, params: ChatParams) -> list[Delta]:
    return [d async for d in backend.stream(params)]


async def test_plain_answers_are_unchanged() -> None:
    done = await _fake().complete(ChatParams(messages=ASK, options={"top_k": 3}))
    assert (done.text, done.finish_reason, done.choices) == ("find cats", "stop", None)
    deltas = await _stream(_fake(), ChatParams(messages=ASK))
    assert [d.text for d in deltas] == ["find", " cats", ""]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage is not None


async def test_a_tool_call_then_the_answer_with_its_result() -> None:
    fake = _fake()
    params = ChatParams(messages=ASK, options={"tools": TOOLS})
    done = await fake.complete(params)
    assert (done.text, done.finish_reason) == ("", "tool_calls")
    assert done.choices is not None
    assert done.choices[0]["message"]["content"] is None
    assert done.tool_calls == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"query": "find cats"}'},
        }
    ]

    deltas = await _stream(fake, params)
    calls = [d.fields["tool_calls"][0] for d in deltas if d.fields]
    assert calls[0] == {
        "id": "call_2",
        "type": "function",
        "index": 0,
        "function": {"name": "lookup", "arguments": ""},
    }
    assert len(calls) >= 3 and all(c == {"index": 0, "function": c["function"]} for c in calls[1:])
    assert "".join(c["function"]["arguments"] for c in calls) == '{"query": "find cats"}'
    assert deltas[-1].finish_reason == "tool_calls"

    answered = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": done.tool_calls},
        {"role": "tool", "tool_call_id": "call_1", "content": "3 cats found"},
    ]
    after = await fake.complete(ChatParams(messages=answered, options={"tools": TOOLS}))
    assert after.text == "The tool answered: 3 cats found" and after.choices is None


async def test_tool_choice_and_fixed_arguments() -> None:
    fake = _fake(tool_arguments={"tz": "UTC"})
    named = {"type": "function", "function": {"name": "clock"}}
    done = await fake.complete(
        ChatParams(messages=ASK, options={"tools": TOOLS, "tool_choice": named})
    )
    assert done.tool_calls is not None
    assert done.tool_calls[0]["function"] == {"name": "clock", "arguments": '{"tz": "UTC"}'}
    # "{}" streams in two pieces too
    deltas = await _stream(_fake(), ChatParams(messages=ASK, options={"tools": TOOLS[1:]}))
    assert [d.fields["tool_calls"][0]["function"]["arguments"] for d in deltas if d.fields] == [
        "",
        "{",
        "}",
    ]
    none = await fake.complete(
        ChatParams(messages=ASK, options={"tools": TOOLS, "tool_choice": "none"})
    )
    assert none.text == "find cats" and none.choices is None
    unknown = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(InvalidRequest) as caught:
        await fake.complete(
            ChatParams(messages=ASK, options={"tools": TOOLS, "tool_choice": unknown})
        )
    assert caught.value.param == "tool_choice"


async def test_json_answers() -> None:
    fake = _fake()
    obj = await fake.complete(
        ChatParams(messages=ASK, options={"response_format": {"type": "json_object"}})
    )
    assert json.loads(obj.text) == {"answer": "find cats"}
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "n": {"type": "integer", "minimum": 1},
            "x": {"type": ["number", "null"]},
            "kind": {"enum": ["a", "b"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "inner": {
                "type": "object",
                "properties": {"ok": {"type": "boolean"}, "skip": {"type": "string"}},
                "required": ["ok"],
            },
            "optional": {"type": "string"},
        },
        "required": ["name", "n", "x", "kind", "tags", "inner"],
    }
    rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}
    params = ChatParams(messages=ASK, options={"response_format": rf})
    answer = json.loads((await fake.complete(params)).text)
    assert answer == {
        "name": "find cats",
        "n": 1,
        "x": 0.0,
        "kind": "a",
        "tags": ["find cats"],
        "inner": {"ok": False},
    }
    deltas = await _stream(fake, params)
    assert len(deltas) > 3 and json.loads("".join(d.text for d in deltas)) == answer


async def test_several_choices_with_logprobs() -> None:
    fake = _fake()
    params = ChatParams(messages=ASK, options={"n": 3, "logprobs": True, "top_logprobs": 2})
    done = await fake.complete(params)
    assert done.choices is not None and [c["index"] for c in done.choices] == [0, 1, 2]
    assert done.usage.completion_tokens == 6
    entry = done.choices[2]["logprobs"]["content"][1]
    assert entry["token"] == " cats" and entry["bytes"] == list(b" cats")
    assert [t["token"] for t in entry["top_logprobs"]] == [" cats", "<alt1>"]

    deltas = await _stream(fake, params)
    assert [(d.index, d.text) for d in deltas[:6]] == [
        (0, "find"),
        (1, "find"),
        (2, "find"),
        (0, " cats"),
        (1, " cats"),
        (2, " cats"),
    ]
    assert all(d.logprobs and d.logprobs["content"][0]["token"] == d.text for d in deltas[:6])
    assert [(d.index, d.finish_reason) for d in deltas[6:]] == [
        (1, "stop"),
        (2, "stop"),
        (0, "stop"),
    ]
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 6

    only_logprobs = await fake.complete(ChatParams(messages=ASK, options={"logprobs": True}))
    assert only_logprobs.choices is not None
    assert only_logprobs.choices[0]["logprobs"]["content"][0]["top_logprobs"] == []
    for bad in (0, 129, "2", True):
        with pytest.raises(InvalidRequest) as caught:
            await fake.complete(ChatParams(messages=ASK, options={"n": bad}))
        assert caught.value.param == "n"


async def test_fail_after_chunks() -> None:
    fake = _fake(fail_after_chunks=1)
    seen: list[str] = []
    with pytest.raises(BackendError, match="fail_after_chunks"):
        async for delta in fake.stream(ChatParams(messages=ASK)):
            seen.append(delta.text)
    assert seen == ["find"]
    # More pieces allowed than the answer has: it still fails, before the finish.
    with pytest.raises(BackendError):
        _ = [d async for d in _fake(fail_after_chunks=5).stream(ChatParams(messages=ASK))]
    assert (await fake.complete(ChatParams(messages=ASK))).text == "find cats"


async def test_content_parts_and_refused_options() -> None:
    parts = [{"type": "text", "text": "find"}, {"type": "text", "text": "dogs"}]
    done = await _fake().complete(ChatParams(messages=[{"role": "user", "content": parts}]))
    assert done.text == "find dogs"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    with pytest.raises(InvalidRequest) as caught:
        await _fake().complete(ChatParams(messages=[{"role": "user", "content": [*parts, image]}]))
    assert caught.value.param == "messages.0.content.2"
    refusing = _fake(unsupported_options=["logit_bias"])
    with pytest.raises(InvalidRequest) as caught:
        await refusing.complete(ChatParams(messages=ASK, options={"logit_bias": {"1": 5}}))
    assert (caught.value.param, caught.value.code) == ("logit_bias", "unsupported_parameter")
    assert (await refusing.complete(ChatParams(messages=ASK))).text == "find cats"


# -- on the wire ---------------------------------------------------------------------------
def _events(spec: FakeSpec, body: dict[str, Any]) -> tuple[list[Any], BaseException | None]:
    """The ``data:`` payloads of a streamed answer, and the transport error if any."""
    payloads: list[Any] = []
    with serve(create_fake_openai_app(spec)) as server:
        try:
            with httpx.stream(
                "POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True}
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        data = line[6:]
                        payloads.append(data if data == "[DONE]" else orjson.loads(data))
        except httpx.HTTPError as exc:
            return payloads, exc
    return payloads, None


def test_the_wire_format_of_tool_calls_and_usage() -> None:
    body = {"messages": ASK, "tools": TOOLS, "stream_options": {"include_usage": True}}
    events, error = _events(FakeSpec(name="f", mode="echo"), body)
    assert error is None and events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    first_call = events[1]["choices"][0]["delta"]["tool_calls"][0]
    assert first_call["function"] == {"name": "lookup", "arguments": ""}
    last = events[-2]
    assert last["choices"][0]["finish_reason"] == "tool_calls" and last["usage"]["total_tokens"]
    # Usage only when asked for, as OpenAI does.
    events, _ = _events(FakeSpec(name="f", mode="echo"), {"messages": ASK})
    assert not any("usage" in e for e in events[:-1])


@pytest.mark.parametrize("failure", ["error_event", "truncate", "disconnect"])
def test_the_wire_format_of_failures(
    failure: Literal["error_event", "truncate", "disconnect"],
) -> None:
    spec = FakeSpec(name="f", mode="echo", fail_after_chunks=1, stream_failure=failure)
    events, error = _events(spec, {"messages": ASK})
    texts = [
        e["choices"][0]["delta"].get("content")
        for e in events
        if isinstance(e, dict) and e.get("choices")
    ]
    assert texts == ["", "find"]
    assert not any(
        e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict) and e.get("choices")
    )
    if failure == "error_event":
        assert error is None
        assert events[-2]["error"]["type"] == "server_error"
        assert "fail_after_chunks" in events[-2]["error"]["message"]
        assert events[-1] == "[DONE]"
    elif failure == "truncate":
        assert error is None and "[DONE]" not in events
    else:
        assert isinstance(error, httpx.RemoteProtocolError) and "[DONE]" not in events


def test_the_wire_carries_options_and_errors() -> None:
    received: list[dict[str, Any]] = []
    spec = FakeSpec(name="f", mode="echo", unsupported_options=["tools"])
    with serve(create_fake_openai_app(spec, received=received)) as server:
        url = f"{server.url}/v1/chat/completions"
        r = httpx.post(url, json={"messages": ASK, "n": 2, "max_completion_tokens": 1})
        assert r.status_code == 200
        assert [c["message"]["content"] for c in r.json()["choices"]] == ["find", "find"]
        assert [c["finish_reason"] for c in r.json()["choices"]] == ["length", "length"]
        r = httpx.post(url, json={"messages": ASK, "tools": TOOLS})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "tools"
    assert received[0] == {"messages": ASK, "n": 2, "max_completion_tokens": 1}
