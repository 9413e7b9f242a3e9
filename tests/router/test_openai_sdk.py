"""The official ``openai`` SDK talks to the router unchanged."""

from __future__ import annotations

import httpx
import openai
import pytest
from fastapi import FastAPI

from tests.servers import ServerThread


@pytest.fixture
def client(router: tuple[ServerThread, FastAPI]) -> openai.OpenAI:
    server, _ = router
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_non_stream(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello router"}], user="alice"
    )
    completion = raw.parse()
    assert completion.id == raw.headers["x-request-id"]
    assert raw.headers["x-canary-arm"] in ("champion", "challenger")
    assert raw.headers["x-canary-model-version"] in ("1", "2")
    assert completion.model == "chat"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "stream these words back"}],
        stream=True,
        stream_options={"include_usage": True},
        user="bob",
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split())
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_same_user_same_arm(client: openai.OpenAI) -> None:
    arms = {
        client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], user="carol"
        ).headers["x-canary-arm"]
        for _ in range(5)
    }
    assert len(arms) == 1


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["chat"]


def test_sdk_errors_are_typed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "nope" in str(missing.value)
    with pytest.raises(openai.BadRequestError) as invalid:  # 400, as OpenAI answers
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert invalid.value.param == "temperature"


def test_unit_header_and_arm_override(
    make_settings,
    run_router,  # type: ignore[no-untyped-def]
) -> None:
    with run_router(make_settings(allow_arm_override=True)) as (server, _):
        headers = {"x-canary-unit": "dave"}
        url = f"{server.url}/v1/chat/completions"
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        arms = {
            httpx.post(url, json=body, headers=headers).headers["x-canary-arm"] for _ in range(4)
        }
        assert len(arms) == 1
        for arm in ("champion", "challenger"):
            r = httpx.post(url, json=body, headers={"x-canary-arm": arm})
            assert r.headers["x-canary-arm"] == arm
            logged = httpx.get(f"{server.url}/v1/requests/{r.json()['id']}").json()
            assert logged["assignment_reason"] == "override"
        bad = httpx.post(url, json=body, headers={"x-canary-arm": "shadow"})
        assert bad.status_code == 400 and "X-Canary-Arm" in bad.json()["error"]["message"]
