"""Arena tab: one prompt, two anonymous answers streamed side by side, a vote, the reveal.

After the answers, sending again asks both sides a follow-up (each in its own
conversation) until the vote; "New round" starts a fresh battle.

The router shuffles the arms into sides ``a`` and ``b`` and says who was who only in the
answer to the vote, so the page cannot leak it earlier: it never knows.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import gradio as gr

from ui.client import (
    BattleStarted,
    RouterClient,
    RouterError,
    StreamDone,
    StreamFailed,
    TextDelta,
)
from ui.render import answer_markdown, esc, notice

SIDES = ("a", "b")
#: The four votes, in button order, with their labels.
VERDICTS = {
    "a": "← A is better",
    "b": "B is better →",
    "tie": "It's a tie",
    "both_bad": "Both are bad",
}
VERDICT_TEXT = {
    "a": "A is better",
    "b": "B is better",
    "tie": "a tie",
    "both_bad": "both are bad",
}
INTRO = (
    "Two anonymous models answer the same prompt. Read both, ask follow-ups if you like, "
    "vote for the better one, and only then see which model was which."
)
VOTE_OR_FOLLOW_UP = "Which answer is better? Vote to reveal the models, or ask both a follow-up."
#: Stream updates are sent to the browser at most this often (s); the last always goes.
REFRESH_S = 0.05


class RoundView(NamedTuple):
    """Every output of a round's events, in the order they are wired."""

    chat_a: Any
    chat_b: Any
    battle: dict[str, Any] | None
    status: str
    vote_a: Any
    vote_b: Any
    vote_tie: Any
    vote_both_bad: Any
    send: Any
    prompt: Any


def side_label(side: str, revealed: dict[str, Any] | None = None) -> str:
    """``Model A`` before the vote; ``Model A · challenger — gemma v2`` after it."""
    label = f"Model {side.upper()}"
    if not revealed:
        return label
    who = " ".join(str(x) for x in (revealed.get("model"), _v(revealed.get("version"))) if x)
    return f"{label} · {revealed['arm']}" + (f" — {who}" if who else "")


def _v(version: str | None) -> str | None:
    return f"v{version}" if version else None


def _shown(answer: dict[str, Any]) -> str:
    """A side's answer as its chatbot shows it: tool calls and JSON made readable."""
    return answer_markdown(answer["text"], answer.get("tool_calls"))


def _messages(battle: dict[str, Any], side: str) -> list[dict[str, str]]:
    """One side's conversation for its chatbot: earlier turns (kept as they were shown),
    the prompt, the answer so far."""
    messages = []
    for turn in battle.get("history", []):
        messages += [
            {"role": "user", "content": turn["prompt"]},
            {"role": "assistant", "content": turn[side]},
        ]
    messages.append({"role": "user", "content": battle["prompt"]})
    text, error = _shown(battle[side]), battle[side]["error"]
    if error:
        failure = f"⚠ *This model could not answer: {error}*"
        text = f"{text}\n\n{failure}" if text else failure
    if text:
        messages.append({"role": "assistant", "content": text})
    return messages


def _goes_on(battle: dict[str, Any] | None, route: str) -> bool:
    """Whether sending now is a follow-up of ``battle``: it is on this route, not voted on,
    and both sides answered its last turn."""
    return bool(
        battle
        and battle.get("battle_id")
        and not battle.get("voted")
        and battle["route"] == route
        and all(battle[side]["done"] and not battle[side]["error"] for side in SIDES)
    )


def _view(
    battle: dict[str, Any] | None,
    status: str,
    *,
    voting: bool,
    busy: bool,
    prompt: Any = None,
) -> RoundView:
    if battle is None:
        chats: list[Any] = [[], []]
    else:
        chats = [_messages(battle, side) for side in SIDES]
    vote = gr.update(interactive=voting)
    return RoundView(
        chat_a=chats[0],
        chat_b=chats[1],
        battle=battle,
        status=status,
        vote_a=vote,
        vote_b=vote,
        vote_tie=vote,
        vote_both_bad=vote,
        send=gr.update(interactive=not busy),
        prompt=gr.update() if prompt is None else prompt,
    )


async def play(
    client: RouterClient,
    route: str | None,
    prompt: str,
    unit: str | None,
    current: dict[str, Any] | None = None,
) -> AsyncIterator[RoundView]:
    """Stream both answers to ``prompt``: a follow-up of ``current`` when it can go on,
    else a new battle on ``route``. Votes open when both sides end."""
    prompt = (prompt or "").strip()
    if not route:
        yield _view(None, notice("Pick a route first.", "warning"), voting=False, busy=False)
        return
    if not prompt:
        status = notice("Type a prompt first.", "warning")
        yield _view(current, status, voting=_goes_on(current, route), busy=False)
        return
    fresh: dict[str, dict[str, Any]] = {
        side: {"text": "", "tool_calls": [], "error": None, "done": False} for side in SIDES
    }
    if current is not None and _goes_on(current, route):
        done = {"prompt": current["prompt"], **{side: _shown(current[side]) for side in SIDES}}
        battle = {**current, **fresh, "prompt": prompt, "history": [*current["history"], done]}
        events = client.follow_up_stream(current["battle_id"], prompt, route=route)
    else:
        current = None
        battle = {"battle_id": None, "route": route, "prompt": prompt, "voted": False}
        battle.update(history=[], **fresh)
        messages = [{"role": "user", "content": prompt}]
        events = client.battle_stream(route, messages, user=unit)
    waiting = notice("Both models are answering…", "info")
    yield _view(battle, waiting, voting=False, busy=True, prompt="")
    last = time.monotonic()
    try:
        async for event in events:
            if isinstance(event, BattleStarted):
                battle["battle_id"] = event.battle_id
                continue
            side = battle.get(event.side or "")
            if side is None:
                continue
            if isinstance(event, TextDelta):
                side["text"] += event.text
            elif isinstance(event, StreamDone):
                side["done"], side["tool_calls"] = True, list(event.tool_calls)
            elif isinstance(event, StreamFailed):
                side["error"], side["done"] = event.message, True
            if time.monotonic() - last >= REFRESH_S:
                last = time.monotonic()
                yield _view(battle, waiting, voting=False, busy=True)
    except RouterError as exc:
        # Nothing was stored if the turn never started: say why, keep what was there.
        title = "The follow-up could not run." if current else "The battle could not run."
        status = notice(exc.message, "error", title=title)
        yield _view(
            current or battle, status, voting=current is not None, busy=False, prompt=prompt
        )
        return
    if battle["battle_id"] is None:
        status = notice("The router ended the battle before it started.", "error")
        yield _view(battle, status, voting=False, busy=False, prompt=prompt)
        return
    for side in SIDES:  # a stream cut short counts as finished: what came is what is shown
        battle[side]["done"] = True
    yield _view(battle, notice(VOTE_OR_FOLLOW_UP, "info"), voting=True, busy=False)


def reveal_html(result: dict[str, Any]) -> str:
    """The reveal card: the verdict, then who each side was (the preferred one marked)."""
    winner = result["winner"]
    cards = []
    for side in SIDES:
        who = result[side]
        won = winner == side
        model = " ".join(x for x in (who.get("model"), _v(who.get("version"))) if x)
        cards.append(
            f'<div class="cr-reveal-side{" cr-reveal-winner" if won else ""}">'
            f'<div class="cr-reveal-name">Model {side.upper()}{" · your pick" if won else ""}'
            f'</div><div class="cr-reveal-arm">{esc(who["arm"])}</div>'
            f'<div class="cr-reveal-model">{esc(model)}</div></div>'
        )
    outcome = {
        "champion": "the champion won",
        "challenger": "the challenger won",
        "tie": "a tie",
        "both_bad": "neither answer was good",
    }.get(result.get("winner_arm", ""), "")
    return (
        f'<div class="cr-reveal" role="status"><div class="cr-reveal-title">'
        f"You voted: {esc(VERDICT_TEXT[winner])} — {esc(outcome)}. Vote recorded.</div>"
        f'<div class="cr-reveal-sides">{"".join(cards)}</div></div>'
    )


async def vote(
    client: RouterClient, battle: dict[str, Any] | None, winner: str, unit: str | None
) -> RoundView:
    """Store the vote and reveal which arm and version each side was."""
    if not battle or not battle.get("battle_id"):
        return _view(battle, notice("Start a battle first.", "warning"), voting=False, busy=False)
    if battle.get("voted"):
        status = notice("You already voted on this battle: start a new round.", "warning")
        return _view(battle, status, voting=False, busy=False)
    try:
        result = await client.vote(battle["battle_id"], winner, user=unit)
    except RouterError as exc:
        still_open = exc.status != 409  # 409: this battle already has its vote
        status = notice(exc.message, "error", title="The vote was not stored.")
        return _view(battle, status, voting=still_open, busy=False)
    battle = {**battle, "voted": True, "reveal": {side: result[side] for side in SIDES}}
    view = _view(battle, reveal_html(result), voting=False, busy=False)
    return view._replace(
        chat_a=gr.update(value=view.chat_a, label=side_label("a", result["a"])),
        chat_b=gr.update(value=view.chat_b, label=side_label("b", result["b"])),
    )


def new_round(keep_prompt: bool = False) -> RoundView:
    """Clear both sides (labels hidden again) for the next prompt; ``keep_prompt`` leaves
    what the person is typing alone (the route changed under them)."""
    prompt = gr.update() if keep_prompt else ""
    view = _view(None, notice(INTRO, "info"), voting=False, busy=False, prompt=prompt)
    return view._replace(
        chat_a=gr.update(value=[], label=side_label("a")),
        chat_b=gr.update(value=[], label=side_label("b")),
    )


def add_arena_tab(client: RouterClient, *, route: gr.Dropdown, unit: gr.BrowserState) -> None:
    """The arena's widgets and events, inside the current ``gr.Tab``."""
    battle = gr.State(None)
    status = gr.HTML(notice(INTRO, "info"), elem_id="arena-status")
    with gr.Row(equal_height=True, elem_classes="cr-arena-sides"):
        chats = [
            gr.Chatbot(
                label=side_label(side),
                show_label=True,
                height=420,
                feedback_options=None,
                buttons=["copy"],
                placeholder=f"Model {side.upper()}'s answer appears here.",
                elem_id=f"arena-{side}",
                elem_classes="cr-card",
            )
            for side in SIDES
        ]
    with gr.Row(elem_classes="cr-vote-row"):
        votes = {
            key: gr.Button(
                label, interactive=False, variant="secondary", elem_id=f"vote-{key}", scale=1
            )
            for key, label in VERDICTS.items()
        }
    with gr.Row(equal_height=True, elem_classes="cr-composer"):
        prompt = gr.Textbox(
            placeholder="Ask both models anything…",
            show_label=False,
            lines=1,
            max_lines=6,
            scale=8,
            elem_id="arena-prompt",
        )
        send = gr.Button("Send", variant="primary", scale=1, min_width=100, elem_id="arena-send")
        again = gr.Button("New round", variant="secondary", scale=1, min_width=120)
    outputs = [*chats, battle, status, *votes.values(), send, prompt]

    async def on_play(
        route_name: str | None, text: str, unit_id: str | None, state: dict[str, Any] | None
    ) -> AsyncIterator[RoundView]:
        async for view in play(client, route_name, text, unit_id, state):
            yield view

    gr.on(
        [send.click, prompt.submit],
        on_play,
        inputs=[route, prompt, unit, battle],
        outputs=outputs,
        api_visibility="private",
    )
    for key, button in votes.items():

        async def on_vote(
            state: dict[str, Any] | None, unit_id: str | None, winner: str = key
        ) -> RoundView:
            return await vote(client, state, winner, unit_id)

        button.click(on_vote, inputs=[battle, unit], outputs=outputs, api_visibility="private")
    again.click(new_round, outputs=outputs, api_visibility="private")
    route.change(lambda: new_round(keep_prompt=True), outputs=outputs, api_visibility="private")
