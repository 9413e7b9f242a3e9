"""Client API keys end to end: made by an admin, used by the official ``openai`` SDK,
revoked, scoped to routes; units from ``safety_identifier``; the admin token a newcomer
gets; the audit log."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from router.cli import main
from router.config import RouteConfig, Settings
from tests.conftest import fake_routes
from tests.servers import ServerThread

TOKEN = "test-admin-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
Run = Callable[..., AbstractContextManager[tuple[ServerThread, FastAPI]]]
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}


def _routes() -> dict[str, RouteConfig]:
    routes = fake_routes()
    routes["other"] = routes["chat"].model_copy()
    return routes


@pytest.fixture
def keys_router(make_settings: Callable[..., Settings], run_router: Run) -> Iterator[ServerThread]:
    settings = make_settings(auth="keys", admin_token=TOKEN, routes=_routes(), keys_refresh_s=0.2)
    with run_router(settings) as (server, _):
        yield server


def make_key(url: str, name: str = "app", **fields: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/keys", json={"name": name, **fields}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return dict(response.json())


def sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def row(url: str, request_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/requests/{request_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_keys_mode_end_to_end_with_the_openai_sdk(keys_router: ServerThread) -> None:
    url = keys_router.url
    made = make_key(url, "billing-app")
    key = made["key"]
    assert key.startswith("sk-canary-") and made["key_prefix"] == key[: len(made["key_prefix"])]

    listed = httpx.get(f"{url}/v1/keys", headers=ADMIN).json()
    assert [k["id"] for k in listed] == [made["id"]]
    assert "key" not in listed[0] and "key_hash" not in listed[0]
    assert key not in httpx.get(f"{url}/v1/keys", headers=ADMIN).text

    raw = sdk(url, key).chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content
    logged = row(url, raw.headers["x-request-id"])
    assert logged["key_id"] == made["id"]
    # No user: the key's id is the unit, so one client's requests stay on one arm.
    assert (logged["unit_id"], logged["unit_source"]) == (made["id"], "key")
    assert logged["assignment_reason"] == "hash"
    assert [m.id for m in sdk(url, key).models.list()] == ["chat", "other"]

    # Last use is written in batches, every keys_refresh_s.
    deadline = time.monotonic() + 5
    while (
        last_used := httpx.get(f"{url}/v1/keys", headers=ADMIN).json()[0]["last_used_at"]
    ) is None:
        assert time.monotonic() < deadline, "the key's last use was never written"
        time.sleep(0.1)
    assert last_used >= made["created_at"]


def test_missing_wrong_and_revoked_keys(keys_router: ServerThread) -> None:
    url = keys_router.url
    missing = httpx.get(f"{url}/v1/models")  # the SDK always sends a key: ask without
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "canary keys create" in missing.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError) as wrong:
        sdk(url, "sk-canary-not-a-key").chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert wrong.value.code == "invalid_api_key"

    made = make_key(url)
    client = sdk(url, made["key"])
    client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    revoked = httpx.delete(f"{url}/v1/keys/{made['id']}", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert refused.value.code == "key_revoked"
    assert httpx.delete(f"{url}/v1/keys/key_nope", headers=ADMIN).status_code == 404
    metrics = httpx.get(f"{url}/metrics").text
    assert 'canary_auth_refused_total{status="401"} 2.0' in metrics
    assert 'canary_auth_refused_total{status="403"} 1.0' in metrics
    # A key is a client credential, never an admin one.
    assert (
        httpx.get(f"{url}/v1/keys", headers={"authorization": f"Bearer {made['key']}"}).status_code
        == 403
    )


def test_refused_chat_requests_get_their_rows(
    keys_router: ServerThread, make_settings: Callable[..., Settings]
) -> None:
    url = keys_router.url
    no_key = httpx.post(f"{url}/v1/chat/completions", json=CHAT)
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "missing_api_key"
    engine = sa.create_engine(make_settings().db_url)  # the router's own database
    try:
        for _ in range(100):
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT status, http_status, error_type FROM inference_log")
                ).all()
            if rows:
                break
            time.sleep(0.05)
    finally:
        engine.dispose()
    assert ("rejected", 401, "missing_api_key") in [tuple(r) for r in rows]


def test_keys_are_scoped_to_their_routes(keys_router: ServerThread) -> None:
    url = keys_router.url
    scoped = sdk(url, make_key(url, "summaries", routes=["other"])["key"])
    assert [m.id for m in scoped.models.list()] == ["other"]
    assert scoped.chat.completions.create(  # type: ignore[call-overload]
        **{**CHAT, "model": "other"}
    ).choices
    with pytest.raises(openai.PermissionDeniedError) as refused:
        scoped.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert refused.value.code == "route_not_allowed"
    headers = {"authorization": f"Bearer {scoped.api_key}"}
    assert httpx.get(f"{url}/v1/routes/chat/dashboard", headers=headers).status_code == 403
    assert [r["name"] for r in httpx.get(f"{url}/v1/routes", headers=headers).json()] == ["other"]


def test_open_mode_takes_any_key_and_names_known_ones(
    make_settings: Callable[..., Settings], run_router: Run
) -> None:
    with run_router(make_settings(admin_token=TOKEN)) as (server, _):
        url = server.url
        anonymous = sdk(url, "unused").chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
        assert row(url, anonymous.headers["x-request-id"])["key_id"] is None
        made = make_key(url)
        named = sdk(url, made["key"]).chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
        assert row(url, named.headers["x-request-id"])["key_id"] == made["id"]


def test_unit_sources_and_safety_identifier_stickiness(
    router: tuple[ServerThread, FastAPI],
) -> None:
    server, _ = router
    client = sdk(server.url, "unused")
    arms = set()
    for _ in range(40):
        raw = client.chat.completions.with_raw_response.create(
            **CHAT,
            safety_identifier="user-hash-42",  # type: ignore[call-overload]
        )
        arms.add(raw.headers["x-canary-arm"])
    assert len(arms) == 1  # sticky: one unit, one arm
    logged = row(server.url, raw.headers["x-request-id"])
    assert (logged["unit_id"], logged["unit_source"]) == ("user-hash-42", "safety_identifier")
    assert logged["assignment_reason"] == "hash"

    both = client.chat.completions.with_raw_response.create(
        **CHAT,
        user="alice",
        safety_identifier="ignored",  # type: ignore[call-overload]
    )
    assert row(server.url, both.headers["x-request-id"])["unit_source"] == "user"
    header = httpx.post(
        f"{server.url}/v1/chat/completions", json=CHAT, headers={"x-canary-unit": "u-7"}
    )
    logged = row(server.url, header.headers["x-request-id"])
    assert (logged["unit_id"], logged["unit_source"]) == ("u-7", "header")
    none = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT)
    logged = row(server.url, none.headers["x-request-id"])
    assert logged["unit_source"] is None and logged["assignment_reason"] == "unassigned"


def test_first_start_generates_the_admin_token(
    make_settings: Callable[..., Settings], run_router: Run, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings()  # no admin_token: a newcomer's start
    with run_router(settings) as (server, _):
        path = settings.data_dir / "admin_token"
        token = path.read_text().strip()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        printed = capfd.readouterr().err
        assert token in printed and str(path) in printed
        weights = httpx.put(
            f"{server.url}/v1/routes/chat/weights",
            json={"challenger": 20},
            headers={"authorization": f"Bearer {token}"},
        )
        assert weights.status_code == 200, weights.text
    with run_router(settings) as (server, _):  # a second start keeps it and stays quiet
        assert path.read_text().strip() == token
        assert token not in capfd.readouterr().err


def test_admin_actions_and_refusals_are_audited(
    make_settings: Callable[..., Settings], run_router: Run
) -> None:
    with run_router(make_settings(admin_token=TOKEN)) as (server, _):
        url = server.url
        wrong = httpx.put(
            f"{url}/v1/routes/chat/weights",
            json={"challenger": 30},
            headers={"authorization": "Bearer nope"},
        )
        assert wrong.status_code == 403
        assert (
            httpx.put(f"{url}/v1/routes/chat/weights", json={"challenger": 30}).status_code == 401
        )
        ok = httpx.put(f"{url}/v1/routes/chat/weights", json={"challenger": 30}, headers=ADMIN)
        assert ok.status_code == 200
        made = make_key(url, "reporting")
        assert httpx.get(f"{url}/v1/audit").status_code == 401
        huge = httpx.get(f"{url}/v1/audit", params={"before": -(10**25)}, headers=ADMIN)
        assert (huge.status_code, huge.json()["error"]["param"]) == (400, "query.before")
        entries = httpx.get(f"{url}/v1/audit", headers=ADMIN).json()
    summary = [
        (e["actor"], e["action"], e["target"], e["outcome"], e["http_status"]) for e in entries
    ]
    assert summary == [
        ("admin", "audit.list", None, "failed", 400),  # the huge 'before'
        ("anonymous", "audit.list", None, "refused", 401),
        ("admin", "keys.create", f"{made['id']} (reporting)", "ok", 201),
        ("admin", "route.weights", "chat", "ok", 200),
        ("anonymous", "route.weights", "chat", "refused", 401),
        ("anonymous", "route.weights", "chat", "refused", 403),
    ]
    assert all(e["client"] == "127.0.0.1" for e in entries)
    assert "wrong" in entries[5]["detail"]


def test_serve_refuses_open_auth_on_a_public_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CANARY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CANARY_AUTH", "open")
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--host", "0.0.0.0"])
    assert exited.value.code == 2
    assert "CANARY_AUTH=keys" in capsys.readouterr().err
    monkeypatch.delenv("CANARY_AUTH")
    assert Settings(host="0.0.0.0").auth_mode == "keys"
    assert Settings(host="127.0.0.1").auth_mode == "open"
    assert Settings(host="::1").auth_mode == "open"


def test_cli_makes_lists_and_revokes_keys(
    keys_router: ServerThread, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CANARY_ADMIN_TOKEN", TOKEN)
    url = keys_router.url

    def canary(*argv: str) -> int:
        with pytest.raises(SystemExit) as exited:
            main([*argv, "--router", url])
        return int(exited.value.code or 0)

    assert canary("keys", "create", "etl", "--rpm", "5", "--routes", "chat,other") == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("sk-canary-") and "only time" in err
    assert sdk(url, key).chat.completions.create(**CHAT).choices  # type: ignore[call-overload]
    assert canary("keys", "list") == 0
    listed = capsys.readouterr().out
    assert "etl" in listed and key not in listed and "chat,other" in listed
    key_id = httpx.get(f"{url}/v1/keys", headers=ADMIN).json()[0]["id"]
    assert canary("keys", "revoke", key_id) == 0
    assert "revoked" in capsys.readouterr().out
    monkeypatch.setenv("CANARY_ADMIN_TOKEN", "wrong")
    assert canary("keys", "list") == 2
    assert "invalid_admin_token" in capsys.readouterr().err
