"""The real bundled SmolLM2-135M-Instruct answering through the router (llama.cpp)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from router.app import create_app
from router.backends import LlamaCppSpec
from router.config import RouteConfig, Settings
from tests.servers import ServerThread

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    spec = LlamaCppSpec(
        name="smollm2", version="bundled", gguf="bundled:smollm2", n_ctx=512, temperature=0
    )
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("smol"),
        routes={"smol": RouteConfig(champion=spec)},
        log_format="text",
    )
    server = ServerThread(create_app(settings)).start()
    yield server
    server.stop()


def _client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_smollm2_answers(smol: ServerThread) -> None:
    completion = _client(smol).chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
    )
    text = completion.choices[0].message.content or ""
    assert len(text.split()) >= 2
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 10  # the chat template adds a system turn
    assert 0 < completion.usage.completion_tokens <= 24


def test_smollm2_streams_with_exact_usage(smol: ServerThread) -> None:
    chunks = list(
        _client(smol).chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert text.strip()
    assert usage is not None and usage.prompt_tokens > 10
    assert 0 < usage.completion_tokens <= 20
    row = httpx.get(f"{smol.url}/v1/requests/{chunks[0].id}").json()
    assert row["ttft_ms"] is not None and row["ttft_ms"] < row["latency_ms"]
    assert row["queue_wait_ms"] is not None
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_burst_of_concurrent_requests_on_one_model(smol: ServerThread) -> None:
    def ask(i: int) -> httpx.Response:
        body = {
            "model": "smol",
            "messages": [{"role": "user", "content": f"Count to {i + 2}."}],
            "max_tokens": 12,
            "stream": i % 2 == 0,
        }
        return httpx.post(f"{smol.url}/v1/chat/completions", json=body, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(ask, range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    waits = [
        httpx.get(f"{smol.url}/v1/requests/{r.headers['x-request-id']}").json()["queue_wait_ms"]
        for r in responses
    ]
    # One request at a time per model: most of the burst queued behind the others.
    assert sum(w > 20 for w in waits) >= 4


def test_event_loop_stays_free_while_generating(smol: ServerThread) -> None:
    body = {
        "model": "smol",
        "messages": [{"role": "user", "content": "Tell a story."}],
        "max_tokens": 120,
    }
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(httpx.post, f"{smol.url}/v1/chat/completions", json=body, timeout=60)
        time.sleep(0.3)
        # Answered while the model is still generating: the loop is not blocked by it.
        assert httpx.get(f"{smol.url}/health/live").status_code == 200
        assert not busy.done()
        assert busy.result().status_code == 200


def test_prompt_over_the_context_is_a_400_with_counts(smol: ServerThread) -> None:
    long = "word " * 600
    r = httpx.post(
        f"{smol.url}/v1/chat/completions",
        json={"model": "smol", "messages": [{"role": "user", "content": long}]},
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "512" in error["message"] and "in the messages" in error["message"]


def test_disconnect_frees_the_model(smol: ServerThread) -> None:
    body = {
        "model": "smol",
        "stream": True,
        "max_tokens": 400,
        "messages": [{"role": "user", "content": "Write a long essay about the sea."}],
    }
    with httpx.Client() as c, c.stream("POST", f"{smol.url}/v1/chat/completions", json=body) as r:
        for _ in zip(range(4), r.iter_lines(), strict=False):
            pass
    # Generation stops at the next token, so a new request is not stuck behind 400 tokens.
    started = time.perf_counter()
    ok = httpx.post(
        f"{smol.url}/v1/chat/completions",
        json={"model": "smol", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=60,
    )
    assert ok.status_code == 200
    # The rest of 400 tokens takes over 5 s on 2 cores; margin for a loaded machine.
    assert time.perf_counter() - started < 3.0


def test_stream_usage_matches_llama_cpps_own_count(smol: ServerThread) -> None:
    """Streamed usage (read off the context) equals llama.cpp's non-streamed usage."""
    from llama_cpp import Llama

    from registry.bundled import smollm2_path

    messages = [{"role": "user", "content": "Écris une phrase avec des accents: é à ç."}]
    chunks = list(
        _client(smol).chat.completions.create(
            model="smol",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = chunks[-1].usage
    llm = Llama(model_path=str(smollm2_path()), n_ctx=512, n_threads=1, verbose=False)
    own = llm.create_chat_completion(messages=messages, max_tokens=30, temperature=0)["usage"]  # type: ignore[arg-type,index]
    llm.close()
    assert streamed is not None
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (
        own["prompt_tokens"],
        own["completion_tokens"],
    )
