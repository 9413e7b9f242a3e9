"""Exactly one inference row per request, on SQLite and on the real Postgres; nothing lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from router.config import Settings
from router.inference_log.db import create_db_engine, migrate
from router.inference_log.models import InferenceRecord
from router.inference_log.writer import LogWriter
from router.metrics import Metrics
from tests.conftest import fake_routes

LOG = InferenceRecord.__table__  # type: ignore[attr-defined]


def _count(url: str, **where: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            q = select(func.count()).select_from(LOG)
            for column, value in where.items():
                q = q.where(LOG.c[column] == value)
            return int(conn.execute(q).scalar_one())
    finally:
        engine.dispose()


def _send(url: str, n: int, *, stream_every: int = 3) -> list[httpx.Response]:
    """n requests from 8 threads, every third one streamed, units spread over 50 users."""

    def one(i: int) -> httpx.Response:
        body: dict[str, Any] = {
            "model": "chat",
            "messages": [{"role": "user", "content": f"request number {i}"}],
            "user": f"user-{i % 50}",
            "stream": i % stream_every == 0,
        }
        with httpx.Client(timeout=30) as c:
            r = c.post(f"{url}/v1/chat/completions", json=body)
            r.read()
            return r

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_row_count_equals_request_count(
    database: str,
    make_settings: Callable[..., Settings],
    run_router: Any,
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue("fresh_postgres_url") if database == "postgres" else None
    # Some challenger failures (fallbacks) and a burst larger than one batch.
    routes = fake_routes(challenger={"error_rate": 0.2, "seed": 7})
    settings = make_settings(database_url=url, routes=routes, log_batch_size=50)
    with run_router(settings) as (server, _):
        responses = _send(server.url, 300)
    assert all(r.status_code == 200 for r in responses)
    ids = {r.headers["x-request-id"] for r in responses}
    assert len(ids) == 300
    assert _count(settings.db_url) == 300
    assert _count(settings.db_url, status="fallback") > 0
    # The stream rows carry TTFT; every row has its arm and version.
    engine = create_engine(settings.db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(LOG)).mappings().all()
    engine.dispose()
    assert {r["request_id"] for r in rows} == ids
    assert all(r["arm"] in ("champion", "challenger") and r["model_version"] for r in rows)
    assert all(r["ttft_ms"] is not None for r in rows if r["stream"])
    for r in rows:
        if r["status"] == "fallback":
            assert (r["arm"], r["served_arm"], r["served_model_version"]) == (
                "challenger",
                "champion",
                "1",
            )
            assert r["error_type"] == "backend_error"


def test_graceful_shutdown_flushes_pending_rows(
    make_settings: Callable[..., Settings], run_router: Any
) -> None:
    # A flush interval far longer than the test: rows only reach the DB through the
    # shutdown drain.
    settings = make_settings(log_flush_interval_s=3600, log_batch_size=10_000)
    with run_router(settings) as (server, app):
        _send(server.url, 40)
        assert app.state.writer.is_pending(_send(server.url, 1)[0].headers["x-request-id"])
    assert _count(settings.db_url) == 41


def test_client_disconnect_mid_stream_is_logged(
    make_settings: Callable[..., Settings], run_router: Any
) -> None:
    routes = fake_routes(
        challenger_weight=0, champion={"mode": "canned", "text": "word " * 200, "tokens_per_s": 50}
    )
    settings = make_settings(routes=routes)
    with run_router(settings) as (server, _):
        body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        with (
            httpx.Client() as c,
            c.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r,
        ):
            request_id = r.headers["x-request-id"]
            for _ in zip(range(3), r.iter_lines(), strict=False):
                pass  # read a few events, then hang up
        for _ in range(100):
            got = httpx.get(f"{server.url}/v1/requests/{request_id}")
            if got.status_code == 200:
                break
            asyncio.run(asyncio.sleep(0.05))
        row = got.json()
    assert row["status"] == "client_disconnected"
    assert row["http_status"] == 499
    assert 0 < len(row["response_text"].split()) < 200


# -- the writer on its own (more in test_log_writer.py) ------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'log.db'}")
    migrate(engine)
    return engine


async def test_stream_abandoned_before_its_first_event_is_logged(
    engine: Engine, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    import gc
    from functools import partial

    from registry.bundled import resolve_gguf
    from router.assignment import Unit
    from router.completions import ChatService
    from router.routes_table import RouteTable, StaticArmSource
    from router.schemas import ChatCompletionRequest

    settings = make_settings()
    metrics = Metrics()
    writer = LogWriter(engine, metrics=metrics, journal_dir=tmp_path / "journal")
    routes = RouteTable(
        StaticArmSource(settings.routes), resolve_gguf=partial(resolve_gguf, models_dir=tmp_path)
    )
    await writer.start()
    await routes.start()
    service = ChatService(routes=routes, writer=writer, metrics=metrics, settings=settings)
    body = ChatCompletionRequest.model_validate(
        {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    events, headers = await service.stream(body, unit=Unit("u", "header"))
    del events  # the server never sends a byte: the client left right after asking
    gc.collect()
    await writer.close()
    await routes.close()
    with engine.connect() as conn:
        status = conn.execute(
            text("SELECT status FROM inference_log WHERE request_id = :r"),
            {"r": headers["x-request-id"]},
        ).scalar_one()
    assert status == "client_disconnected"


def test_cost_is_estimated_from_token_prices(
    make_settings: Callable[..., Settings], run_router: Any
) -> None:
    # USD per million tokens; a version-specific price wins over the model's.
    prices = {
        "fake-champion": {"prompt": 1_000_000, "completion": 2_000_000},
        "fake-challenger@2": {"prompt": 0, "completion": 10_000_000},
    }
    settings = make_settings(token_prices=prices, allow_arm_override=True)
    with run_router(settings) as (server, _):
        costs = {}
        for arm in ("champion", "challenger"):
            r = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={"model": "chat", "messages": [{"role": "user", "content": "one two"}]},
                headers={"x-canary-arm": arm},
            )
            usage = r.json()["usage"]
            row = httpx.get(f"{server.url}/v1/requests/{r.json()['id']}").json()
            costs[arm] = (row["cost_usd"], usage)
    (champion, cu), (challenger, ku) = costs["champion"], costs["challenger"]
    assert champion == pytest.approx(cu["prompt_tokens"] * 1 + cu["completion_tokens"] * 2)
    assert challenger == pytest.approx(ku["completion_tokens"] * 10)
