"""Client mistakes on ``POST /v1/chat/completions``: a specific 4xx in OpenAI's error shape
whose message names the mistake, and still exactly one ``rejected`` row in the inference log.

Each case runs against its own router, so "exactly one row" is checked per case after a
graceful stop (which drains the batched log writer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from router.config import Settings
from tests.conftest import fake_routes

MAX_TOKENS_LIMIT = 100
MAX_BODY_BYTES = 2048
CONTEXT_LENGTH = 10
VALID: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def _chunks(size: int) -> Callable[[], Iterator[bytes]]:
    """A body httpx sends chunked (no Content-Length), so only the byte count can refuse it."""

    def gen() -> Iterator[bytes]:
        yield b'{"model": "chat", "messages": [{"role": "user", "content": "'
        for _ in range(size // 256):
            yield b"x" * 256
        yield b'"}]}'

    return gen


@dataclass(frozen=True)
class Case:
    id: str
    status: int
    code: str
    mentions: tuple[str, ...]  # substrings the error message must contain
    json: Any = None
    content: bytes | Callable[[], Iterator[bytes]] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def send(self, url: str) -> httpx.Response:
        kwargs: dict[str, Any] = {"headers": self.headers}
        if self.content is not None:
            kwargs["content"] = self.content() if callable(self.content) else self.content
        else:
            kwargs["json"] = self.json
        return httpx.post(f"{url}/v1/chat/completions", timeout=10, **kwargs)


def chat(**fields: Any) -> dict[str, Any]:
    return {**VALID, **fields}


def one_message(**message: Any) -> dict[str, Any]:
    return chat(messages=[message])


INVALID = "invalid_request"
CASES = [
    Case("unknown-route", 404, "model_not_found", ("'gpt-9'",), json=chat(model="gpt-9")),
    Case("empty-messages", 400, INVALID, ("messages", "at least 1"), json=chat(messages=[])),
    Case("missing-role", 400, INVALID, ("messages.0.role",), json=one_message(content="hi")),
    Case("bad-role", 400, INVALID, ("messages.0.role",), json=one_message(role="bot", content="")),
    Case(
        "int-content",
        400,
        INVALID,
        ("messages.0.content",),
        json=one_message(role="user", content=5),
    ),
    Case(
        "list-of-strings-content",
        400,
        INVALID,
        ("messages.0.content",),
        json=one_message(role="user", content=["hi"]),
    ),
    Case("max-tokens-zero", 400, INVALID, ("max_tokens",), json=chat(max_tokens=0)),
    Case("max-tokens-negative", 400, INVALID, ("max_tokens",), json=chat(max_tokens=-5)),
    Case(
        "max-tokens-over-limit",
        400,
        "max_tokens_too_large",
        ("max_tokens", "101", str(MAX_TOKENS_LIMIT)),
        json=chat(max_tokens=MAX_TOKENS_LIMIT + 1),
    ),
    Case(
        "max-completion-tokens-over-limit",
        400,
        "max_tokens_too_large",
        ("101", str(MAX_TOKENS_LIMIT)),
        json=chat(max_completion_tokens=MAX_TOKENS_LIMIT + 1),
    ),
    Case("temperature-negative", 400, INVALID, ("temperature",), json=chat(temperature=-1)),
    Case("temperature-3", 400, INVALID, ("temperature",), json=chat(temperature=3)),
    Case("top-p-zero", 400, INVALID, ("top_p",), json=chat(top_p=0)),
    Case("top-p-1.5", 400, INVALID, ("top_p",), json=chat(top_p=1.5)),
    Case("n-200", 400, INVALID, ("n:",), json=chat(n=200)),
    Case("penalty-5", 400, INVALID, ("presence_penalty",), json=chat(presence_penalty=5)),
    Case(
        "top-logprobs-21",
        400,
        INVALID,
        ("top_logprobs",),
        json=chat(logprobs=True, top_logprobs=21),
    ),
    Case("logit-bias-200", 400, INVALID, ("logit_bias",), json=chat(logit_bias={"50256": 200})),
    Case(
        "response-format-xml",
        400,
        INVALID,
        ("response_format",),
        json=chat(response_format={"type": "xml"}),
    ),
    Case(
        "tool-without-id",
        400,
        INVALID,
        ("messages.0",),
        json=chat(messages=[{"role": "tool", "content": "42"}]),
    ),
    Case(
        "image-only-parts-no-type",
        400,
        INVALID,
        ("messages.0.content",),
        json=chat(messages=[{"role": "user", "content": [{"text": "hi"}]}]),
    ),
    Case("missing-model", 400, INVALID, ("model",), json={"messages": VALID["messages"]}),
    Case(
        "malformed-json",
        400,
        "invalid_json",
        ("not valid JSON",),
        content=b'{"model": "chat", "messages": [',
        headers={"content-type": "application/json"},
    ),
    Case("json-array", 400, "invalid_body", ("JSON object",), json=[VALID]),
    Case("json-string", 400, "invalid_body", ("JSON object",), json="hello"),
    Case(
        "no-content-type",
        400,
        "invalid_body",
        ("JSON object", "Content-Type"),
        content=b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}',
    ),
    Case(
        "not-json-content-type",
        400,
        "invalid_body",
        ("JSON object", "Content-Type"),
        content=b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}',
        headers={"content-type": "text/plain"},
    ),
    Case(
        "body-too-large-content-length",
        413,
        "payload_too_large",
        (str(MAX_BODY_BYTES),),
        json=one_message(role="user", content="x" * (MAX_BODY_BYTES + 100)),
    ),
    Case(
        "body-too-large-chunked",
        413,
        "payload_too_large",
        (str(MAX_BODY_BYTES),),
        content=_chunks(MAX_BODY_BYTES * 2),
        headers={"content-type": "application/json"},
    ),
    Case(
        "context-length-exceeded",
        400,
        "context_length_exceeded",
        ("51 tokens", f"context is {CONTEXT_LENGTH}"),  # 50 words + 1 per message
        json=one_message(role="user", content="word " * 50),
    ),
]


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Low limits; the champion (taking all traffic) has a 10-token context."""
    return make_settings(
        routes=fake_routes(challenger_weight=0, champion={"context_length": CONTEXT_LENGTH}),
        max_tokens_limit=MAX_TOKENS_LIMIT,
        max_body_bytes=MAX_BODY_BYTES,
    )


def logged_rows(settings: Settings) -> list[dict[str, Any]]:
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            query = text("SELECT route, status, http_status, error_type FROM inference_log")
            return [dict(r) for r in conn.execute(query).mappings()]
    finally:
        engine.dispose()


def test_the_valid_base_request_is_answered(settings: Settings, run_router: Any) -> None:
    """Every case below differs from this one request in the one mistake it makes."""
    with run_router(settings) as (server, _):
        r = httpx.post(f"{server.url}/v1/chat/completions", json=VALID)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "hi"
    assert [row["status"] for row in logged_rows(settings)] == ["ok"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_client_mistake_is_a_named_4xx_and_one_rejected_row(
    case: Case, settings: Settings, run_router: Any
) -> None:
    with run_router(settings) as (server, _):
        r = case.send(server.url)

    assert r.status_code == case.status, r.text  # in particular never a 500
    body = r.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == case.code
    assert error["type"] in {"invalid_request_error", "not_found_error"}
    for word in case.mentions:
        assert word in error["message"], error["message"]

    # The server is stopped, so the log writer has drained: the refusal is on record.
    rows = logged_rows(settings)
    assert len(rows) == 1, rows
    assert rows[0]["status"] == "rejected"
    assert rows[0]["http_status"] == case.status
    assert rows[0]["error_type"] == case.code
