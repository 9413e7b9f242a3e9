"""Chat tab: talk to a route as a real user would, and rate each answer.

Requests carry this browser's unit id as ``user``, so the router's sticky assignment
(and therefore the live split) decides who answers. Which arm answered stays hidden
unless the debug toggle is on. Thumbs go to ``POST /v1/feedback`` with the request id
the router returned in ``x-request-id``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import gradio as gr

from ui.client import (
    ChatStarted,
    RouterClient,
    RouterError,
    StreamDone,
    StreamFailed,
    TextDelta,
    ToolCallDelta,
)
from ui.render import answer_markdown, notice, table

REFRESH_S = 0.05  # stream updates go to the browser at most this often
INTRO = (
    "Chat with the route as any user would. Rate each answer with the thumbs under it: "
    "your ratings decide which model wins."
)


class ChatView(NamedTuple):
    """Outputs of a chat turn, in the order they are wired."""

    chatbot: list[dict[str, str]]
    conversation: list[dict[str, str]]
    answers: list[dict[str, Any]]
    prompt: Any
    status: str
    debug: str
    send: Any


def display(conversation: list[dict[str, str]], answers: list[dict[str, Any]]) -> list[dict]:
    """The chatbot's messages: the conversation, answers made readable (their tool calls
    shown, JSON pretty-printed), failures noted under their answer."""
    failed = {a["index"]: a["error"] for a in answers if a.get("error")}
    calls = {a["index"]: a.get("tool_calls") for a in answers}
    shown = []
    for i, message in enumerate(conversation):
        content = message["content"]
        if message["role"] == "assistant":
            content = answer_markdown(content, calls.get(i))
        if i in failed:
            note = f"⚠ *The answer stopped: {failed[i]}*"
            content = f"{content}\n\n{note}" if content else note
        shown.append({"role": message["role"], "content": content})
    if shown and not shown[-1]["content"]:
        shown.pop()  # the answer has not started: the chatbot shows its typing dots
    return shown


def debug_html(answers: list[dict[str, Any]], enabled: bool) -> str:
    """Which arm and version gave each answer, only when the debug toggle is on."""
    if not enabled:
        return ""
    if not answers:
        return notice("Debug: no answers yet.", "info")
    rows = [
        [str(n), a["arm"] or "—", a["version"] or "—", a["request_id"], a.get("rating") or ""]
        for n, a in enumerate(answers, start=1)
    ]
    header = ["answer", "arm", "version", "request id", "rating"]
    return '<div class="cr-debug">' + table(header, rows) + "</div>"


async def send(
    client: RouterClient,
    route: str | None,
    message: str,
    conversation: list[dict[str, str]] | None,
    answers: list[dict[str, Any]] | None,
    unit: str | None,
    debug: bool,
) -> AsyncIterator[ChatView]:
    """Send ``message`` with the conversation so far and stream the answer."""
    turns: list[dict[str, str]] = list(conversation or [])
    rated: list[dict[str, Any]] = list(answers or [])
    message = (message or "").strip()

    def view(status: str, *, busy: bool, prompt: Any = None) -> ChatView:
        return ChatView(
            display(turns, rated),
            turns,
            rated,
            gr.update() if prompt is None else prompt,
            status,
            debug_html(rated, debug),
            gr.update(interactive=not busy),
        )

    if not route or not message:
        hint = "Pick a route first." if not route else "Type a message first."
        yield view(notice(hint, "warning"), busy=False)
        return
    history = [*turns, {"role": "user", "content": message}]
    turns = [*history, {"role": "assistant", "content": ""}]
    answer: dict[str, Any] = {"index": len(history), "request_id": "", "arm": "", "version": ""}
    yield view(notice(INTRO, "info"), busy=True, prompt="")
    last = time.monotonic()
    try:
        async for event in client.chat_stream(route, history, user=unit):
            if isinstance(event, ChatStarted):
                answer.update(
                    request_id=event.request_id, arm=event.arm, version=event.model_version
                )
                rated.append(answer)
            elif isinstance(event, TextDelta):
                turns[-1]["content"] += event.text
            elif isinstance(event, ToolCallDelta):
                answer["tool_calls"] = list(event.calls)
            elif isinstance(event, StreamDone) and event.tool_calls:
                answer["tool_calls"] = list(event.tool_calls)
            elif isinstance(event, StreamFailed):
                answer["error"] = event.message
            if time.monotonic() - last >= REFRESH_S:
                last = time.monotonic()
                yield view(notice(INTRO, "info"), busy=True)
    except RouterError as exc:
        # The router refused before answering: undo the turn, give the text back.
        turns = turns[:-2]
        rated = [a for a in rated if a is not answer]
        yield view(notice(exc.message, "error", title="No answer."), busy=False, prompt=message)
        return
    stopped = "error" in answer
    status = (
        notice(answer["error"], "error", title="The answer stopped.")
        if stopped
        else notice(INTRO, "info")
    )
    yield view(status, busy=False)


def _rating(liked: bool | str) -> str | None:
    if liked is True:
        return "up"
    if liked is False:
        return "down"
    return None  # deselected: the router keeps the last rating


async def rate(
    client: RouterClient,
    answers: list[dict[str, Any]] | None,
    index: int | tuple[int, int],
    liked: bool | str,
    comment: str,
    unit: str | None,
    debug: bool,
) -> tuple[list[dict[str, Any]], str, str, Any]:
    """Thumbs on the answer at chatbot message ``index``; returns (answers, status, debug,
    comment box)."""
    answers = [dict(a) for a in answers or []]
    position = index[0] if isinstance(index, tuple) else index
    answer = next((a for a in answers if a["index"] == position), None)
    value = _rating(liked)
    if answer is None or not answer["request_id"]:
        status = notice("Only the model's answers can be rated.", "warning")
        return answers, status, debug_html(answers, debug), gr.update()
    if value is None:
        status = notice("Rating withdrawn here; the router keeps the last one you sent.", "info")
        return answers, status, debug_html(answers, debug), gr.update()
    comment = (comment or "").strip()
    try:
        await client.feedback(answer["request_id"], value, comment=comment or None, user=unit)
    except RouterError as exc:
        status = notice(exc.message, "error", title="Your rating was not saved.")
        return answers, status, debug_html(answers, debug), gr.update()
    answer["rating"], answer["comment"] = value, comment or None
    thumb = "thumbs up" if value == "up" else "thumbs down"
    said = " with your comment" if comment else ""
    status = notice(f"Thanks: your {thumb} was recorded{said}.", "success")
    return answers, status, debug_html(answers, debug), ""


async def send_comment(
    client: RouterClient,
    answers: list[dict[str, Any]] | None,
    comment: str,
    unit: str | None,
    debug: bool,
) -> tuple[list[dict[str, Any]], str, str, Any]:
    """Attach ``comment`` to the most recently rated answer (re-sending its rating)."""
    answers = [dict(a) for a in answers or []]
    comment = (comment or "").strip()
    rated = [a for a in answers if a.get("rating")]
    if not comment:
        return answers, notice("Write a comment first.", "warning"), debug_html(answers, debug), ""
    if not rated:
        status = notice("Rate an answer with a thumb first, then add your comment.", "warning")
        return answers, status, debug_html(answers, debug), gr.update()
    answer = rated[-1]
    try:
        await client.feedback(answer["request_id"], answer["rating"], comment=comment, user=unit)
    except RouterError as exc:
        status = notice(exc.message, "error", title="Your comment was not saved.")
        return answers, status, debug_html(answers, debug), gr.update()
    answer["comment"] = comment
    status = notice("Thanks: comment added to your rating.", "success")
    return answers, status, debug_html(answers, debug), ""


def clear(keep_prompt: bool = False) -> ChatView:
    """A new conversation (the unit, and so the assigned arm, stays the same);
    ``keep_prompt`` leaves what the person is typing alone (the route changed)."""
    prompt = gr.update() if keep_prompt else ""
    return ChatView([], [], [], prompt, notice(INTRO, "info"), "", gr.update(interactive=True))


def add_chat_tab(client: RouterClient, *, route: gr.Dropdown, unit: gr.BrowserState) -> None:
    """The chat's widgets and events, inside the current ``gr.Tab``."""
    conversation = gr.State([])
    answers = gr.State([])
    status = gr.HTML(notice(INTRO, "info"), elem_id="chat-status")
    chatbot = gr.Chatbot(
        show_label=False,
        height=460,
        feedback_options=["Like", "Dislike"],
        buttons=["copy"],
        placeholder="Say hello: the route's champion or challenger will answer.",
        elem_id="chat-bot",
        elem_classes="cr-card",
    )
    with gr.Row(equal_height=True, elem_classes="cr-composer"):
        prompt = gr.Textbox(
            placeholder="Message the model…",
            show_label=False,
            lines=1,
            max_lines=6,
            scale=8,
            elem_id="chat-prompt",
        )
        send_button = gr.Button(
            "Send", variant="primary", scale=1, min_width=100, elem_id="chat-send"
        )
        new_chat = gr.Button("New chat", variant="secondary", scale=1, min_width=110)
    with gr.Row(equal_height=True, elem_classes="cr-feedback-row"):
        comment = gr.Textbox(
            placeholder="Optional comment: sent with your next rating, or added to the last one",
            show_label=False,
            lines=1,
            scale=8,
            elem_id="chat-comment",
        )
        comment_button = gr.Button("Add comment", size="md", scale=1, min_width=130)
        debug = gr.Checkbox(
            label="Show arm (debug)", value=False, scale=1, min_width=160, elem_id="chat-debug"
        )
    debug_panel = gr.HTML(elem_id="chat-debug-panel")
    turn_outputs = [chatbot, conversation, answers, prompt, status, debug_panel, send_button]

    async def on_send(
        route_name: str | None,
        text: str,
        convo: list[dict[str, str]],
        ans: list[dict[str, Any]],
        unit_id: str | None,
        show: bool,
    ) -> AsyncIterator[ChatView]:
        async for view in send(client, route_name, text, convo, ans, unit_id, show):
            yield view

    gr.on(
        [send_button.click, prompt.submit],
        on_send,
        inputs=[route, prompt, conversation, answers, unit, debug],
        outputs=turn_outputs,
        api_visibility="private",
    )

    async def on_like(
        ans: list[dict[str, Any]],
        text: str,
        unit_id: str | None,
        show: bool,
        data: gr.LikeData,
    ) -> tuple[list[dict[str, Any]], str, str, Any]:
        return await rate(client, ans, data.index, data.liked, text, unit_id, show)

    rating_outputs = [answers, status, debug_panel, comment]
    chatbot.like(
        on_like,
        inputs=[answers, comment, unit, debug],
        outputs=rating_outputs,
        api_visibility="private",
    )

    async def on_comment(
        ans: list[dict[str, Any]], text: str, unit_id: str | None, show: bool
    ) -> tuple[list[dict[str, Any]], str, str, Any]:
        return await send_comment(client, ans, text, unit_id, show)

    gr.on(
        [comment_button.click, comment.submit],
        on_comment,
        inputs=[answers, comment, unit, debug],
        outputs=rating_outputs,
        api_visibility="private",
    )
    debug.change(debug_html, inputs=[answers, debug], outputs=debug_panel, api_visibility="private")
    new_chat.click(clear, outputs=turn_outputs, api_visibility="private")
    route.change(lambda: clear(keep_prompt=True), outputs=turn_outputs, api_visibility="private")
