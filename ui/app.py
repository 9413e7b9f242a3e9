"""``build_ui(client)``: the Gradio app, one tab per module under ``ui/tabs``.

Nothing is built at import time: every widget, state and temporary directory belongs to
the ``gr.Blocks`` that :func:`build_ui` returns. The look lives in ``theme.css`` and
:func:`make_theme`; both are applied where the app is served (``launch`` or the mount),
as Gradio 6 wants.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import gradio as gr

from ui.client import RouterClient, RouterError
from ui.render import badge, esc, notice, pct
from ui.tabs.arena import add_arena_tab
from ui.tabs.chat import add_chat_tab
from ui.tabs.dashboard import add_dashboard_tab, stop_refreshing
from ui.tabs.experiments import add_experiments_tab

__all__ = [
    "CSS_PATH",
    "FORCE_LIGHT_JS",
    "TITLE",
    "build_ui",
    "load_header",
    "make_theme",
    "route_status",
]

CSS_PATH = Path(__file__).with_name("theme.css")
TITLE = "canary-router"
#: How often the header's split line is refreshed (s).
STATUS_EVERY_S = 30.0
#: localStorage key of the browser's unit id: assignment sticks to it across reloads.
UNIT_STORAGE_KEY = "canary-router-unit"

BRAND = """
<div class="cr-brand">
  <div class="cr-logo" aria-hidden="true">◆</div>
  <div>
    <div class="cr-title">canary-router</div>
    <div class="cr-subtitle">Compare, chat with and safely roll out chat models</div>
  </div>
</div>
"""


#: The UI is drawn for a light background: keep Gradio from switching to dark mode.
FORCE_LIGHT_JS = """
() => {
  const light = () => document.body.classList.remove("dark");
  light();
  const watch = {attributes: true, attributeFilter: ["class"]};
  new MutationObserver(light).observe(document.body, watch);
}
"""


def make_theme() -> gr.themes.Base:
    """The app's Gradio theme (colours and fonts; the rest is in ``theme.css``)."""
    return gr.themes.Soft(
        primary_hue="amber",
        secondary_hue="slate",
        neutral_hue="slate",
        # Local fonts only: the UI must not reach the internet (no Google Fonts).
        font=["Inter", "ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    ).set(
        body_background_fill="#f6f7fb",
        block_radius="14px",
        block_label_background_fill="transparent",
        block_label_text_color="#4b5563",
        block_title_background_fill="transparent",
        block_title_text_color="#374151",
        block_title_text_weight="600",
        button_large_radius="10px",
        button_medium_radius="10px",
        button_small_radius="8px",
    )


def _split(route: dict[str, Any]) -> str:
    """The route's live traffic split, as a short line for the header."""
    champion = route["champion"]["weight"]
    challenger = (route.get("challenger") or {}).get("weight")
    if challenger is None:
        return f"champion only ({pct(champion, 0)})"
    return f"champion {pct(champion, 0)} · challenger {pct(challenger, 0)}"


async def load_header(
    client: RouterClient, unit: str | None, current: str | None
) -> tuple[str, Any, str]:
    """On page load: this browser's unit id, the route picker's choices and the status line.

    The unit id is made once per browser and kept in its localStorage, so the chat's
    assignment stays sticky across reloads.
    """
    unit = unit or f"ui-{uuid.uuid4().hex[:16]}"
    try:
        routes = await client.routes()
    except RouterError as exc:
        status = notice(exc.message, "error", title="Router unavailable.")
        return unit, gr.update(choices=[], value=None), status
    names = [r["name"] for r in routes]
    if not names:
        status = notice("The router has no routes yet: register a model first.", "warning")
        return unit, gr.update(choices=[], value=None), status
    chosen = current if current and current in names else str(names[0])
    return unit, gr.update(choices=names, value=chosen), _status(routes, chosen)


def _status(routes: list[dict[str, Any]], chosen: str) -> str:
    route = next(r for r in routes if r["name"] == chosen)
    return (
        f'<div class="cr-connection">{badge("connected", "ok")} '
        f"<span>{len(routes)} route{'s' if len(routes) != 1 else ''} · "
        f"{esc(chosen)}: {esc(_split(route))}</span></div>"
    )


async def route_status(client: RouterClient, route: str | None) -> str:
    """The status line for ``route``: reachability and its live split (which an
    experiment moves stage by stage)."""
    try:
        routes = await client.routes()
    except RouterError as exc:
        return notice(exc.message, "error", title="Router unavailable.")
    if route not in [r["name"] for r in routes]:
        return notice(f"The route {route!r} is gone from the router: reload the page.", "warning")
    return _status(routes, str(route))


def build_ui(client: RouterClient) -> gr.Blocks:
    """The whole UI against ``client``'s router: header with route picker, four tabs."""
    downloads = Path(tempfile.mkdtemp(prefix="canary-ui-"))  # dashboard and report files
    with gr.Blocks(
        title=TITLE,
        analytics_enabled=False,
        fill_width=True,
        delete_cache=(1800, 3600),  # downloads are regenerated on every refresh
    ) as blocks:
        unit = gr.BrowserState(None, storage_key=UNIT_STORAGE_KEY)
        with gr.Row(elem_classes="cr-header", equal_height=True):
            gr.HTML(BRAND, elem_classes="cr-brand-wrap")
            with gr.Column(scale=0, min_width=260, elem_classes="cr-route-col"):
                route = gr.Dropdown(
                    label="Route",
                    choices=[],
                    value=None,
                    interactive=True,
                    elem_id="cr-route",
                )
        connection = gr.HTML(elem_id="cr-connection")
        with gr.Tabs(elem_classes="cr-tabs") as tabs:
            with gr.Tab("Arena", id="arena", elem_id="tab-arena") as arena_tab:
                add_arena_tab(client, route=route, unit=unit)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat") as chat_tab:
                add_chat_tab(client, route=route, unit=unit)
            with gr.Tab("Dashboard", id="dashboard", elem_id="tab-dashboard") as dashboard_tab:
                timer = add_dashboard_tab(
                    client, route=route, tab=dashboard_tab, downloads=downloads
                )
            with gr.Tab("Experiments", id="experiments", elem_id="tab-experiments") as exp_tab:
                add_experiments_tab(client, route=route, tab=exp_tab, downloads=downloads)
        for other in (arena_tab, chat_tab, exp_tab):
            other.select(stop_refreshing, outputs=timer, api_visibility="private")

        async def on_load(unit_id: str | None, current: str | None) -> tuple[str, Any, str]:
            return await load_header(client, unit_id, current)

        blocks.load(on_load, inputs=[unit, route], outputs=[unit, route, connection])

        async def on_status(current: str | None) -> str:
            return await route_status(client, current)

        status_timer = gr.Timer(STATUS_EVERY_S)  # an experiment moves the split over time
        gr.on(
            [tabs.select, route.input, status_timer.tick],
            on_status,
            inputs=route,
            outputs=connection,
            api_visibility="private",
            show_progress="hidden",
        )
    # Handlers only await the router; none should wait behind another person's stream.
    blocks.queue(default_concurrency_limit=None)
    _poll_gently(blocks)
    return blocks


def _poll_gently(blocks: gr.Blocks) -> None:
    """Gradio's queue polls every 1 ms (progress every 10 ms) while idle: mounted in the
    router, that is ~5% of a core and a thousand wake-ups a second on the event loop
    that serves the API. Every 20 ms is still instant to a person."""
    queue = getattr(blocks, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = 0.02
        queue.progress_update_sleep_when_free = 0.1
