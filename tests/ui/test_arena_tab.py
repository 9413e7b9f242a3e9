"""Arena tab handlers against a real router: blind answers, the vote, the reveal."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text

from tests.servers import free_port
from tests.tools import WEATHER_TOOL
from tests.ui.conftest import Running, text_of
from ui.client import RouterClient
from ui.tabs import arena


async def _played(client: RouterClient, prompt: str = "tell me about blue whales") -> list:
    return [view async for view in arena.play(client, "chat", prompt, "unit-arena")]


async def test_round_streams_both_sides_blind_then_opens_the_vote(client: RouterClient) -> None:
    views = await _played(client)
    first, last = views[0], views[-1]
    assert first.send["interactive"] is False  # no second battle while one streams
    assert first.prompt == ""
    assert last.send["interactive"] is True
    assert all(v.vote_a["interactive"] is False for v in views[:-1])
    assert last.vote_a["interactive"] is True and last.vote_both_bad["interactive"] is True
    answers = [last.chat_a[-1]["content"], last.chat_b[-1]["content"]]
    # The fake champion echoes the prompt; the challenger answers with its canned text.
    assert "tell me about blue whales" in answers
    assert any("canned answer" in a for a in answers)
    assert last.battle["battle_id"]
    # Nothing on the page may say who is who before the vote.
    for secret in ("champion", "challenger", "fake-champion", "fake-challenger"):
        assert secret not in text_of(*views)


async def test_vote_is_stored_and_reveals_each_side(
    client: RouterClient, ui_router: Running
) -> None:
    battle = (await _played(client))[-1].battle
    view = await arena.vote(client, battle, "b", "unit-arena")
    assert view.battle["voted"] is True
    assert "You voted: B is better" in view.status
    labels = {view.chat_a["label"], view.chat_b["label"]}
    assert labels == {
        "Model A · champion — fake-champion v1",
        "Model B · challenger — fake-challenger v2",
    } or labels == {
        "Model A · challenger — fake-challenger v2",
        "Model B · champion — fake-champion v1",
    }
    assert view.vote_a["interactive"] is False
    for side in ("a", "b"):  # both answers are logged under this browser's unit
        row = await client.request(view.battle["reveal"][side]["request_id"])
        assert row["unit_id"] == "unit-arena" and row["assignment_reason"] == "arena"
    with ui_router[1].state.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT winner, unit_id FROM votes WHERE battle_id = :b"),
            {"b": battle["battle_id"]},
        ).all()
    assert [tuple(r) for r in rows] == [("b", "unit-arena")]

    again = await arena.vote(client, view.battle, "a", "unit-arena")
    assert "already voted" in again.status
    # Even if the page's state were stale, the router refuses a second vote, readably.
    stale = await arena.vote(client, battle, "a", "unit-arena")
    assert "cr-error" in stale.status and "already" in stale.status.lower()
    assert stale.vote_a["interactive"] is False


async def test_bad_input_and_errors_become_messages(client: RouterClient) -> None:
    [empty] = [v async for v in arena.play(client, "chat", "   ", "u")]
    assert "Type a prompt first" in empty.status
    [no_route] = [v async for v in arena.play(client, None, "hi", "u")]
    assert "Pick a route first" in no_route.status
    views = [v async for v in arena.play(client, "nope", "hi", "u")]
    assert "cr-error" in views[-1].status and "nope" in views[-1].status
    assert views[-1].prompt == "hi"  # given back to retry
    assert views[-1].send["interactive"] is True
    premature = await arena.vote(client, None, "a", "u")
    assert "Start a battle first" in premature.status


async def test_router_down_is_a_readable_message() -> None:
    down = RouterClient(f"http://127.0.0.1:{free_port()}")
    views = [v async for v in arena.play(down, "chat", "hi", "u")]
    assert "unreachable" in views[-1].status and "Traceback" not in views[-1].status
    await down.aclose()


def test_new_round_hides_the_names_again() -> None:
    view = arena.new_round()
    assert view.chat_a == {"__type__": "update", "value": [], "label": "Model A"}
    assert view.battle is None and view.prompt == ""
    assert arena.new_round(keep_prompt=True).prompt == {"__type__": "update"}


async def test_sending_again_asks_both_sides_a_follow_up(client: RouterClient) -> None:
    first = (await _played(client, "tell me about blue whales"))[-1]
    views = [
        view async for view in arena.play(client, "chat", "and orcas?", "unit-arena", first.battle)
    ]
    last = views[-1]
    assert last.battle["battle_id"] == first.battle["battle_id"]  # the same battle goes on
    assert last.vote_a["interactive"] is True
    assert "follow-up" in last.status
    for chat in (last.chat_a, last.chat_b):  # each side shows its whole conversation
        assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant"]
        assert [chat[0]["content"], chat[2]["content"]] == [
            "tell me about blue whales",
            "and orcas?",
        ]
    answers = {last.chat_a[-1]["content"], last.chat_b[-1]["content"]}
    assert "and orcas?" in answers  # the echoing champion repeats the follow-up
    state = await client.battle(first.battle["battle_id"])
    assert state["turn"] == 2
    for secret in ("champion", "challenger", "fake-champion", "fake-challenger"):
        assert secret not in text_of(*views)

    # Once voted on, sending starts a new battle.
    voted = await arena.vote(client, last.battle, "a", "unit-arena")
    fresh = [v async for v in arena.play(client, "chat", "hello", "unit-arena", voted.battle)]
    assert fresh[-1].battle["battle_id"] != first.battle["battle_id"]
    assert len(fresh[-1].chat_a) == 2


async def test_a_side_that_calls_a_tool_shows_the_call(
    client: RouterClient, fakes_answer_with: Callable[..., None]
) -> None:
    fakes_answer_with(only="fake-challenger", tools=[WEATHER_TOOL])
    last = (await _played(client, "weather in Paris?"))[-1]
    answers = {last.chat_a[-1]["content"], last.chat_b[-1]["content"]}
    [call] = [a for a in answers if a != "weather in Paris?"]  # the champion echoes
    assert call.startswith('**Tool call** `get_weather`\n\n```json\n{\n  "city": ')
    assert last.vote_a["interactive"] is True  # an answer like any other: vote on it
    for secret in ("champion", "challenger", "fake-", "call_"):
        assert secret not in text_of(last)

    # A follow-up keeps the call shown in the side's history.
    again = [v async for v in arena.play(client, "chat", "and Rome?", "u", last.battle)][-1]
    shown = [m["content"] for m in (*again.chat_a, *again.chat_b) if m["role"] == "assistant"]
    assert call in shown and sum(c.startswith("**Tool call**") for c in shown) == 2
    state = await client.battle(last.battle["battle_id"])
    side = "a" if again.chat_a[-1]["content"].startswith("**Tool call**") else "b"
    [logged] = state[side]["tool_calls"]
    assert logged["function"]["name"] == "get_weather" and "id" not in logged
    assert state["ab".replace(side, "")]["tool_calls"] is None
