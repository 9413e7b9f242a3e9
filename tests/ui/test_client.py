"""``RouterClient`` against a real router: streams, readable errors, the admin probe."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import orjson
import pytest

from router.config import Settings
from tests.servers import free_port
from tests.tools import WEATHER_TOOL
from tests.ui.conftest import TOKEN, Running
from ui.client import (
    API_KEY_HINT,
    BattleStarted,
    ChatStarted,
    RouterClient,
    RouterError,
    RouterUnreachable,
    StreamDone,
    StreamFailed,
    TextDelta,
    ToolCallDelta,
)

HELLO = [{"role": "user", "content": "hello blue world"}]


async def test_chat_stream_names_the_logged_request(client: RouterClient) -> None:
    events = [e async for e in client.chat_stream("chat", HELLO, user="unit-7")]
    start = events[0]
    assert isinstance(start, ChatStarted)
    assert start.arm in ("champion", "challenger")
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert isinstance(events[-1], StreamDone) and events[-1].finish_reason == "stop"
    row = await client.request(start.request_id)
    assert row["unit_id"] == "unit-7"
    assert row["arm"] == start.arm
    assert row["response_text"] == text and text


async def test_chat_stream_gathers_tool_call_pieces(
    client: RouterClient, fakes_answer_with: Callable[..., None]
) -> None:
    fakes_answer_with(tools=[WEATHER_TOOL])
    events = [e async for e in client.chat_stream("chat", HELLO, user="unit-tools")]
    pieces = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(pieces) >= 3  # the name, then the arguments in pieces
    assert pieces[0].calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert not any(isinstance(e, TextDelta) for e in events)
    done = events[-1]
    assert isinstance(done, StreamDone) and done.finish_reason == "tool_calls"
    [call] = done.tool_calls
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert set(orjson.loads(call["function"]["arguments"])) == {"city"}
    assert pieces[-1].calls == done.tool_calls
    row = await client.request(events[0].request_id)  # type: ignore[union-attr]
    assert row["tool_calls"] == [call]


def _sse(*chunks: Any) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


async def test_tool_call_pieces_merge_by_index() -> None:
    """Two calls whose pieces interleave, content null, as an engine may send them."""
    body = _sse(
        _choice({"role": "assistant", "content": None}),
        _choice({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "f"}}]}),
        _choice({"tool_calls": [{"index": 1, "id": "c1", "type": "function",
                                 "function": {"name": "g", "arguments": "[1,"}}]}),
        _choice({"content": None, "tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        _choice({"tool_calls": [{"index": 1, "function": {"arguments": " 2]"}}]}),
        _choice({}, "tool_calls"),
    )  # fmt: skip

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream", "x-request-id": "chatcmpl-x"}
        return httpx.Response(200, content=body, headers=headers)

    client = RouterClient("http://router", transport=httpx.MockTransport(answer))
    events = [e async for e in client.chat_stream("chat", HELLO)]
    await client.aclose()
    assert [type(e).__name__ for e in events] == [
        "ChatStarted",
        *["ToolCallDelta"] * 4,
        "StreamDone",
    ]
    first = events[1]
    assert isinstance(first, ToolCallDelta)
    assert first.calls == (
        {"id": "c0", "type": "function", "function": {"name": "f", "arguments": ""}},
    )  # an event keeps what it said: later pieces do not change it
    done = events[-1]
    assert isinstance(done, StreamDone)
    assert done.tool_calls == (
        {"id": "c0", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c1", "type": "function", "function": {"name": "g", "arguments": "[1, 2]"}},
    )


def _answering(body: bytes, content_type: str = "text/event-stream") -> RouterClient:
    """A client of a router that answers every call with ``body``."""

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": content_type, "x-request-id": "chatcmpl-x"}
        return httpx.Response(200, content=body, headers=headers)

    return RouterClient("http://router", transport=httpx.MockTransport(answer))


async def test_stream_parsing_skips_comments_and_stops_at_done() -> None:
    """Keep-alive comments, CRLF line ends and anything after ``[DONE]`` change nothing."""
    body = (
        b": keep-alive\r\n\r\n"
        + b"data: " + orjson.dumps(_choice({"content": "hi"})) + b"\r\n\r\n"
        + b"data: [DONE]\n\n"
        + b"data: " + orjson.dumps(_choice({"content": "late"})) + b"\n\n"
    )  # fmt: skip
    client = _answering(body)
    events = [e async for e in client.chat_stream("chat", HELLO)]
    await client.aclose()
    assert events[1:] == [TextDelta("hi")]


async def test_error_event_mid_stream_fails_the_answer() -> None:
    client = _answering(_sse(_choice({"content": "hi"}), {"error": {"message": "engine died"}}))
    events = [e async for e in client.chat_stream("chat", HELLO)]
    await client.aclose()
    assert events[1:] == [TextDelta("hi"), StreamFailed("engine died")]


async def test_arena_error_event_fails_the_battle() -> None:
    body = _sse(
        {"type": "battle", "battle_id": "b1"},
        {"type": "delta", "side": "a", "content": "hi"},
        {"type": "error", "side": "b", "message": "side b died"},
        {"error": {"message": "the arena broke"}},
    )
    client = _answering(body)
    seen: list[Any] = []
    with pytest.raises(RouterError) as caught:
        async for event in client.battle_stream("chat", HELLO):
            seen.append(event)
    await client.aclose()
    assert seen == [
        BattleStarted(battle_id="b1", route="chat"),
        TextDelta("hi", side="a"),
        StreamFailed("side b died", side="b"),
    ]
    assert caught.value.message == "the arena broke"
    assert not isinstance(caught.value, RouterUnreachable)


async def test_an_answer_that_is_not_an_event_stream_is_an_error() -> None:
    client = _answering(b'{"id": "chatcmpl-x"}', content_type="application/json")
    with pytest.raises(RouterError) as caught:
        [e async for e in client.chat_stream("chat", HELLO)]
    await client.aclose()
    assert not isinstance(caught.value, RouterUnreachable)
    assert "event stream" in caught.value.message


async def test_battle_stream_has_both_sides_and_no_identities(client: RouterClient) -> None:
    events = [e async for e in client.battle_stream("chat", HELLO, user="unit-8")]
    assert isinstance(events[0], BattleStarted)
    sides = {e.side for e in events if isinstance(e, StreamDone)}
    assert sides == {"a", "b"}
    seen = repr(events)
    for secret in ("champion", "challenger", "fake-champion", "fake-challenger", "chatcmpl"):
        assert secret not in seen


async def test_router_errors_carry_its_message(client: RouterClient) -> None:
    with pytest.raises(RouterError) as caught:
        [e async for e in client.chat_stream("no-such-route", HELLO)]
    assert caught.value.status == 404
    assert "no-such-route" in caught.value.message
    with pytest.raises(RouterError) as caught:
        await client.vote("battle-that-does-not-exist", "a")
    assert caught.value.status == 404
    assert not isinstance(caught.value, RouterUnreachable)


async def test_unreachable_router_is_one_readable_sentence() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = RouterClient(url)
    with pytest.raises(RouterUnreachable) as caught:
        await client.routes()
    assert caught.value.message == f"The router is unreachable at {url}."
    with pytest.raises(RouterUnreachable):
        [e async for e in client.chat_stream("chat", HELLO)]
    await client.aclose()


ADMIN = {"authorization": f"Bearer {TOKEN}"}


async def _audit(url: str) -> list[dict[str, object]]:
    """The router's audit log, newest first."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{url}/v1/audit", headers=ADMIN)
    response.raise_for_status()
    return list(response.json())


async def test_admin_token_check_changes_nothing(client: RouterClient, ui_router: Running) -> None:
    url = ui_router[0].url
    await client.check_admin_token(TOKEN)  # accepted: no exception
    assert await _audit(url) == []  # an admin read: a sign-in is not an audited action
    with pytest.raises(RouterError) as caught:
        await client.check_admin_token("wrong")
    assert caught.value.unauthorised and caught.value.status == 403
    assert caught.value.code == "invalid_admin_token"
    with pytest.raises(RouterError) as caught:
        await client.check_admin_token("")
    assert caught.value.unauthorised and caught.value.status == 401
    assert [e["outcome"] for e in await _audit(url)] == ["refused", "refused"]  # attempts are
    assert await client.experiments() == []


async def test_api_key_opens_a_router_in_keys_mode(
    make_settings: Callable[..., Settings],
    run_router: Callable[..., AbstractContextManager[Running]],
) -> None:
    with run_router(make_settings(auth="keys", admin_token=TOKEN)) as (server, _):
        async with httpx.AsyncClient() as http:
            made = await http.post(f"{server.url}/v1/keys", json={"name": "ui"}, headers=ADMIN)
        assert made.status_code == 201, made.text
        keyed = RouterClient(server.url, api_key=made.json()["key"])
        keyless = RouterClient(server.url)
        wrong = RouterClient(server.url, api_key="sk-canary-not-a-real-key")
        try:
            assert [r["name"] for r in await keyed.routes()] == ["chat"]
            events = [e async for e in keyed.chat_stream("chat", HELLO, user="unit-9")]
            assert isinstance(events[0], ChatStarted) and isinstance(events[-1], StreamDone)
            assert (await keyed.request(events[0].request_id))["unit_id"] == "unit-9"
            battle = [e async for e in keyed.battle_stream("chat", HELLO, user="unit-9")]
            assert isinstance(battle[0], BattleStarted)
            await keyed.check_admin_token(TOKEN)  # admin calls send the admin token
            with pytest.raises(RouterError) as caught:
                await keyed.check_admin_token("wrong")
            assert caught.value.status == 403 and caught.value.code == "invalid_admin_token"

            with pytest.raises(RouterError) as caught:
                await keyless.routes()
            assert caught.value.status == 401 and caught.value.code == "missing_api_key"
            assert caught.value.message == API_KEY_HINT
            assert "canary ui --api-key KEY" in caught.value.message
            with pytest.raises(RouterError) as caught:  # the streams say the same
                [e async for e in keyless.chat_stream("chat", HELLO)]
            assert caught.value.message == API_KEY_HINT
            await keyless.check_admin_token(TOKEN)  # no key needed to sign in as admin

            with pytest.raises(RouterError) as caught:
                await wrong.experiments()
            assert caught.value.code == "invalid_api_key"
            assert caught.value.message.endswith(API_KEY_HINT)
        finally:
            for router in (keyed, keyless, wrong):
                await router.aclose()


async def test_mounted_client_learns_the_address_once() -> None:
    client = RouterClient(None)
    with pytest.raises(RouterUnreachable):
        await client.routes()
    client.follow("http://127.0.0.1:1234/")
    client.follow("http://127.0.0.1:9999")  # a configured or learnt address stays
    assert client.base_url == "http://127.0.0.1:1234"
