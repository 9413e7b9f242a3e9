"""Two router processes behind one Postgres and one Redis, as replicas run: a key made on
one works on the other, its rate limit is shared (429 with Retry-After on either), and a
revocation on one applies on the other within ``keys_refresh_s``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from tests.canary_process import CanaryProcess

TOKEN = "replica-admin-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
CHAT: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def replicas(tmp_path: Path, fresh_postgres_url: str) -> Iterator[list[CanaryProcess]]:
    config = {
        "routes": {"chat": {"champion": {"backend": "fake", "name": "m", "version": "1"}}},
        "ui_enabled": False,
        "auth": "keys",
        "admin_token": TOKEN,
        "database_url": fresh_postgres_url,
        "redis_url": "redis://127.0.0.1:6379/0",
        "keys_refresh_s": 0.5,
    }
    first = CanaryProcess(config, tmp_path / "one").start(timeout=120)
    second = CanaryProcess(config, tmp_path / "two")
    try:
        yield [first, second.start(timeout=120)]
    finally:
        first.kill()
        second.kill()


def test_keys_and_rate_limits_are_shared_by_replicas(
    replicas: list[CanaryProcess], fresh_postgres_url: str
) -> None:
    one, two = replicas
    made = httpx.post(f"{one.url}/v1/keys", json={"name": "shared", "rpm": 6}, headers=ADMIN)
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["id"]
    clients = [openai.OpenAI(base_url=f"{r.url}/v1", api_key=key, max_retries=0) for r in replicas]

    for i in range(6):  # three on each replica: the key's whole minute
        assert clients[i % 2].chat.completions.create(**CHAT).choices
    for client in clients:
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(**CHAT)
        retry_after = int(limited.value.response.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert limited.value.code == "rate_limit_exceeded"
        assert "6 requests per minute" in limited.value.message

    # Every refused request has its row, with the key's id and the 429.
    engine = create_engine(fresh_postgres_url)
    try:
        for _ in range(100):
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT status, http_status FROM inference_log WHERE key_id = :k"),
                    {"k": key_id},
                ).all()
            if len(rows) == 8:
                break
            time.sleep(0.1)
    finally:
        engine.dispose()
    assert sorted(tuple(r) for r in rows) == [("ok", 200)] * 6 + [("rejected", 429)] * 2

    metrics = httpx.get(f"{two.url}/metrics").text
    assert f'canary_rate_limited_total{{key="{key_id}",limit="rpm"}} 1.0' in metrics


def test_a_revocation_on_one_replica_applies_on_the_other(replicas: list[CanaryProcess]) -> None:
    one, two = replicas
    made = httpx.post(f"{one.url}/v1/keys", json={"name": "leaked"}, headers=ADMIN).json()
    auth = {"authorization": f"Bearer {made['key']}"}
    assert httpx.get(f"{two.url}/v1/models", headers=auth).status_code == 200
    assert httpx.delete(f"{one.url}/v1/keys/{made['id']}", headers=ADMIN).status_code == 200
    assert httpx.get(f"{one.url}/v1/models", headers=auth).status_code == 403  # at once here
    deadline = time.monotonic() + 5
    while httpx.get(f"{two.url}/v1/models", headers=auth).status_code != 403:
        assert time.monotonic() < deadline, "the other replica still accepts the revoked key"
        time.sleep(0.1)
