"""Shared fixtures: settings on a temporary data dir, real routers on loopback, Postgres."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from mlflow import MlflowClient

from registry.store import Registry
from router.app import create_app
from router.backends import FakeSpec
from router.config import RouteConfig, Settings
from tests.servers import ServerThread
from tests.servers import mlflow_server as run_mlflow_server

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
        # Building the Gradio UI costs ~1 s per router; tests of the UI turn it on.
        overrides.setdefault("ui_enabled", False)
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


@contextmanager
def _fresh_database() -> Iterator[str]:
    name = f"canary_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database on the real Postgres server shared by the session, dropped afterwards."""
    with _fresh_database() as url:
        yield url


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A database of this test's own, for tests that count every row in it."""
    with _fresh_database() as url:
        yield url


# -- MLflow registries ------------------------------------------------------------------
# A fresh MLflow sqlite database runs ~1.5 s of migrations, so one migrated database is
# made per session and copied for each test (MLflow sees an up-to-date schema).

MakeRegistry = Callable[[Path], Registry]


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite database with every migration applied."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def make_registry(migrated_db: Path) -> MakeRegistry:
    """``make_registry(dir)``: a ``Registry`` on a new embedded store inside ``dir``."""

    def make(root: Path) -> Registry:
        root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_db, root / "mlflow.db")
        return Registry(
            f"sqlite:///{root / 'mlflow.db'}",
            cache_dir=root / "cache",
            artifact_root=root / "mlartifacts",
        )

    return make


@pytest.fixture
def registry(make_registry: MakeRegistry, tmp_path: Path) -> Registry:
    """An empty registry on a temporary embedded sqlite store."""
    return make_registry(tmp_path / "registry")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` for the session; its URL."""
    with run_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture
def fast_http_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow retries HTTP for minutes by default; make an unreachable server fail fast."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
