"""Arms from the MLflow registry: aliases drive routing, moves swap versions live."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
from mlflow.pyfunc import PythonModel

from registry.store import Registry
from registry.uris import mlflow_uris
from router.backends import FakeSpec
from router.backends.fake_server import create_fake_openai_app
from router.config import Settings
from router.registry_source import RegistryArmSource
from tests.servers import mlflow_server, serve

BODY = {"model": "chat", "messages": [{"role": "user", "content": "which version?"}]}


@pytest.fixture
def engines() -> Iterator[list[str]]:
    """Three remote engines that each answer with their own name."""
    with (
        serve(create_fake_openai_app(FakeSpec(name="e1", text="engine one"))) as e1,
        serve(create_fake_openai_app(FakeSpec(name="e2", text="engine two"))) as e2,
        serve(create_fake_openai_app(FakeSpec(name="e3", text="engine three"))) as e3,
    ):
        yield [f"{e.url}/v1" for e in (e1, e2, e3)]


def _router(
    registry: Registry, make_settings: Callable[..., Settings], run_router: Any, **settings: Any
) -> Any:
    source = RegistryArmSource(registry, challenger_weight=50)
    return run_router(make_settings(routes={}, registry_poll_s=0.2, **settings), arm_source=source)


def test_alias_moves_swap_versions_without_failing_a_request(
    registry: Registry,
    engines: list[str],
    make_settings: Callable[..., Settings],
    run_router: Any,
) -> None:
    versions = [
        registry.register_endpoint("chat", base_url=url, remote_model="m", params={})
        for url in engines
    ]
    registry.set_alias("chat", "champion", versions[0])
    registry.set_alias("chat", "challenger", versions[1])
    with _router(registry, make_settings, run_router) as (server, _):
        results: list[tuple[int, str, str]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                i = 0
                while not stop.is_set():
                    r = c.post("/v1/chat/completions", json={**BODY, "user": f"u{i % 40}"})
                    results.append(
                        (r.status_code, r.headers.get("x-canary-model-version", ""), r.text)
                    )
                    i += 1

        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        registry.set_alias("chat", "challenger", versions[2])  # a new challenger
        time.sleep(1.5)
        registry.set_alias("chat", "champion", versions[2])  # promoted by hand
        registry.set_alias("chat", "challenger", versions[1])
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
    assert results and all(status == 200 for status, _, _ in results)
    seen = Counter(version for _, version, _ in results)
    assert set(seen) == set(versions), seen
    # The answer always comes from the engine of the version the headers name.
    names = dict(zip(versions, ("engine one", "engine two", "engine three"), strict=True))
    assert all(names[v] in text for _, v, text in results)
    # After the moves, v1 is nobody's: the last requests never hit it.
    assert all(v != versions[0] for _, v, _ in results[-20:])


def test_route_without_challenger_serves_the_champion_alone(
    registry: Registry,
    engines: list[str],
    make_settings: Callable[..., Settings],
    run_router: Any,
) -> None:
    v1 = registry.register_endpoint(
        "chat", base_url=engines[0], remote_model="m", params={}, alias="champion"
    )
    with _router(registry, make_settings, run_router) as (server, _):
        arms = {
            httpx.post(f"{server.url}/v1/chat/completions", json={**BODY, "user": f"u{i}"}).headers[
                "x-canary-model-version"
            ]
            for i in range(20)
        }
        route = httpx.get(f"{server.url}/v1/routes/chat").json()
    assert arms == {v1}
    assert route["challenger"] is None and route["champion"]["version"] == v1


def test_registry_down_keeps_serving_and_reports_degraded(
    engines: list[str],
    make_settings: Callable[..., Settings],
    run_router: Any,
    tmp_path: Path,
) -> None:
    # No fast_http_failures: the arm source bounds its own reads (registry.http_bounds).
    with mlflow_server(tmp_path / "mlflow") as url:
        registry = Registry(url, cache_dir=tmp_path / "cache")
        v1 = registry.register_endpoint(
            "chat", base_url=engines[0], remote_model="m", params={}, alias="champion"
        )
        running = _router(registry, make_settings, run_router)
        server, _ = running.__enter__()
        assert httpx.get(f"{server.url}/health/ready").json()["checks"]["registry"] == "ok"
    # The registry server is gone now; the router keeps the version it has.
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ready = httpx.get(f"{server.url}/health/ready")
            if ready.json()["status"] == "degraded":
                break
            time.sleep(0.1)
        assert ready.status_code == 200
        reason = ready.json()["checks"]["registry"]
        assert reason.startswith("degraded:") and url in reason
        r = httpx.post(f"{server.url}/v1/chat/completions", json=BODY)
        assert r.status_code == 200 and r.headers["x-canary-model-version"] == v1
    finally:
        running.__exit__(None, None, None)


def test_in_flight_requests_finish_on_the_old_version(
    registry: Registry,
    engines: list[str],
    make_settings: Callable[..., Settings],
    run_router: Any,
) -> None:
    with serve(
        create_fake_openai_app(FakeSpec(name="slow", text="slow old", latency_ms=1500))
    ) as slow:
        v_old = registry.register_endpoint(
            "chat", base_url=f"{slow.url}/v1", remote_model="m", params={}, alias="champion"
        )
        v_new = registry.register_endpoint("chat", base_url=engines[1], remote_model="m", params={})
        with _router(registry, make_settings, run_router) as (server, app):
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(
                    httpx.post, f"{server.url}/v1/chat/completions", json=BODY, timeout=30
                )
                time.sleep(0.3)  # the request is waiting on the slow old version
                registry.set_alias("chat", "champion", v_new)
                deadline = time.monotonic() + 10
                while app.state.routes.get("chat").champion.version != v_new:
                    assert time.monotonic() < deadline, "the alias move was not picked up"
                    time.sleep(0.05)
                fresh = httpx.post(f"{server.url}/v1/chat/completions", json=BODY)
                old = pending.result()
            row = httpx.get(f"{server.url}/v1/requests/{old.headers['x-request-id']}").json()
    assert (old.status_code, old.headers["x-canary-model-version"]) == (200, v_old)
    assert "slow old" in old.text and row["served_model_version"] == v_old
    assert (fresh.status_code, fresh.headers["x-canary-model-version"]) == (200, v_new)


class EchoChain(PythonModel):
    """Stands in for a logged LangChain chain: answers a string."""

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        user = [m["content"] for m in model_input["messages"] if m["role"] == "user"]
        return f"echo: {user[-1]}"


def test_any_chat_pyfunc_is_routable(
    registry: Registry, make_settings: Callable[..., Settings], run_router: Any, tmp_path: Path
) -> None:
    experiment = registry.client.create_experiment(
        "user-chains", artifact_location=(tmp_path / "user-artifacts").as_uri()
    )
    with mlflow_uris(registry.tracking_uri), mlflow.start_run(experiment_id=experiment):
        mlflow.pyfunc.log_model(name="echo", python_model=EchoChain(), registered_model_name="chat")
    registry.set_alias("chat", "champion", "1")
    with _router(registry, make_settings, run_router) as (server, _):
        r = httpx.post(f"{server.url}/v1/chat/completions", json=BODY)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "echo: which version?"
        streamed = httpx.post(f"{server.url}/v1/chat/completions", json={**BODY, "stream": True})
        contents = [line for line in streamed.text.splitlines() if '"content":"echo' in line]
        assert len(contents) == 1  # streamed to the client as one chunk
        route = httpx.get(f"{server.url}/v1/routes/chat").json()
    assert route["champion"]["backend"] == "pyfunc"


@pytest.mark.model
def test_bundled_models_answer_through_the_router(
    registry: Registry,
    make_settings: Callable[..., Settings],
    run_router: Any,
    tmp_path: Path,
) -> None:
    from registry.bundled import register_bundled

    assert register_bundled(registry, tmp_path / "models")
    with _router(registry, make_settings, run_router, allow_arm_override=True) as (server, _):
        for arm in ("champion", "challenger"):
            r = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={
                    **BODY,
                    "max_tokens": 32,
                    "temperature": 0.0,  # Gemma is a base model: sampled, it may start a new "###"
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                },
                headers={"x-canary-arm": arm},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            assert r.headers["x-canary-arm"] == arm
            text = r.json()["choices"][0]["message"]["content"]
            # Sensible text, not empty: words, and for Gemma no template markers leaking.
            assert len(text.split()) >= 2, (arm, text)
            assert "###" not in text, (arm, text)
            row = httpx.get(f"{server.url}/v1/requests/{r.json()['id']}").json()
            assert row["model_name"] == "chat" and row["model_version"] in ("1", "2")


def test_registered_params_reach_the_native_backends(registry: Registry, tmp_path: Path) -> None:
    from registry.store import ResolvedVersion
    from router.backends import LlamaCppSpec, OpenAISpec, PyfuncSpec
    from router.registry_source import spec_for

    gguf = ResolvedVersion(
        route="chat",
        alias="challenger",
        version="7",
        flavour="gguf",
        params={
            "n_gpu_layers": -1,
            "n_ctx": 4096,
            "chat_format": "alpaca",
            "stop": ["###"],
            "unknown_to_this_router": 1,
        },
        model_uri="models:/chat/7",
        gguf_path=tmp_path / "m.gguf",
    )
    spec = spec_for(gguf, registry)
    assert isinstance(spec, LlamaCppSpec)
    assert (spec.n_gpu_layers, spec.n_ctx, spec.chat_format, spec.stop) == (
        -1,
        4096,
        "alpaca",
        ["###"],
    )
    assert (spec.name, spec.version, spec.gguf) == ("chat", "7", str(tmp_path / "m.gguf"))

    remote = ResolvedVersion(
        route="chat",
        alias="champion",
        version="3",
        flavour="openai",
        params={
            "base_url": "http://e/v1",
            "remote_model": "m",
            "api_key_env": "KEY",
            "temperature": 0.1,
        },
        model_uri="models:/chat/3",
        gguf_path=None,
    )
    spec = spec_for(remote, registry)
    assert isinstance(spec, OpenAISpec)
    assert (spec.base_url, spec.api_key_env, spec.temperature) == ("http://e/v1", "KEY", 0.1)

    other = ResolvedVersion(
        route="chat",
        alias="champion",
        version="4",
        flavour="pyfunc",
        params={},
        model_uri="models:/chat/4",
        gguf_path=None,
    )
    spec = spec_for(other, registry)
    assert isinstance(spec, PyfuncSpec)
    assert (spec.model_uri, spec.tracking_uri) == ("models:/chat/4", registry.tracking_uri)
