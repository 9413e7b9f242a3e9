"""Serving the UI: mounted inside a FastAPI app (the router's main job) or on its own.

The mounted UI still talks to the router over HTTP, like any other client. When no URL
is configured it calls the address its own page was served from: the server's real
host and port (taken from the ASGI scope), so a router on any port reaches itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import gradio as gr
from fastapi import FastAPI
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from ui.app import CSS_PATH, FORCE_LIGHT_JS, build_ui, make_theme
from ui.client import RouterClient

__all__ = ["launch_ui", "mount_ui"]


def served_at(scope: Scope) -> str | None:
    """``http://host:port`` of the socket the request came in on, if it was TCP."""
    server = scope.get("server")
    if not server or server[1] is None:
        return None  # a Unix socket: there is no URL to call
    host, port = server
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if scope.get('scheme') == 'https' else 'http'}://{host}:{port}"


class _FollowServer:
    """ASGI middleware: the first request tells the client where this server listens."""

    def __init__(self, app: ASGIApp, client: RouterClient) -> None:
        self.app = app
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.client.base_url is None and scope["type"] in ("http", "websocket"):
            url = served_at(scope)
            if url:
                self.client.follow(url)
        await self.app(scope, receive, send)


def mount_ui(app: FastAPI, client: RouterClient, *, path: str = "/ui") -> None:
    """Mount the UI at ``path`` in ``app``; ``client.base_url`` None: follow the server."""
    gr.mount_gradio_app(
        app,
        build_ui(client),
        path=path,
        theme=make_theme(),
        css_paths=[CSS_PATH],
        js=FORCE_LIGHT_JS,
        footer_links=[],
        run_history=False,
        show_error=False,  # errors reach the person as our own notices, never a trace
    )
    if client.base_url is None:
        mounted = next(r for r in app.routes if isinstance(r, Mount) and r.path == path)
        mounted.app = _FollowServer(mounted.app, client)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(parent: Any) -> AsyncIterator[Any]:
        async with inner(parent) as state:
            try:
                yield state
            finally:
                await client.aclose()  # the UI's connection pool to the router

    app.router.lifespan_context = lifespan


def launch_ui(client: RouterClient, *, host: str, port: int, **launch: Any) -> None:
    """Serve the UI on its own (``canary ui``), blocking until interrupted."""
    build_ui(client).launch(
        server_name=host,
        server_port=port,
        theme=make_theme(),
        css_paths=[CSS_PATH],
        js=FORCE_LIGHT_JS,
        footer_links=[],
        run_history=False,
        show_error=False,
        share=False,
        **launch,
    )
