"""Shared fixtures: settings on a temporary data dir, real routers on loopback, Postgres."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI

from router.app import create_app
from router.backends import FakeSpec
from router.config import RouteConfig, Settings
from tests.servers import ServerThread

#: Postgres from DESIGN.md; CI sets CANARY_TEST_POSTGRES the same way. Tests fail (never
#: skip) when it is unreachable.
PG_ADMIN_URL = os.environ.get("CANARY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def fake_routes(**route: Any) -> dict[str, RouteConfig]:
    """Route ``chat``: fake champion v1 (echo), fake challenger v2, 50/50 unless overridden."""
    champion = route.pop("champion", {})
    challenger = route.pop("challenger", {})
    return {
        "chat": RouteConfig(
            champion=FakeSpec(
                **{"name": "fake-champion", "version": "1", "mode": "echo", **champion}
            ),
            challenger=FakeSpec(name="fake-challenger", version="2", **challenger),
            **{"challenger_weight": 50.0, **route},
        )
    }


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        overrides.setdefault("routes", fake_routes())
        overrides.setdefault("log_format", "text")
        return Settings(data_dir=tmp_path / "data", **overrides)

    return make


@pytest.fixture
def run_router() -> Callable[..., AbstractContextManager[tuple[ServerThread, FastAPI]]]:
    """``with run_router(settings) as (server, app):`` a real uvicorn serving the router."""

    @contextmanager
    def run(settings: Settings, **kwargs: Any) -> Iterator[tuple[ServerThread, FastAPI]]:
        app = create_app(settings, **kwargs)
        server = ServerThread(app).start()
        try:
            yield server, app
        finally:
            server.stop()

    return run


@pytest.fixture
def router(
    make_settings: Callable[..., Settings],
    run_router: Callable[..., AbstractContextManager[tuple[ServerThread, FastAPI]]],
) -> Iterator[tuple[ServerThread, FastAPI]]:
    """A router with the default fake routes, on SQLite."""
    with run_router(make_settings()) as running:
        yield running


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the real Postgres server, dropped afterwards."""
    name = f"canary_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
