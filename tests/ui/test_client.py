"""``RouterClient`` against a real router: streams, readable errors, the admin probe."""

from __future__ import annotations

import pytest

from tests.servers import free_port
from tests.ui.conftest import TOKEN, Running
from ui.client import (
    BattleStarted,
    ChatStarted,
    RouterClient,
    RouterError,
    RouterUnreachable,
    StreamDone,
    TextDelta,
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


async def test_admin_token_check_changes_nothing(client: RouterClient, ui_router: Running) -> None:
    await client.check_admin_token(TOKEN)  # accepted: no exception
    with pytest.raises(RouterError) as caught:
        await client.check_admin_token("wrong")
    assert caught.value.unauthorised and caught.value.status == 403
    assert await client.experiments() == []


async def test_mounted_client_learns_the_address_once() -> None:
    client = RouterClient(None)
    with pytest.raises(RouterUnreachable):
        await client.routes()
    client.follow("http://127.0.0.1:1234/")
    client.follow("http://127.0.0.1:9999")  # a configured or learnt address stays
    assert client.base_url == "http://127.0.0.1:1234"
