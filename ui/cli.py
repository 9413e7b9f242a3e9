"""``canary ui``: serve the UI on its own against a (possibly remote) router's HTTP API."""

from __future__ import annotations

import argparse
import os
from typing import Any


def _run(args: argparse.Namespace) -> None:
    # Imported here: gradio takes seconds to import and the other commands do not need it.
    from ui.client import RouterClient
    from ui.mount import launch_ui

    client = RouterClient(args.router, admin_token=args.admin_token, api_key=args.api_key)
    print(f"canary-router UI on http://{args.host}:{args.port}, using the router at {args.router}")
    launch_ui(client, host=args.host, port=args.port)


def add_ui_command(sub: Any) -> None:
    """Register ``canary ui`` on the ``canary`` parser's subcommands."""
    ui = sub.add_parser(
        "ui",
        help="serve the web UI (arena, chat, dashboard, experiments) against a router",
        description="Serve the web UI on its own; it uses only the router's HTTP API.",
    )
    ui.add_argument(
        "--router",
        default="http://127.0.0.1:8000",
        help="the router's base URL (default: http://127.0.0.1:8000)",
    )
    ui.add_argument("--host", default="127.0.0.1", help="interface to serve on (127.0.0.1)")
    ui.add_argument("--port", type=int, default=7860, help="port to serve on (7860)")
    ui.add_argument(
        "--api-key",
        default=os.environ.get("CANARY_UI_API_KEY") or None,
        help="the client API key the UI sends to the router (needed when the router runs "
        "with auth=keys; default: $CANARY_UI_API_KEY)",
    )
    ui.add_argument(
        "--admin-token",
        help="start signed in as admin with this token (for a trusted operator's own UI; "
        "otherwise people sign in on the Experiments tab)",
    )
    ui.set_defaults(func=_run)
