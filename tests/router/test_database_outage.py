"""A Postgres outage made by a TCP proxy between the router and the database (the shared
server itself is never stopped; tests/tcp_proxy.py): every request is served, and once
the database answers again every row is in the table while the same router keeps
running; meanwhile the endpoints that need the database answer 503
``database_unavailable`` in OpenAI's shape with ``Retry-After``, never a 500."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.config import Settings
from tests.canary_process import CanaryProcess, Load
from tests.router.test_crash_safety import CONFIG
from tests.tcp_proxy import TcpProxy

ADMIN = "s3cret"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy(5432) as p:
        yield p


def _chat(http: httpx.Client, arm: str) -> str:
    r = http.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": HI, "user": "u1"},
        headers={"x-canary-arm": arm},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _calls(a: str, b: str) -> dict[str, Callable[[httpx.Client], httpx.Response]]:
    """Each endpoint that reads or writes the database, called with valid input."""
    return {
        "feedback": lambda h: h.post(
            "/v1/feedback", json={"request_id": a, "value": "up", "user": "u1"}
        ),
        "request": lambda h: h.get(f"/v1/requests/{a}"),
        "experiments": lambda h: h.get("/v1/experiments"),
        "votes": lambda h: h.post(
            "/v1/votes", json={"request_id_a": a, "request_id_b": b, "winner": "a"}
        ),
        "dashboard": lambda h: h.get("/v1/routes/chat/dashboard"),
    }


def test_database_outage_is_503_then_recovers(
    proxy: TcpProxy,
    fresh_postgres_url: str,
    make_settings: Callable[..., Settings],
    run_router: Any,
) -> None:
    settings = make_settings(
        database_url=proxy.url_for(fresh_postgres_url),
        admin_token=ADMIN,
        allow_arm_override=True,
    )
    with run_router(settings) as (server, _), httpx.Client(base_url=server.url) as http:
        a, b = _chat(http, "champion"), _chat(http, "challenger")
        calls = _calls(a, b)
        assert http.get(f"/v1/requests/{b}").status_code == 200  # both rows are committed

        proxy.pause()
        for name, call in calls.items():
            r = call(http)
            assert r.status_code == 503, (name, r.text)
            error = r.json()["error"]
            assert error["code"] == "database_unavailable", (name, error)
            assert error["type"] == "server_error"
            assert set(error) == {"message", "type", "code", "param"}
            assert "database is unavailable" in error["message"]
            assert r.headers["retry-after"].isdigit(), name

        proxy.resume()
        for name, call in calls.items():
            r = call(http)
            assert r.status_code == 200, (name, r.text)
        assert http.get(f"/v1/requests/{a}").json()["feedback"][0]["value"] == "up"


def test_rows_equal_requests_after_an_outage_without_a_restart(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    config = {**CONFIG, "log_flush_interval_s": 0.25, "log_batch_size": 100}
    with TcpProxy(5432) as proxy:
        router = CanaryProcess(
            config, tmp_path / "data", CANARY_DATABASE_URL=proxy.url_for(fresh_postgres_url)
        ).start()
        load = Load(router.url, threads=3)
        with load.running():
            time.sleep(1.5)
            proxy.pause()
            time.sleep(2)
            during = httpx.get(f"{router.url}/health/ready", timeout=10)
            time.sleep(6)
            served_in_outage = load.sent
            proxy.resume()
            time.sleep(1.5)
        answered = load.answered
        assert load.statuses == {200: load.sent}, "a request failed during the outage"
        assert served_in_outage > 100

        deadline = time.monotonic() + 30
        while (
            rows := router.request_ids(fresh_postgres_url)
        ) < answered and time.monotonic() < deadline:
            time.sleep(0.3)
        after = httpx.get(f"{router.url}/health/ready", timeout=10).json()
        metrics = httpx.get(f"{router.url}/metrics").text
        router.stop()

    assert not answered - rows, f"{len(answered - rows)} of {len(answered)} rows missing"
    assert during.status_code == 200, during.text
    assert during.json()["status"] == "degraded"
    assert "database" in str(during.json()["checks"]).lower()
    assert after["status"] == "ready", after
    replayed = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("canary_log_rows_replayed_total")
    )
    assert replayed > 0  # rows came back from the journal, not from memory
    assert not list((tmp_path / "data" / "journal").glob("segment-*"))  # all settled
