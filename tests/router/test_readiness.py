"""Readiness means "can serve": 503 only when the router cannot serve; every survivable
failure (registry, engine, database) is 200 ``degraded`` naming what is wrong.

Real components throughout: a real ``mlflow server`` killed and restarted, a remote
engine (the fake OpenAI server) stopped and restarted, the real Postgres behind a TCP
proxy that can refuse or swallow connections, the real inference-log writer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry.errors import RegistryUnavailable
from registry.store import Registry
from router.backends import FakeSpec, OpenAISpec
from router.backends.fake_server import create_fake_openai_app
from router.config import RouteConfig, Settings
from router.registry_source import RegistryArmSource
from tests.servers import ServerThread, free_port, mlflow_server, serve
from tests.tcp_proxy import TcpProxy

BODY = {"model": "chat", "messages": [{"role": "user", "content": "which version?"}]}
#: Measured figures, printed at the end of each test (run with -s to see them).
FIGURES: dict[str, float] = {}


def poll(
    get: Callable[[], httpx.Response],
    until: Callable[[httpx.Response], bool],
    *,
    timeout: float,
) -> tuple[httpx.Response, float]:
    """Call ``get`` until ``until`` holds; the response and the seconds it took."""
    start = time.monotonic()
    while True:
        r = get()
        if until(r):
            return r, time.monotonic() - start
        assert time.monotonic() - start < timeout, f"not within {timeout} s: {r.text}"
        time.sleep(0.1)


def gauge(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


@pytest.fixture
def proxied_postgres(fresh_postgres_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """A database of this test's own on the real Postgres, reached through a ``TcpProxy``."""
    with TcpProxy(5432) as proxy:
        yield proxy.url_for(fresh_postgres_url), proxy


# -- the registry ---------------------------------------------------------------------------
@pytest.fixture
def engines() -> Iterator[list[str]]:
    """Two remote engines that each answer with their own name."""
    with (
        serve(create_fake_openai_app(FakeSpec(name="e1", text="engine one"))) as e1,
        serve(create_fake_openai_app(FakeSpec(name="e2", text="engine two"))) as e2,
    ):
        yield [f"{e.url}/v1" for e in (e1, e2)]


def test_registry_outage_is_degraded_within_seconds_and_a_move_lands_when_it_is_back(
    engines: list[str],
    make_settings: Callable[..., Settings],
    run_router: Any,
    tmp_path: Path,
) -> None:
    # No fast_http_failures here: the router's own bound must make a dead registry quick.
    timeout_s, poll_s = 2.0, 0.5
    root, port = tmp_path / "mlflow", free_port()
    with mlflow_server(root, port=port) as url:
        registry = Registry(url, cache_dir=tmp_path / "cache")
        v1 = registry.register_endpoint(
            "chat", base_url=engines[0], remote_model="m", params={}, alias="champion"
        )
        v2 = registry.register_endpoint("chat", base_url=engines[1], remote_model="m", params={})
        source = RegistryArmSource(registry, challenger_weight=50, timeout_s=timeout_s)
        settings = make_settings(routes={}, registry_poll_s=poll_s, registry_timeout_s=timeout_s)
        running = run_router(settings, arm_source=source)
        server, _ = running.__enter__()
        assert httpx.get(f"{server.url}/health/ready").json()["status"] == "ready"
        assert gauge(server.url, "canary_registry_up") == 1
    try:
        # The registry server is gone (terminated on leaving the block).
        r, FIGURES["registry killed -> degraded (s)"] = poll(
            lambda: httpx.get(f"{server.url}/health/ready", timeout=30),
            lambda r: r.json()["status"] == "degraded",
            timeout=timeout_s + poll_s + 15,
        )
        assert r.status_code == 200
        assert r.json()["checks"]["registry"].startswith("degraded:")
        assert url in r.json()["checks"]["registry"]
        assert gauge(server.url, "canary_registry_up") == 0
        served = httpx.post(f"{server.url}/v1/chat/completions", json=BODY, timeout=30)
        assert (served.status_code, served.headers["x-canary-model-version"]) == (200, v1)

        with mlflow_server(root, port=port):  # same port, same backend store
            back = time.monotonic()
            Registry(url, cache_dir=tmp_path / "cache2").set_alias("chat", "champion", v2)
            FIGURES["registry back -> alias moved (s)"] = time.monotonic() - back
            _, FIGURES["alias moved -> new version serving (s)"] = poll(
                lambda: httpx.post(f"{server.url}/v1/chat/completions", json=BODY, timeout=30),
                lambda r: r.headers.get("x-canary-model-version") == v2,
                # At most one capped backoff (4 polls) plus one bounded read, and slack.
                timeout=4 * poll_s + timeout_s + 10,
            )
            ready = httpx.get(f"{server.url}/health/ready").json()
            assert ready["status"] == "ready" and ready["checks"]["registry"] == "ok"
            assert gauge(server.url, "canary_registry_up") == 1
    finally:
        running.__exit__(None, None, None)
    print(FIGURES)


def test_a_registry_that_accepts_but_never_answers_fails_a_read_in_bounded_time(
    tmp_path: Path,
) -> None:
    # A listening socket nobody accepts from: the kernel completes the handshake,
    # no HTTP answer ever comes. MLflow's defaults would wait 120 s, then retry.
    with socket.create_server(("127.0.0.1", 0)) as hung:
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        source = RegistryArmSource(
            Registry(url, cache_dir=tmp_path / "cache"), challenger_weight=0, timeout_s=1.0
        )
        start = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="timed out"):
            source.load()
        assert time.monotonic() - start < 10


# -- engines --------------------------------------------------------------------------------
def test_champion_engine_down_degrades_its_route_until_it_is_back(
    make_settings: Callable[..., Settings], run_router: Any
) -> None:
    port = free_port()
    engine = ServerThread(create_fake_openai_app(FakeSpec(name="remote")), port=port).start()
    champion = OpenAISpec(
        name="chat",
        version="7",
        base_url=f"http://127.0.0.1:{port}/v1",
        remote_model="m",
        check_timeout_s=1.0,
    )
    settings = make_settings(
        routes={"chat": RouteConfig(champion=champion)}, engine_check_interval_s=0.3
    )
    ready = "http://unset"
    try:
        with run_router(settings) as (server, _):
            ready = f"{server.url}/health/ready"
            poll(lambda: httpx.get(ready), lambda r: r.json()["status"] == "ready", timeout=15)
            assert gauge(server.url, "canary_engine_up", route="chat", arm="champion") == 1

            engine.stop()
            killed = time.monotonic()
            r, FIGURES["engine killed -> degraded (s)"] = poll(
                lambda: httpx.get(ready), lambda r: r.json()["status"] == "degraded", timeout=15
            )
            assert r.status_code == 200
            state = r.json()["checks"]["engines"]["chat"]["champion"]
            assert state.startswith("down: chat@champion version 7:"), state
            assert f"127.0.0.1:{port}" in state
            assert gauge(server.url, "canary_engine_up", route="chat", arm="champion") == 0

            engine = ServerThread(
                create_fake_openai_app(FakeSpec(name="remote")), port=port
            ).start()
            r, FIGURES["engine back -> ready (s)"] = poll(
                lambda: httpx.get(ready), lambda r: r.json()["status"] == "ready", timeout=15
            )
            assert r.json()["checks"]["engines"] == {"chat": {"champion": "ok"}}
            assert gauge(server.url, "canary_engine_up", route="chat", arm="champion") == 1
            assert time.monotonic() - killed > 0
    finally:
        engine.stop()
    print(FIGURES)


def test_a_failing_challenger_is_reported(
    make_settings: Callable[..., Settings], run_router: Any
) -> None:
    routes = {
        "chat": RouteConfig(
            champion=FakeSpec(name="chat", version="1"),
            challenger=FakeSpec(name="chat", version="2", error_rate=1.0),
            challenger_weight=50,
        )
    }
    with run_router(make_settings(routes=routes, engine_check_interval_s=0.3)) as (server, _):
        r, _ = poll(
            lambda: httpx.get(f"{server.url}/health/ready"),
            lambda r: r.json()["status"] == "degraded",
            timeout=15,
        )
        engines = r.json()["checks"]["engines"]["chat"]
        assert engines["champion"] == "ok"
        assert engines["challenger"].startswith("down: chat@challenger version 2:")
        assert gauge(server.url, "canary_engine_up", route="chat", arm="challenger") == 0
        # Still served: the champion answers for a failing challenger.
        r = httpx.post(f"{server.url}/v1/chat/completions", json={**BODY, "user": "u1"})
        assert r.status_code == 200


# -- the database and the inference log -----------------------------------------------------
def test_a_database_that_never_answers_is_degraded_in_bounded_time_without_piling_threads(
    proxied_postgres: tuple[str, TcpProxy],
    make_settings: Callable[..., Settings],
    run_router: Any,
) -> None:
    url, proxy = proxied_postgres
    with run_router(make_settings(database_url=url)) as (server, _):
        ready = f"{server.url}/health/ready"
        poll(lambda: httpx.get(ready), lambda r: r.json()["status"] == "ready", timeout=15)
        threads = threading.active_count()
        proxy.blackhole()
        # A cached "ok" may answer for up to a second; then a ping that waits 3 s at most.
        r, took = poll(
            lambda: httpx.get(ready, timeout=30),
            lambda r: r.json()["status"] != "ready",
            timeout=15,
        )
        assert r.status_code == 200 and r.json()["status"] == "degraded", r.text
        assert r.json()["checks"]["database"] == "no answer in 3 s"
        FIGURES["database blackholed -> degraded (s)"] = took
        # Polled hard: one ping in flight at a time, not one thread per poll.
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for _ in range(30):
                assert c.get("/health/ready").status_code == 200
        assert threading.active_count() - threads <= 4
        # Requests are still served (their rows go to the local journal).
        assert (
            httpx.post(f"{server.url}/v1/chat/completions", json=BODY, timeout=30).status_code
            == 200
        )
        proxy.resume()
        poll(lambda: httpx.get(ready), lambda r: r.json()["status"] == "ready", timeout=30)
    print(FIGURES)


def test_ready_is_503_only_while_requests_cannot_be_recorded(
    proxied_postgres: tuple[str, TcpProxy],
    make_settings: Callable[..., Settings],
    run_router: Any,
) -> None:
    url, proxy = proxied_postgres
    settings = make_settings(database_url=url, log_journal_max_bytes=1 << 20)
    with run_router(settings) as (server, app), httpx.Client(base_url=server.url, timeout=30) as c:
        poll(lambda: c.get("/health/ready"), lambda r: r.json()["status"] == "ready", timeout=15)
        proxy.pause()
        # The writer learns of the outage from its next write: degraded, still 200.
        assert c.post("/v1/chat/completions", json=BODY).status_code == 200
        r, _ = poll(
            lambda: c.get("/health/ready"),
            lambda r: (
                r.json()["checks"]["log"].startswith("degraded")
                and r.json()["checks"]["database"] != "ok"  # a cached ping lasts 1 s
            ),
            timeout=15,
        )
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        assert r.json()["checks"]["database"].startswith("unreachable")
        # Fill the local journal (1 MiB) with large prompts: rows can no longer be kept.
        big = {**BODY, "messages": [{"role": "user", "content": "x" * 300_000}]}
        for _ in range(8):
            assert c.post("/v1/chat/completions", json=big).status_code == 200
        assert app.state.writer.health().status == "down"
        r = c.get("/health/ready")
        assert r.status_code == 503, r.text
        assert r.json()["status"] == "not_ready"
        assert r.json()["checks"]["log"].startswith("down: requests cannot be recorded")
        # The database answers again: the journal drains and the router is ready.
        proxy.resume()
        poll(lambda: c.get("/health/ready"), lambda r: r.json()["status"] == "ready", timeout=60)


def test_shutting_down_is_not_ready(
    make_settings: Callable[..., Settings], run_router: Any
) -> None:
    with run_router(make_settings()) as (server, app), httpx.Client(base_url=server.url) as c:
        assert app.state.readiness.draining() is False  # wired to the chat service
        app.state.readiness.draining = lambda: True  # as during a SIGTERM's grace period
        r = c.get("/health/ready")
    assert r.status_code == 503
    assert r.json()["status"] == "not_ready"
    assert r.json()["checks"]["shutdown"].startswith("draining")
