"""Dashboard tab: the route's figures per arm, plots over time, CSV and JSON downloads.

All numbers come from ``GET /v1/routes/{route}/dashboard`` (and the CSV from
``.../dashboard.csv``): the UI formats and plots, it computes no statistics. While the tab
is open it refreshes itself every few seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ui.client import RouterClient, RouterError
from ui.render import esc, interval, ms, notice, num, panel, pct, stat, table

#: Window choices: label -> (window_s, bucket_s); about 30-60 buckets each.
WINDOWS: dict[str, tuple[int, int]] = {
    "Last 15 minutes": (900, 30),
    "Last hour": (3600, 60),
    "Last 6 hours": (6 * 3600, 600),
    "Last 24 hours": (86_400, 1800),
    "Last 7 days": (7 * 86_400, 4 * 3600),
}
DEFAULT_WINDOW = "Last hour"
REFRESH_EVERY_S = 10.0
ARMS = ("champion", "challenger")
COLOURS = {"champion": "#2563eb", "challenger": "#d97706"}


class DashboardView(NamedTuple):
    """Outputs of a refresh, in the order they are wired (HTML, or an update that keeps
    what is shown)."""

    cards: Any
    arms: Any
    votes: Any
    plot: Any
    csv_file: Any
    json_file: Any
    status: str


def _arm_title(arm: str, data: dict[str, Any] | None) -> str:
    if data is None:
        return arm
    return f"{arm} · {data['model']} v{data['version']}"


def arms_table(board: dict[str, Any]) -> str:
    """Champion and challenger side by side, one metric per row."""
    arms = [a for a in ARMS if board["arms"].get(a)]
    weights = board.get("weights") or {}

    def row(label: str, fn: Any) -> list[str]:
        return [esc(label), *(fn(board["arms"][a], a) for a in arms)]

    def thumbs(d: dict[str, Any], _: str) -> str:
        ci = interval(d.get("thumbs_up_ci"))
        rate = esc(pct(d.get("thumbs_up_rate")))
        return f'{rate} <span class="cr-ci">{esc(ci)}</span>' if ci else rate

    rows = [
        row("Traffic share", lambda d, a: esc(pct(weights.get(a), 0))),
        row("Requests", lambda d, a: esc(f"{d['requests']:,}")),
        row("Errors", lambda d, a: esc(f"{d['errors']:,} ({pct(d.get('error_rate'))})")),
        row("Latency p50", lambda d, a: esc(ms(d.get("latency_p50_ms")))),
        row("Latency p95", lambda d, a: esc(ms(d.get("latency_p95_ms")))),
        row("Time to first token p50", lambda d, a: esc(ms(d.get("ttft_p50_ms")))),
        row("Tokens / s", lambda d, a: esc(num(d.get("tokens_per_s")))),
        row("Thumbs up / down", lambda d, a: esc(f"{d['thumbs_up']:,} / {d['thumbs_down']:,}")),
        row("Thumbs-up rate (95% CI)", thumbs),
    ]
    header = ["", *(_arm_title(a, board["arms"][a]) for a in arms)]
    return panel("Per arm", table(header, rows, raw=True, css_class="cr-table cr-arms"))


def votes_table(board: dict[str, Any]) -> str:
    """Arena votes and the Bradley-Terry ratings with their intervals."""
    votes = board["votes"]
    ratings = votes.get("bradley_terry") or {}
    cis = votes.get("bradley_terry_ci") or {}
    rows = [
        ["Challenger wins", f"{votes['challenger_wins']:,}"],
        ["Champion wins", f"{votes['champion_wins']:,}"],
        ["Ties", f"{votes['ties']:,}"],
        ["Both bad", f"{votes['both_bad']:,}"],
        ["Voters (decisive votes)", f"{votes.get('voters', 0):,}"],
        ["Challenger win rate", pct(votes.get("win_rate"))],
    ]
    for arm in ARMS:
        ci = interval(cis.get(arm), fmt="num", digits=0)
        rating = num(ratings.get(arm), 0) + (f"  ({ci})" if ci else "")
        rows.append([f"Bradley-Terry rating, {arm}", rating])
    return panel("Arena votes", table(["", "Count"], rows, css_class="cr-table cr-votes"))


def summary_cards(board: dict[str, Any]) -> str:
    """The headline figures: traffic, split, votes, scope."""
    arms = {a: d for a, d in board["arms"].items() if d}
    total = sum(d["requests"] for d in arms.values())
    errors = sum(d["errors"] for d in arms.values())
    votes = board["votes"]
    voted = sum(votes[k] for k in ("challenger_wins", "champion_wins", "ties", "both_bad"))
    weights = board.get("weights") or {}
    split = " / ".join(pct(weights.get(a), 0) for a in ARMS if a in arms) or "—"
    experiment = board.get("experiment_id")
    cards = [
        stat("Requests", f"{total:,}", f"{errors:,} failed"),
        stat("Traffic split", split, "champion / challenger"),
        stat(
            "Arena votes",
            f"{voted:,}",
            f"from {_voters(votes)}, challenger win rate {pct(votes.get('win_rate'))}",
        ),
        stat(
            "Counting",
            experiment or "All traffic",
            "the running experiment" if experiment else "no experiment running",
        ),
    ]
    return '<div class="cr-stats">' + "".join(cards) + "</div>"


def _voters(votes: dict[str, Any]) -> str:
    """Who cast the decisive votes, as "12 voters" (one voter's many votes are one)."""
    n = int(votes.get("voters") or 0)
    return f"{n:,} voter" + ("" if n == 1 else "s")


def _series(board: dict[str, Any], arm: str, key: str) -> tuple[list[datetime], list[float]]:
    points = [p for p in board["timeline"] if p["arm"] == arm]
    times = [datetime.fromisoformat(p["time"]) for p in points]
    return times, [float("nan") if p.get(key) is None else float(p[key]) for p in points]


def plot(board: dict[str, Any]) -> Figure:
    """Three panels over time: requests, latency (p50 solid, p95 dashed), thumbs-up rate
    with its 95% band."""
    fig = Figure(figsize=(12, 3.4), dpi=100, layout="constrained")
    panels = fig.subplots(1, 3, sharex=True)
    arms = [a for a in ARMS if board["arms"].get(a)]
    for arm in arms:
        colour = COLOURS[arm]
        times, requests = _series(board, arm, "requests")
        panels[0].plot(times, requests, color=colour, label=arm, lw=1.8)
        _, p50 = _series(board, arm, "latency_p50_ms")
        _, p95 = _series(board, arm, "latency_p95_ms")
        panels[1].plot(times, p50, color=colour, lw=1.8, marker=".", label=f"{arm} p50")
        panels[1].plot(times, p95, color=colour, lw=1.2, ls="--", label=f"{arm} p95")
        _, rate = _series(board, arm, "thumbs_up_rate")
        _, low = _series(board, arm, "ci_low")
        _, high = _series(board, arm, "ci_high")
        panels[2].plot(times, rate, color=colour, lw=1.8, marker=".", label=arm)
        panels[2].fill_between(times, low, high, color=colour, alpha=0.15, lw=0)
    titles = ("Requests per bucket", "Latency (ms)", "Thumbs-up rate (95% band)")
    for ax, title in zip(panels, titles, strict=True):
        ax.set_title(title, fontsize=11, loc="left", color="#1f2937")
        ax.grid(alpha=0.25)
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8, colors="#4b5563")
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M"))
    panels[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    panels[2].set_ylim(0, 1)
    if arms:
        panels[0].legend(fontsize=8, frameon=False)
        panels[1].legend(fontsize=7, frameon=False, ncols=2)
    if not any(p["requests"] for p in board["timeline"]):
        panels[0].text(
            0.5, 0.5, "No requests in this window", ha="center", transform=panels[0].transAxes
        )
    return fig


def _write(path: Path, text: str) -> Path:
    """Write atomically: another session may be handed the same file at the same moment."""
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=".staging-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(staging, path)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "route"


async def refresh(
    client: RouterClient, route: str | None, window: str, downloads: Path
) -> DashboardView:
    """Fetch the route's dashboard (JSON and CSV) and render every part of the tab."""
    window_s, bucket_s = WINDOWS.get(window, WINDOWS[DEFAULT_WINDOW])
    if not route:
        empty = notice("Pick a route to see its dashboard.", "warning")
        return DashboardView("", "", "", None, None, None, empty)
    try:
        board, csv_text = await asyncio.gather(
            client.dashboard(route, bucket_s=bucket_s, window_s=window_s),
            client.dashboard_csv(route, bucket_s=bucket_s, window_s=window_s),
        )
    except RouterError as exc:
        failed = notice(exc.message, "error", title="The dashboard could not be loaded.")
        return DashboardView(gr.update(), gr.update(), gr.update(), gr.update(), None, None, failed)
    name = _safe(route)
    csv_path, json_path = await asyncio.to_thread(
        lambda: (
            _write(downloads / f"{name}-dashboard.csv", csv_text),
            _write(downloads / f"{name}-dashboard.json", json.dumps(board, indent=2)),
        )
    )
    stamp = datetime.fromisoformat(board["generated_at"]).strftime("%H:%M:%S")
    status = (
        f'<div class="cr-updated">Updated {esc(stamp)} UTC · {esc(window.lower())} in '
        f"{esc(str(bucket_s))}-second buckets</div>"
    )
    return DashboardView(
        summary_cards(board),
        arms_table(board),
        votes_table(board),
        await asyncio.to_thread(plot, board),  # keep the router's event loop free
        str(csv_path),
        str(json_path),
        status,
    )


def add_dashboard_tab(
    client: RouterClient, *, route: gr.Dropdown, tab: gr.Tab, downloads: Path
) -> gr.Timer:
    """The dashboard's widgets and events; returns its refresh timer, which runs only
    while this tab is open (the caller stops it when another tab is selected)."""
    timer = gr.Timer(REFRESH_EVERY_S, active=False)
    with gr.Row(elem_classes="cr-toolbar"):
        window = gr.Dropdown(
            list(WINDOWS),
            value=DEFAULT_WINDOW,
            show_label=False,
            scale=2,
            min_width=180,
            elem_id="dash-window",
        )
        auto = gr.Checkbox(value=True, label="Refresh on its own", scale=1, min_width=170)
        refresh_button = gr.Button(
            "Refresh", size="md", scale=0, min_width=110, elem_id="dash-refresh"
        )
        csv_file = gr.DownloadButton(
            "Download CSV", size="md", scale=0, min_width=150, elem_id="dash-csv"
        )
        json_file = gr.DownloadButton(
            "Download JSON", size="md", scale=0, min_width=150, elem_id="dash-json"
        )
    status = gr.HTML(elem_id="dash-status")
    cards = gr.HTML(elem_id="dash-cards")
    with gr.Row(equal_height=False):
        arms = gr.HTML(elem_id="dash-arms", scale=3)
        votes = gr.HTML(elem_id="dash-votes", scale=2)
    chart = gr.Plot(
        label="Requests, latency and thumbs-up rate over time",
        show_label=False,
        elem_id="dash-plot",
        elem_classes="cr-plot",
    )
    outputs = [cards, arms, votes, chart, csv_file, json_file, status]

    async def on_refresh(route_name: str | None, window_label: str) -> DashboardView:
        return await refresh(client, route_name, window_label, downloads)

    gr.on(
        [refresh_button.click, window.change, route.change, tab.select],
        on_refresh,
        inputs=[route, window],
        outputs=outputs,
        api_visibility="private",
        show_progress="minimal",
    )
    # Refreshes on their own must not dim the page every few seconds.
    timer.tick(
        on_refresh,
        inputs=[route, window],
        outputs=outputs,
        api_visibility="private",
        show_progress="hidden",
    )
    tab.select(lambda on: gr.Timer(active=on), inputs=auto, outputs=timer, api_visibility="private")
    auto.change(
        lambda on: gr.Timer(active=on), inputs=auto, outputs=timer, api_visibility="private"
    )
    return timer


def stop_refreshing() -> gr.Timer:
    """Handler for the other tabs' ``select``: no refreshes while the dashboard is hidden."""
    return gr.Timer(active=False)
