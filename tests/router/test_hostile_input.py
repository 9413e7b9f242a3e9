"""A hostile client against a real router, on SQLite and on Postgres: every answer is a
4xx in OpenAI's shape (never a 500), and every chat request still has its one row, with
what the client sent stored as escaped text (``\\ud800``, ``\\u0000``).

Bodies are raw bytes: ``json=`` would refuse to encode a lone surrogate.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from router.config import Settings
from tests.conftest import fake_routes

ADMIN = "s3cret"
HI = [{"role": "user", "content": "hi"}]
JSON = {"content-type": "application/json"}


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Settings:
    url = request.getfixturevalue("fresh_postgres_url") if request.param == "postgres" else None
    return make_settings(
        database_url=url,
        routes=fake_routes(challenger_weight=0),
        admin_token=ADMIN,
        allow_arm_override=True,
        max_json_depth=8,
        body_timeout_s=1.0,
    )


def rows(settings: Settings) -> list[dict[str, Any]]:
    """Every inference row (read after the router stopped, so the writer has drained)."""
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            query = text(
                "SELECT route, status, http_status, error_type, error_message, unit_id "
                "FROM inference_log"
            )
            return [dict(r) for r in conn.execute(query).mappings()]
    finally:
        engine.dispose()


def assert_error(r: httpx.Response, status: int, code: str, param: str | None = None) -> str:
    """The OpenAI error shape with this status, code and param; returns the message."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == code, error
    assert error["param"] == param, error
    assert error["type"] in {"invalid_request_error", "authentication_error", "permission_error"}
    return str(error["message"])


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


@dataclass(frozen=True)
class Poison:
    id: str
    body: bytes
    status: int
    code: str
    param: str | None
    route: str  # the row's route, as stored
    mentions: str = ""


def raw(text_: str) -> bytes:
    """A body written by hand: ``\\ud800`` stays a JSON escape, not a Python character."""
    return text_.encode()


CHAT_POISON = [
    Poison(
        "lone-surrogate-model",
        raw('{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}'),
        400,
        "invalid_text",
        "model",
        "\\ud800",
        "surrogate",
    ),
    Poison(
        "lone-surrogate-content",
        raw('{"model": "chat", "messages": [{"role": "user", "content": "a\\udfffb"}]}'),
        400,
        "invalid_text",
        "messages.0.content",
        "chat",
        "surrogate",
    ),
    Poison(
        "nul-user",
        raw(
            '{"model": "chat", "user": "p\\u0000q", "messages": [{"role": "user", "content": "x"}]}'
        ),
        400,
        "invalid_text",
        "user",
        "chat",
        "NUL",
    ),
    Poison(
        "nul-model",
        raw('{"model": "a\\u0000b", "messages": [{"role": "user", "content": "x"}]}'),
        400,
        "invalid_text",
        "model",
        "a\\u0000b",
        "NUL",
    ),
    Poison(
        "nul-in-a-key",
        raw('{"model": "chat", "messages": [{"role": "user", "content": "x", "n\\u0000": 1}]}'),
        400,
        "invalid_text",
        "messages.0",
        "chat",
    ),
    Poison(
        "invalid-utf8",
        b'{"model": "chat", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        400,
        "invalid_json",
        None,
        "chat",
        "UTF-8",
    ),
    Poison(
        "nested-past-max-json-depth",
        json.dumps({"model": "chat", "messages": HI, "metadata": nested(10)}).encode(),
        400,
        "invalid_json",
        None,
        "chat",
        "nested more than 8",
    ),
    Poison(
        "nested-past-the-parser",
        b'{"model": "chat", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        400,
        "invalid_json",
        None,
        "chat",  # read back from the fragment before the parser gave up
        "nested",
    ),
    Poison(
        "nan",
        raw('{"model": "chat", "messages": [{"role": "user", "content": "x"}], "top_p": NaN}'),
        400,
        "invalid_json",
        None,
        "chat",
        "NaN",
    ),
    Poison(
        "seed-past-int64",
        json.dumps({"model": "chat", "messages": HI, "seed": 2**64}).encode(),
        400,
        "invalid_request",
        "seed",
        "chat",
        "seed",
    ),
]


@pytest.mark.parametrize("poison", CHAT_POISON, ids=[p.id for p in CHAT_POISON])
def test_poisoned_chat_body_is_a_named_4xx_with_its_row(
    poison: Poison, settings: Settings, run_router: Any
) -> None:
    with run_router(settings) as (server, _):
        r = httpx.post(
            f"{server.url}/v1/chat/completions", content=poison.body, headers=JSON, timeout=10
        )
        message = assert_error(r, poison.status, poison.code, poison.param)
        assert poison.mentions in message
        # The router still answers normally afterwards.
        ok = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "chat", "messages": HI})
        assert ok.status_code == 200, ok.text

    logged = rows(settings)
    assert sorted(r["status"] for r in logged) == ["ok", "rejected"], logged
    refused = next(r for r in logged if r["status"] == "rejected")
    assert refused["route"] == poison.route
    assert refused["http_status"] == poison.status
    assert refused["error_type"] == poison.code


def test_every_router_answer_on_the_chat_path_has_its_row(
    settings: Settings, run_router: Any
) -> None:
    """405, 415-like bodies, bad headers: outcomes outside the chat service get rows too."""
    with run_router(settings) as (server, _):
        url = f"{server.url}/v1/chat/completions"
        assert_error(httpx.get(url), 405, "method_not_allowed")
        assert_error(
            httpx.post(
                url, json={"model": "chat", "messages": HI}, headers={"x-canary-unit": "u" * 201}
            ),
            400,
            "invalid_request",
            "header.x-canary-unit",
        )
        bad_arm = httpx.post(
            url, json={"model": "chat", "messages": HI}, headers={"x-canary-arm": "béta".encode()}
        )
        assert_error(bad_arm, 400, "invalid_arm")
        # A non-ASCII unit id is a unit like any other.
        unit = httpx.post(
            url, json={"model": "chat", "messages": HI}, headers={"x-canary-unit": "béta".encode()}
        )
        assert unit.status_code == 200, unit.text

    logged = rows(settings)
    assert sorted(r["http_status"] for r in logged) == [200, 400, 400, 405], logged
    assert {r["status"] for r in logged if r["http_status"] != 200} == {"rejected"}


def _raw_request(port: int, head: bytes, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head + body)
    return sock


def _read_response(sock: socket.socket) -> tuple[str, dict[str, Any]]:
    """The status line and JSON body of one HTTP/1.1 response (headers and body may come
    in separate packets)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[
            1
        ]
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b"\r\n")[0].decode(), json.loads(body)


def _head(length: int) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {length}\r\n\r\n".encode()
    )


def test_a_body_that_stalls_is_a_408_with_its_row(settings: Settings, run_router: Any) -> None:
    part = b'{"model": "chat", "messages": ['
    with run_router(settings) as (server, _):
        started = time.monotonic()
        sock = _raw_request(server.port, _head(len(part) + 100), part)
        with sock:
            status, body = _read_response(sock)
        waited = time.monotonic() - started
    assert status.startswith("HTTP/1.1 408"), status
    assert body["error"]["code"] == "request_timeout"
    assert 0.9 <= waited < 5, waited  # body_timeout_s is 1
    logged = rows(settings)
    assert [(r["route"], r["status"], r["http_status"]) for r in logged] == [
        ("chat", "rejected", 408)
    ]


def test_a_body_abandoned_half_sent_has_a_client_disconnected_row(
    settings: Settings, run_router: Any
) -> None:
    part = b'{"model": "chat", "messages": [{"role": "user", "content": "'
    with run_router(settings) as (server, _):
        sock = _raw_request(server.port, _head(len(part) + 1000), part)
        time.sleep(0.2)  # the router is waiting for the rest
        sock.close()
        time.sleep(0.3)
    logged = rows(settings)
    assert [(r["route"], r["status"], r["http_status"], r["error_type"]) for r in logged] == [
        ("chat", "client_disconnected", 499, "client_disconnected")
    ]


# -- the other JSON bodies --------------------------------------------------------------

OTHER = [
    ("POST", "/v1/feedback", '{"request_id": "r\\u0000", "value": "up"}', "request_id"),
    (
        "POST",
        "/v1/votes",
        '{"request_id_a": "a", "request_id_b": "\\ud83d", "winner": "a"}',
        "request_id_b",
    ),
    (
        "POST",
        "/v1/arena/battles",
        '{"route": "chat", "messages": [{"role": "user", "content": "\\udc00"}]}',
        "messages.0.content",
    ),
    ("POST", "/v1/arena/battles/b1/turns", '{"content": "x\\u0000"}', "content"),
    ("POST", "/v1/arena/battles/b1/vote", '{"winner": "a", "user": "\\ud800"}', "user"),
    ("POST", "/v1/experiments", '{"route": "chat", "policy": {"\\ud800": 1}}', "policy"),
    ("PUT", "/v1/routes/chat/weights", '{"challenger": 5, "x": "\\u0000"}', "x"),
]


@pytest.mark.parametrize(("method", "path", "body", "param"), OTHER, ids=[o[1] for o in OTHER])
def test_every_json_body_refuses_unstorable_text(
    method: str, path: str, body: str, param: str, settings: Settings, run_router: Any
) -> None:
    headers = {**JSON, "authorization": f"Bearer {ADMIN}"}
    with run_router(settings) as (server, _):
        r = httpx.request(method, server.url + path, content=body.encode(), headers=headers)
        assert_error(r, 400, "invalid_text", param)
        deep = json.dumps(nested(20)).encode()
        assert_error(
            httpx.request(method, server.url + path, content=deep, headers=headers),
            400,
            "invalid_json",
        )


def test_admin_headers_and_policies_are_4xx(settings: Settings, run_router: Any) -> None:
    with run_router(settings) as (server, _):
        weights = f"{server.url}/v1/routes/chat/weights"
        for token in ("Bearer café".encode(), b"Bearer \xff\xfe", f"Bearer {ADMIN}é".encode()):
            r = httpx.put(weights, json={"challenger": 5}, headers={"authorization": token})
            assert_error(r, 403, "invalid_admin_token")
        admin = {"authorization": f"Bearer {ADMIN}"}
        start = f"{server.url}/v1/experiments"
        r = httpx.post(start, json={"route": "chat", "policy": {"alpah": 0.1}}, headers=admin)
        message = assert_error(r, 400, "invalid_policy", "policy.alpah")
        assert "'alpah'" in message and "min_units" in message and "alpha" in message
        r = httpx.post(start, json={"route": "chat", "policy": {"alpha": 2}}, headers=admin)
        assert "alpha must lie in (0, 1)" in assert_error(r, 400, "invalid_policy", "policy")
        r = httpx.post(start, json={"route": "chat", "policy": {"min_units": "x"}}, headers=admin)
        assert_error(r, 400, "invalid_policy", "policy.min_units")
        r = httpx.post(start, json={"route": "chat", "policy": {"alpha": 0.1}}, headers=admin)
        assert r.status_code == 201, r.text
