"""The database goes away (a TCP proxy in front of the real Postgres cuts the link): the
endpoints that need it answer 503 ``database_unavailable`` in OpenAI's shape with
``Retry-After``, never a 500, and answer normally again once it is back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from router.config import Settings
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
        "feedback": lambda h: h.post("/v1/feedback", json={"request_id": a, "value": "up"}),
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
        database_url=proxy.rewrite(fresh_postgres_url),
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
