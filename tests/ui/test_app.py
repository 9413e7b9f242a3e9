"""The app around the tabs: header, mount in the router's main job, ``canary ui``."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import gradio as gr
import httpx
import pytest

from router.cli import build_parser
from router.config import Settings
from tests.servers import free_port
from tests.ui.conftest import Running
from ui import cli as ui_cli
from ui.app import build_ui, load_header, route_status
from ui.client import RouterClient
from ui.mount import served_at


async def test_header_gives_a_unit_the_routes_and_the_split(client: RouterClient) -> None:
    unit, picker, status = await load_header(client, None, None)
    assert unit.startswith("ui-") and len(unit) > 10
    assert picker["choices"] == ["chat"] and picker["value"] == "chat"
    assert "connected" in status and "champion 50% · challenger 50%" in status
    same, _, _ = await load_header(client, unit, "chat")
    assert same == unit  # the browser keeps its unit: assignment stays sticky
    assert "chat: champion 50%" in await route_status(client, "chat")
    assert "gone from the router" in await route_status(client, "ghost")


async def test_header_says_when_the_router_is_down() -> None:
    down = RouterClient(f"http://127.0.0.1:{free_port()}")
    unit, picker, status = await load_header(down, "ui-kept", None)
    assert unit == "ui-kept" and picker["choices"] == []
    assert "Router unavailable" in status and "unreachable" in status
    await down.aclose()


def test_build_ui_has_the_four_tabs() -> None:
    blocks = build_ui(RouterClient("http://127.0.0.1:1"))
    tabs = [b.label for b in blocks.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == ["Arena", "Chat", "Dashboard", "Experiments"]
    assert blocks.title == "canary-router"
    html = [b for b in blocks.blocks.values() if b.elem_id == "exp-token-help"]
    assert "<code>data/admin_token</code>" in html[0].value  # where to find the token


def test_main_job_serves_the_ui_on_its_own_port(
    make_settings: Callable[..., Settings],
    run_router: Callable[..., AbstractContextManager[Running]],
) -> None:
    with run_router(make_settings(ui_enabled=True)) as (server, _):
        assert httpx.get(f"{server.url}/ui/", timeout=30).status_code == 200
        config = httpx.get(f"{server.url}/ui/config", timeout=30).json()
        assert config["title"] == "canary-router"
        assert httpx.get(f"{server.url}/v1/routes").status_code == 200  # API untouched
        home = httpx.get(f"{server.url}/", follow_redirects=True, timeout=30)
        assert home.status_code == 200 and home.url.path == "/ui/"  # the address leads to it
    with run_router(make_settings(ui_enabled=False)) as (server, _):
        assert httpx.get(f"{server.url}/ui/").status_code == 404
        assert httpx.get(f"{server.url}/").headers["location"] == "/docs"


def test_the_ui_calls_the_address_it_was_served_on() -> None:
    scope = {"type": "http", "scheme": "http", "server": ("127.0.0.1", 43123)}
    assert served_at(scope) == "http://127.0.0.1:43123"
    assert served_at({**scope, "server": ("::1", 8000)}) == "http://[::1]:8000"
    assert served_at({**scope, "server": ("/run/canary.sock", None)}) is None


def test_canary_ui_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANARY_UI_API_KEY", raising=False)
    argv = ["ui", "--router", "http://10.0.0.5:8000", "--port", "9000"]
    args = build_parser().parse_args([*argv, "--admin-token", "t", "--api-key", "k"])
    assert args.func is ui_cli._run
    assert (args.router, args.port, args.host, args.admin_token, args.api_key) == (
        "http://10.0.0.5:8000",
        9000,
        "127.0.0.1",
        "t",
        "k",
    )
    defaults = build_parser().parse_args(["ui"])
    assert (defaults.router, defaults.port, defaults.admin_token, defaults.api_key) == (
        "http://127.0.0.1:8000",
        7860,
        None,
        None,
    )
    monkeypatch.setenv("CANARY_UI_API_KEY", "from-env")
    assert build_parser().parse_args(["ui"]).api_key == "from-env"
    assert build_parser().parse_args(["ui", "--api-key", "flag"]).api_key == "flag"


def test_canary_ui_passes_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[RouterClient] = []
    monkeypatch.setattr("ui.mount.launch_ui", lambda client, **_: seen.append(client))
    ui_cli._run(build_parser().parse_args(["ui", "--api-key", "k", "--admin-token", "t"]))
    assert seen[0].api_key == "k" and seen[0].admin_token == "t"
