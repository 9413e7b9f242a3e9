"""``POST /v1/feedback`` and ``GET /v1/requests/{id}`` against a real router."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, func, select

from router.config import Settings
from router.inference_log.crud import LOG
from tests.servers import ServerThread

PROMPT = "how many legs does a spider have"
Running = tuple[ServerThread, FastAPI]


def complete(http: httpx.Client, *, user: str = "alice", content: str = PROMPT) -> dict[str, Any]:
    r = http.post(
        "/v1/chat/completions",
        json={"model": "chat", "user": user, "messages": [{"role": "user", "content": content}]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == r.headers["x-request-id"]
    return {
        **body,
        "arm": r.headers["x-canary-arm"],
        "version": r.headers["x-canary-model-version"],
    }


def rate(http: httpx.Client, request_id: str, value: str, **extra: Any) -> httpx.Response:
    """A thumb, by ``alice`` (whom ``complete`` asks for) unless ``user`` says otherwise."""
    body = {"request_id": request_id, "value": value, "user": "alice", **extra}
    return http.post("/v1/feedback", json={k: v for k, v in body.items() if v is not None})


def logged(http: httpx.Client, request_id: str) -> dict[str, Any]:
    r = http.get(f"/v1/requests/{request_id}")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def http(router: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=router[0].url, timeout=30) as client:
        yield client


@pytest.fixture
def answered(http: httpx.Client) -> dict[str, Any]:
    """One completed request for ``alice``."""
    return complete(http)


def test_thumbs_up_on_a_logged_request(http: httpx.Client, answered: dict[str, Any]) -> None:
    r = rate(http, answered["id"], "up", comment="correct")
    assert r.status_code == 200, r.text
    fb = r.json()
    assert (fb["request_id"], fb["value"], fb["comment"]) == (answered["id"], "up", "correct")
    assert fb["unit_id"] == "alice"
    assert fb["key_id"] is None  # open mode, no key


def test_logged_request_has_arm_prompt_response_and_feedback(
    http: httpx.Client, answered: dict[str, Any]
) -> None:
    assert rate(http, answered["id"], "up").status_code == 200
    row = logged(http, answered["id"])
    assert row["request_id"] == answered["id"]
    assert row["route"] == "chat"
    assert row["arm"] == answered["arm"]
    assert row["arm"] in {"champion", "challenger"}
    assert row["model_version"] == answered["version"]
    assert row["status"] == "ok"
    assert row["http_status"] == 200
    assert row["unit_id"] == "alice"
    assert row["prompt_messages"] == [{"role": "user", "content": PROMPT}]
    assert row["response_text"] == answered["choices"][0]["message"]["content"]
    assert row["response_text"]
    assert [(f["unit_id"], f["value"]) for f in row["feedback"]] == [("alice", "up")]


def test_same_unit_rerating_replaces_its_rating(
    http: httpx.Client, answered: dict[str, Any]
) -> None:
    assert rate(http, answered["id"], "up").status_code == 200
    r = rate(http, answered["id"], "down")
    assert r.status_code == 200
    assert r.json()["value"] == "down"
    feedback = logged(http, answered["id"])["feedback"]
    assert [(f["unit_id"], f["value"]) for f in feedback] == [("alice", "down")]
    assert feedback[0]["updated_at"] >= feedback[0]["created_at"]


@pytest.mark.parametrize("user", ["bob", None], ids=["another-user", "no-user"])
def test_only_the_requests_user_may_rate_it(
    http: httpx.Client, answered: dict[str, Any], user: str | None
) -> None:
    assert rate(http, answered["id"], "up").status_code == 200
    r = rate(http, answered["id"], "down", user=user)
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "unit_mismatch")
    assert "alice" not in error["message"]  # the unit is not given away
    feedback = logged(http, answered["id"])["feedback"]
    assert [(f["unit_id"], f["value"]) for f in feedback] == [("alice", "up")]


def test_a_request_without_a_unit_is_rated_by_whoever_holds_its_id(http: httpx.Client) -> None:
    r = http.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": PROMPT}]},
    )
    assert r.status_code == 200, r.text
    request_id = r.headers["x-request-id"]
    row = logged(http, request_id)
    assert row["unit_source"] is None and row["unit_id"].startswith("anon-")
    fresh = rate(http, request_id, "up", user=None)
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["unit_id"] == row["unit_id"]  # the fresh unit it was given
    assert rate(http, request_id, "down", user="bob").status_code == 200
    feedback = logged(http, request_id)["feedback"]
    assert sorted((f["unit_id"], f["value"]) for f in feedback) == sorted(
        [(row["unit_id"], "up"), ("bob", "down")]
    )


@pytest.mark.parametrize("method", ["feedback", "lookup"])
def test_unknown_request_id_is_404_in_openai_shape(http: httpx.Client, method: str) -> None:
    if method == "feedback":
        r = rate(http, "chatcmpl-doesnotexist", "up")
    else:
        r = http.get("/v1/requests/chatcmpl-doesnotexist")
    assert r.status_code == 404
    error = r.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == "request_not_found"
    assert "chatcmpl-doesnotexist" in error["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"value": "meh"}, "value"),
        ({"request_id": None}, "request_id"),  # None: the field is left out
        ({"stars": 5}, "stars"),
    ],
    ids=["bad-value", "missing-request-id", "unknown-field"],
)
def test_malformed_feedback_is_400_naming_the_field(
    http: httpx.Client, answered: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    body = {"request_id": answered["id"], "value": "up", **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = http.post("/v1/feedback", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert field in error["message"]
    assert logged(http, answered["id"])["feedback"] == []


@pytest.fixture
def slow_writer(
    make_settings: Callable[..., Settings], run_router: Callable[..., Any]
) -> Iterator[tuple[httpx.Client, Settings]]:
    """A router whose log writer holds a lone row for 30 s before committing it."""
    settings = make_settings(log_flush_interval_s=30, log_batch_size=1000)
    with run_router(settings) as (server, _), httpx.Client(base_url=server.url) as client:
        yield client, settings


def test_feedback_right_after_the_completion_sees_the_buffered_row(
    slow_writer: tuple[httpx.Client, Settings],
) -> None:
    http, settings = slow_writer
    answered = complete(http)
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            committed = conn.execute(select(func.count()).select_from(LOG)).scalar_one()
    finally:
        engine.dispose()
    assert committed == 0, "the row was already committed: this test no longer races"

    r = rate(http, answered["id"], "up")
    assert r.status_code == 200, r.text
    assert logged(http, answered["id"])["feedback"][0]["value"] == "up"


def test_store_prompts_off_keeps_only_lengths_and_hashes(
    make_settings: Callable[..., Settings], run_router: Callable[..., Any]
) -> None:
    settings = make_settings(store_prompts=False)
    with run_router(settings) as (server, _), httpx.Client(base_url=server.url) as http:
        answered = complete(http)
        row = logged(http, answered["id"])
    assert row["prompt_messages"] is None
    assert row["response_text"] is None
    assert row["prompt_chars"] == len(PROMPT)
    assert re.fullmatch(r"[0-9a-f]{64}", row["prompt_sha256"])
    assert row["response_chars"] == len(answered["choices"][0]["message"]["content"]) > 0
    assert re.fullmatch(r"[0-9a-f]{64}", row["response_sha256"])
    assert row["status"] == "ok"
