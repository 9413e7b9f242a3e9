"""Dashboard tab handler against a real router: the figures, plots and downloads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from matplotlib.figure import Figure

from tests.servers import free_port
from ui.client import RouterClient
from ui.tabs import arena, chat, dashboard


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


async def _traffic(client: RouterClient) -> None:
    """Four chat turns from four units, one thumbs up, one arena battle with its vote."""
    for i in range(4):
        views = [v async for v in chat.send(client, "chat", "hi there", [], [], f"u{i}", False)]
        if i == 0:
            await chat.rate(client, views[-1].answers, 1, True, "", "u0", False)
    battle = [v async for v in arena.play(client, "chat", "which?", "voter")][-1].battle
    await arena.vote(client, battle, "tie", "voter")


async def test_refresh_renders_the_routes_figures(client: RouterClient, tmp_path: Path) -> None:
    await _traffic(client)
    view = await dashboard.refresh(client, "chat", "Last hour", tmp_path)
    # 4 chat requests + 2 arena answers, all logged; one tie among the votes.
    assert '<div class="cr-stat-value">6</div>' in view.cards
    assert "50% / 50%" in view.cards and "All traffic" in view.cards
    assert "champion · fake-champion v1" in view.arms
    assert "challenger · fake-challenger v2" in view.arms
    assert "<td>Ties</td><td>1</td>" in view.votes
    assert isinstance(view.plot, Figure) and len(view.plot.axes) == 3
    assert "60-second buckets" in view.status

    board = json.loads(_read(view.json_file))
    arms = board["arms"]
    assert arms["champion"]["requests"] + arms["challenger"]["requests"] == 6
    assert sum(a["thumbs_up"] for a in arms.values()) == 1
    rows = list(csv.reader(_read(view.csv_file).splitlines()))
    assert len(rows) > 3 and any("champion" in r for r in rows)
    assert Path(view.csv_file).name == "chat-dashboard.csv"


async def test_errors_and_missing_route_are_messages(client: RouterClient, tmp_path: Path) -> None:
    view = await dashboard.refresh(client, "ghost", "Last hour", tmp_path)
    assert "cr-error" in view.status and "ghost" in view.status
    assert view.csv_file is None
    view = await dashboard.refresh(client, None, "Last hour", tmp_path)
    assert "Pick a route" in view.status
    down = RouterClient(f"http://127.0.0.1:{free_port()}")
    view = await dashboard.refresh(down, "chat", "Last 7 days", tmp_path)
    assert "unreachable" in view.status
    await down.aclose()


def test_every_window_has_a_sensible_bucket() -> None:
    for window_s, bucket_s in dashboard.WINDOWS.values():
        assert 20 <= window_s // bucket_s <= 60
