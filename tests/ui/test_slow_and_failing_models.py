"""The UI with slow and failing models: answers stream, nothing waits behind them, and a
model's failure reaches the person as the router's message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from router.config import Settings
from tests.conftest import fake_routes
from tests.ui.conftest import Running
from ui.client import RouterClient
from ui.tabs import arena, chat, dashboard

SLOW_TEXT = " ".join(f"word{i}" for i in range(20))  # 20 tokens at 10/s: about 2 s


async def test_slow_answer_streams_and_blocks_nothing(
    make_settings: Callable[..., Settings],
    run_router: Callable[..., AbstractContextManager[Running]],
    tmp_path: Path,
) -> None:
    slow = {"mode": "canned", "text": SLOW_TEXT, "tokens_per_s": 10}
    with run_router(make_settings(routes=fake_routes(champion=slow, challenger=slow))) as (
        server,
        _,
    ):
        client = RouterClient(server.url)
        started = time.monotonic()
        seen: list[tuple[float, int]] = []

        async def talk() -> None:
            async for view in chat.send(client, "chat", "hi", [], [], "slow-unit", False):
                words = len(view.chatbot[-1]["content"].split()) if len(view.chatbot) > 1 else 0
                seen.append((time.monotonic() - started, words))

        talking = asyncio.create_task(talk())
        await asyncio.sleep(0.5)
        board = await dashboard.refresh(client, "chat", "Last hour", tmp_path)
        refreshed_at = time.monotonic() - started
        await talking
        await client.aclose()
    assert "cr-stats" in board.cards
    assert refreshed_at < seen[-1][0] - 0.5  # the dashboard did not wait for the answer
    partial = [words for _, words in seen if 0 < words < 20]
    assert len(partial) >= 5  # the person watched it arrive word by word
    assert seen[-1][1] == 20


async def test_failing_side_is_shown_and_the_battle_still_counts(
    make_settings: Callable[..., Settings],
    run_router: Callable[..., AbstractContextManager[Running]],
) -> None:
    routes = fake_routes(challenger={"error_rate": 1.0})
    with run_router(make_settings(routes=routes)) as (server, _):
        client = RouterClient(server.url)
        views = [v async for v in arena.play(client, "chat", "are you there", "u1")]
        last = views[-1]
        failed = [c for c in (last.chat_a, last.chat_b) if "could not answer" in repr(c)]
        assert len(failed) == 1 and "failed to answer" in repr(failed[0])
        assert last.vote_both_bad["interactive"] is True
        voted = await arena.vote(client, last.battle, "both_bad", "u1")
        assert "neither answer was good" in voted.status
        await client.aclose()
