"""Chat tab handlers against a real router: sticky units, hidden arms, thumbs to feedback."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.tools import WEATHER_TOOL
from tests.ui.conftest import text_of
from ui.client import RouterClient
from ui.tabs import chat


async def _turn(
    client: RouterClient,
    message: str,
    conversation: list | None = None,
    answers: list | None = None,
    unit: str = "unit-chat",
    debug: bool = False,
) -> list[chat.ChatView]:
    return [v async for v in chat.send(client, "chat", message, conversation, answers, unit, debug)]


async def test_answers_stream_and_the_arm_stays_hidden(client: RouterClient) -> None:
    views = await _turn(client, "hello there")
    first, last = views[0], views[-1]
    assert first.send["interactive"] is False and first.prompt == ""
    assert [m["role"] for m in last.chatbot] == ["user", "assistant"]
    [answer] = last.answers
    assert answer["request_id"].startswith("chatcmpl-")
    assert answer["arm"] in ("champion", "challenger")
    assert last.debug == ""
    shown = text_of(v.chatbot for v in views) + text_of(v.status for v in views)
    assert answer["arm"] not in shown and "fake-" not in shown
    # With the debug toggle on, the arm, version and request id appear.
    assert answer["arm"] in chat.debug_html(last.answers, True)
    assert answer["request_id"] in chat.debug_html(last.answers, True)


async def test_the_same_browser_keeps_its_arm_across_turns(client: RouterClient) -> None:
    arms = set()
    conversation: list = []
    answers: list = []
    for message in ("one", "two", "three"):
        last = (await _turn(client, message, conversation, answers, unit="sticky-unit"))[-1]
        conversation, answers = last.conversation, last.answers
        arms.add(answers[-1]["arm"])
    assert len(arms) == 1
    assert len(conversation) == 6  # the whole conversation goes with every turn
    row = await client.request(answers[-1]["request_id"])
    assert [m["content"] for m in row["prompt_messages"] if m["role"] == "user"] == [
        "one",
        "two",
        "three",
    ]


async def test_thumbs_and_comment_reach_the_feedback_api(client: RouterClient) -> None:
    last = (await _turn(client, "rate me"))[-1]
    answers, status, _, comment_box = await chat.rate(
        client, last.answers, 1, True, "  crisp answer ", "unit-chat", False
    )
    assert "thumbs up was recorded with your comment" in status
    assert comment_box == ""
    request_id = answers[0]["request_id"]
    [feedback] = (await client.request(request_id))["feedback"]
    assert (feedback["value"], feedback["comment"], feedback["unit_id"]) == (
        "up",
        "crisp answer",
        "unit-chat",
    )
    # Changing one's mind replaces the rating; a later comment is added to it.
    answers, status, _, _ = await chat.rate(client, answers, 1, False, "", "unit-chat", False)
    answers, status, _, _ = await chat.send_comment(
        client, answers, "too short", "unit-chat", False
    )
    assert "comment added" in status
    [feedback] = (await client.request(request_id))["feedback"]
    assert (feedback["value"], feedback["comment"]) == ("down", "too short")


async def test_ratings_that_cannot_be_sent_say_why(client: RouterClient) -> None:
    last = (await _turn(client, "hi"))[-1]
    _, status, _, _ = await chat.rate(client, last.answers, 0, True, "", "u", False)
    assert "answers can be rated" in status
    _, status, _, _ = await chat.rate(client, last.answers, 1, "", "", "u", False)
    assert "withdrawn" in status
    _, status, _, _ = await chat.send_comment(client, last.answers, "hm", "u", False)
    assert "Rate an answer" in status
    gone = [{**last.answers[0], "request_id": "chatcmpl-unknown"}]
    _, status, _, _ = await chat.rate(client, gone, 1, True, "", "u", False)
    assert "cr-error" in status and "chatcmpl-unknown" in status


async def test_refused_turn_is_undone_and_the_text_given_back(client: RouterClient) -> None:
    before = (await _turn(client, "first"))[-1]
    views = [
        v
        async for v in chat.send(
            client, "no-such-route", "second", before.conversation, before.answers, "u", False
        )
    ]
    last = views[-1]
    assert last.conversation == before.conversation and last.answers == before.answers
    assert last.prompt == "second"
    assert "cr-error" in last.status and "no-such-route" in last.status
    [empty] = [v async for v in chat.send(client, "chat", "  ", [], [], "u", False)]
    assert "Type a message first" in empty.status


async def test_a_tool_call_is_shown_not_an_empty_answer(
    client: RouterClient, fakes_answer_with: Callable[..., None]
) -> None:
    fakes_answer_with(tools=[WEATHER_TOOL])
    last = (await _turn(client, "weather in Paris?"))[-1]
    [_, shown] = last.chatbot
    assert shown["role"] == "assistant"
    head, block = shown["content"].split("\n\n")
    assert head == "**Tool call** `get_weather`"
    assert block.startswith("```json\n{\n  ") and block.endswith("\n}\n```")
    assert set(json.loads(block.removeprefix("```json").removesuffix("```"))) == {"city"}
    [answer] = last.answers
    assert [c["function"]["name"] for c in answer["tool_calls"]] == ["get_weather"]
    assert "The answer stopped" not in shown["content"] and "cr-error" not in last.status
    # The conversation keeps the answer's own text for the next turn; the call stays shown.
    assert last.conversation[-1] == {"role": "assistant", "content": ""}
    after = (await _turn(client, "and tomorrow?", last.conversation, last.answers))[-1]
    assert after.chatbot[1] == shown and len(after.chatbot) == 4


async def test_a_json_answer_is_pretty_printed(
    client: RouterClient, fakes_answer_with: Callable[..., None]
) -> None:
    fakes_answer_with(response_format={"type": "json_object"})
    last = (await _turn(client, "answer in json"))[-1]
    raw = last.conversation[-1]["content"]
    assert set(json.loads(raw)) == {"answer"}
    shown = last.chatbot[-1]["content"]
    assert shown == f"```json\n{json.dumps(json.loads(raw), indent=2)}\n```"
    assert shown.startswith('```json\n{\n  "answer": ')


def test_new_chat_clears_everything_but_the_unit() -> None:
    view = chat.clear()
    assert (view.chatbot, view.conversation, view.answers, view.prompt) == ([], [], [], "")
