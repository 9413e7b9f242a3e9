"""A failing challenger falls back to the champion; shadow answers are logged, never seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from router.config import Settings
from tests.conftest import fake_routes

BODY = {"model": "chat", "messages": [{"role": "user", "content": "ping"}]}


def _logged(url: str, request_id: str) -> dict[str, Any]:
    return httpx.get(f"{url}/v1/requests/{request_id}").json()


def test_failing_challenger_falls_back(
    make_settings: Callable[..., Settings], run_router: Any
) -> None:
    routes = fake_routes(challenger_weight=100, challenger={"error_rate": 1.0})
    with run_router(make_settings(routes=routes)) as (server, _):
        for stream in (False, True):
            r = httpx.post(f"{server.url}/v1/chat/completions", json={**BODY, "stream": stream})
            assert r.status_code == 200
            assert r.headers["x-canary-arm"] == "champion"
            assert r.headers["x-canary-model-version"] == "1"
            row = _logged(server.url, r.headers["x-request-id"])
            assert row["status"] == "fallback"
            assert row["http_status"] == 200  # what the client got; the error is on the row
            assert (row["arm"], row["model_version"]) == ("challenger", "2")
            assert (row["served_arm"], row["served_model_version"]) == ("champion", "1")
            assert "failed" in row["error_message"]
            assert row["response_text"] == "ping"  # the champion echoes


def test_both_arms_failing_is_a_502_and_logged(
    make_settings: Callable[..., Settings], run_router: Any
) -> None:
    routes = fake_routes(
        challenger_weight=100, challenger={"error_rate": 1.0}, champion={"error_rate": 1.0}
    )
    with run_router(make_settings(routes=routes)) as (server, _):
        r = httpx.post(f"{server.url}/v1/chat/completions", json=BODY)
        assert r.status_code == 502
        assert r.json()["error"]["type"] == "backend_error"
        row = _logged(server.url, r.headers["x-request-id"])
        assert (row["status"], row["arm"], row["http_status"]) == ("fallback", "challenger", 502)
        assert row["served_arm"] is None
        assert "then the champion" in row["error_message"]


def test_timeout_is_a_504(make_settings: Callable[..., Settings], run_router: Any) -> None:
    routes = fake_routes(challenger_weight=0, champion={"latency_ms": 2_000})
    with run_router(make_settings(routes=routes, request_timeout_s=0.2)) as (server, _):
        started = time.perf_counter()
        r = httpx.post(f"{server.url}/v1/chat/completions", json=BODY)
        assert r.status_code == 504
        assert time.perf_counter() - started < 1.5
        assert r.json()["error"]["code"] == "timeout"
        row = _logged(server.url, r.headers["x-request-id"])
        assert (row["status"], row["http_status"]) == ("timeout", 504)


def test_shadow_answers_are_logged_but_not_returned(
    make_settings: Callable[..., Settings], run_router: Any
) -> None:
    routes = fake_routes(
        challenger_weight=0,
        shadow=True,
        challenger={"latency_ms": 300, "text": "shadow words"},
    )
    with run_router(make_settings(routes=routes)) as (server, app):
        started = time.perf_counter()
        r = httpx.post(f"{server.url}/v1/chat/completions", json=BODY)
        elapsed = time.perf_counter() - started
        assert r.status_code == 200 and r.headers["x-canary-arm"] == "champion"
        assert r.json()["choices"][0]["message"]["content"] == "ping"
        assert elapsed < 0.25  # the 300 ms shadow call does not slow the client
        parent = r.headers["x-request-id"]
    # After a graceful stop the shadow row is in the log too.
    from sqlalchemy import create_engine, text

    engine = create_engine(app.state.settings.db_url)
    with engine.connect() as conn:
        shadow = conn.execute(
            text("SELECT arm, model_version, response_text FROM inference_log WHERE shadow_of=:p"),
            {"p": parent},
        ).one()
    engine.dispose()
    assert tuple(shadow) == ("shadow", "2", "shadow words")
