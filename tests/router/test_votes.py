"""``POST /v1/votes`` against a real router: stored with arms resolved, every 4xx, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, func, select

from router.config import Settings
from router.inference_log.crud import LOG, VOTES
from tests.conftest import fake_routes
from tests.servers import ServerThread

Running = tuple[ServerThread, FastAPI]


def complete(
    http: httpx.Client, arm: str, *, route: str = "chat", user: str = "alice"
) -> dict[str, Any]:
    """One answer from ``arm`` (the router honours ``X-Canary-Arm`` in these tests)."""
    r = http.post(
        "/v1/chat/completions",
        headers={"X-Canary-Arm": arm},
        json={"model": route, "user": user, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-canary-arm"] == arm
    return {"id": r.headers["x-request-id"], "arm": arm}


def vote(http: httpx.Client, a: str, b: str, winner: str, **extra: Any) -> httpx.Response:
    body = {"request_id_a": a, "request_id_b": b, "winner": winner, **extra}
    return http.post("/v1/votes", json=body)


def stored_votes(settings: Settings) -> list[dict[str, Any]]:
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(VOTES).order_by(VOTES.c.id)).mappings()]
    finally:
        engine.dispose()


def votes_counted(app: FastAPI, route: str, outcome: str) -> float:
    value = app.state.metrics.registry.get_sample_value(
        "canary_votes_total", {"route": route, "outcome": outcome}
    )
    return value or 0.0


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Route ``chat`` and a second route ``other``; arms can be picked per request."""
    return make_settings(
        routes={**fake_routes(), "other": fake_routes()["chat"]}, allow_arm_override=True
    )


@pytest.fixture
def pair(http: httpx.Client) -> tuple[str, str]:
    """(champion answer, challenger answer) on route ``chat``, both for ``alice``."""
    return complete(http, "champion")["id"], complete(http, "challenger")["id"]


@pytest.mark.parametrize(
    ("order", "winner", "winner_arm"),
    [
        ("champion-first", "a", "champion"),
        ("champion-first", "b", "challenger"),
        ("challenger-first", "a", "challenger"),
        ("challenger-first", "b", "champion"),
        ("champion-first", "tie", "tie"),
        ("challenger-first", "both_bad", "both_bad"),
    ],
)
def test_vote_is_stored_with_the_winning_arm_resolved(
    http: httpx.Client,
    running: Running,
    settings: Settings,
    pair: tuple[str, str],
    order: str,
    winner: str,
    winner_arm: str,
) -> None:
    a, b = pair if order == "champion-first" else pair[::-1]
    r = vote(http, a, b, winner)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["request_id_a"], body["request_id_b"], body["winner"]) == (a, b, winner)
    assert body["winner_arm"] == winner_arm
    expected_arms = (
        ("champion", "challenger")
        if order == "champion-first"
        else (
            "challenger",
            "champion",
        )
    )
    assert (body["arm_a"], body["arm_b"]) == expected_arms
    assert body["route"] == "chat"
    assert body["unit_id"] == "alice"  # both answers were alice's
    assert body["battle_id"] is None
    [row] = stored_votes(settings)
    # Stored with the ids in ascending order, the winner flipped to match.
    flipped = {"a": "b", "b": "a"}.get(winner, winner) if a > b else winner
    assert (row["id"], row["request_id_a"], row["request_id_b"], row["winner"]) == (
        body["id"],
        min(a, b),
        max(a, b),
        flipped,
    )
    assert votes_counted(running[1], "chat", winner_arm) == 1


def test_voter_is_the_requests_user_and_a_revote_replaces_the_vote(
    http: httpx.Client, running: Running, settings: Settings, pair: tuple[str, str]
) -> None:
    assert vote(http, *pair, "b", user="alice").json()["unit_id"] == "alice"
    again = vote(http, *pair, "a")
    assert again.status_code == 200, again.text
    assert again.json()["winner_arm"] == "champion"
    [row] = stored_votes(settings)
    assert (row["unit_id"], row["id"]) == ("alice", again.json()["id"])
    assert votes_counted(running[1], "chat", "challenger") == 1
    assert votes_counted(running[1], "chat", "champion") == 1


def test_another_voter_is_403(
    http: httpx.Client, settings: Settings, pair: tuple[str, str]
) -> None:
    r = vote(http, *pair, "b", user="reviewer-1")
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "voter_mismatch")
    assert "alice" not in error["message"]
    assert stored_votes(settings) == []


def test_answers_of_two_users_cannot_be_voted_on(http: httpx.Client, settings: Settings) -> None:
    a = complete(http, "champion", user="alice")["id"]
    b = complete(http, "challenger", user="bob")["id"]
    for user in (None, "alice", "bob"):
        r = vote(http, a, b, "tie", **({"user": user} if user else {}))
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "not_your_answers"
    assert stored_votes(settings) == []


@pytest.mark.parametrize("missing", ["request_id_a", "request_id_b"])
def test_unknown_request_is_404_naming_it(
    http: httpx.Client, settings: Settings, pair: tuple[str, str], missing: str
) -> None:
    ids = {"request_id_a": pair[0], "request_id_b": pair[1], missing: "chatcmpl-nope"}
    r = http.post("/v1/votes", json={**ids, "winner": "a"})
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == "request_not_found"
    assert "chatcmpl-nope" in error["message"]
    assert missing in error["message"]
    assert stored_votes(settings) == []


def test_same_request_twice_is_400(
    http: httpx.Client, settings: Settings, pair: tuple[str, str]
) -> None:
    r = vote(http, pair[0], pair[0], "a")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "same_request"
    assert stored_votes(settings) == []


def test_answers_of_different_routes_are_400(http: httpx.Client, settings: Settings) -> None:
    a = complete(http, "champion", route="chat")["id"]
    b = complete(http, "challenger", route="other")["id"]
    r = vote(http, a, b, "a")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "route_mismatch"
    assert "'chat'" in error["message"]
    assert "'other'" in error["message"]
    assert stored_votes(settings) == []


@pytest.mark.parametrize("arm", ["champion", "challenger"])
def test_two_answers_of_one_arm_are_400(http: httpx.Client, settings: Settings, arm: str) -> None:
    a, b = complete(http, arm)["id"], complete(http, arm)["id"]
    r = vote(http, a, b, "a")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "arms_not_compared"
    assert stored_votes(settings) == []


def test_a_shadow_answer_cannot_be_voted_on(
    make_settings: Callable[..., Settings], run_router: Callable[..., Any]
) -> None:
    settings = make_settings(routes=fake_routes(shadow=True), allow_arm_override=True)
    with run_router(settings) as (server, _), httpx.Client(base_url=server.url) as http:
        champion = complete(http, "champion")["id"]
        shadow = _shadow_of(settings, champion)
        r = vote(http, champion, shadow, "a")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "arms_not_compared"
    assert "'shadow'" in error["message"]
    assert stored_votes(settings) == []


def _shadow_of(settings: Settings, request_id: str, timeout_s: float = 10) -> str:
    """The id of the shadow copy of ``request_id``, once the writer has committed it."""
    engine = create_engine(settings.db_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                found = conn.execute(
                    select(LOG.c.request_id).where(LOG.c.shadow_of == request_id)
                ).scalar_one_or_none()
            if found is not None:
                return str(found)
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"no shadow row for {request_id} within {timeout_s} s")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"winner": "champion"}, "winner"),
        ({"winner": None}, "winner"),  # None: the field is left out
        ({"request_id_b": None}, "request_id_b"),
        ({"stars": 5}, "stars"),
    ],
    ids=["bad-winner", "missing-winner", "missing-request-id", "unknown-field"],
)
def test_malformed_vote_is_400_naming_the_field(
    http: httpx.Client,
    settings: Settings,
    pair: tuple[str, str],
    change: dict[str, Any],
    field: str,
) -> None:
    body = {"request_id_a": pair[0], "request_id_b": pair[1], "winner": "a", **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = http.post("/v1/votes", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in error["message"]
    assert stored_votes(settings) == []


def test_vote_right_after_the_completions_sees_the_buffered_rows(
    make_settings: Callable[..., Settings], run_router: Callable[..., Any]
) -> None:
    settings = make_settings(allow_arm_override=True, log_flush_interval_s=30, log_batch_size=1000)
    with run_router(settings) as (server, app), httpx.Client(base_url=server.url) as http:
        a, b = complete(http, "champion")["id"], complete(http, "challenger")["id"]
        engine = create_engine(settings.db_url)
        try:
            with engine.connect() as conn:
                committed = conn.execute(select(func.count()).select_from(LOG)).scalar_one()
        finally:
            engine.dispose()
        assert committed == 0, "the rows were already committed: this test no longer races"
        r = vote(http, a, b, "b")
        assert r.status_code == 200, r.text
        assert r.json()["winner_arm"] == "challenger"
        assert votes_counted(app, "chat", "challenger") == 1
    [stored] = stored_votes(settings)
    assert {stored["request_id_a"], stored["request_id_b"]} == {a, b}


def test_votes_metric_is_exported(http: httpx.Client, pair: tuple[str, str]) -> None:
    assert vote(http, *pair, "both_bad").status_code == 200
    text = http.get("/metrics").text
    assert 'canary_votes_total{outcome="both_bad",route="chat"} 1.0' in text
