"""What operators see: Prometheus metrics, health checks, the admin weight switch, JSON logs."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import create_engine

from router.assignment import bucket_of
from router.config import Settings
from router.logs import configure_logging
from router.readiness import DatabaseProbe
from tests.conftest import fake_routes
from tests.servers import ServerThread

Running = tuple[ServerThread, FastAPI]
TOKEN = "s3cret-admin-token"
CHALLENGER_PERCENT = 30.0
CONTEXT_LENGTH = 50
VERSIONS = {"champion": "1", "challenger": "2"}


# -- helpers ------------------------------------------------------------------------------
def scrape(http: httpx.Client) -> dict[str, list[Sample]]:
    """``/metrics`` parsed, samples by sample name (``canary_requests_total``, ...)."""
    r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples.get(name, []) if labels.items() <= s.labels.items())


def ask(http: httpx.Client, user: str, content: str = "hello there") -> httpx.Response:
    return http.post(
        "/v1/chat/completions",
        json={"model": "chat", "user": user, "messages": [{"role": "user", "content": content}]},
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def set_weight(http: httpx.Client, percent: float, authorization: str | None) -> httpx.Response:
    headers = {"authorization": authorization} if authorization else {}
    return http.put("/v1/routes/chat/weights", json={"challenger": percent}, headers=headers)


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture
def observed(make_settings: Callable[..., Settings], run_router: Any) -> Iterator[Running]:
    """A 70/30 route with small contexts (so a long prompt is refused) and an admin token."""
    small = {"context_length": CONTEXT_LENGTH}
    settings = make_settings(
        routes=fake_routes(challenger_weight=CHALLENGER_PERCENT, champion=small, challenger=small),
        admin_token=TOKEN,
    )
    with run_router(settings) as running:
        yield running


@pytest.fixture
def http(observed: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=observed[0].url, timeout=30) as client:
        yield client


@dataclass
class Traffic:
    by_labels: Counter[tuple[str, str, str]]  # (arm, version, status) -> requests
    completion_tokens: int
    ok_ids: dict[str, str]  # request id -> arm

    @property
    def total(self) -> int:
        return sum(self.by_labels.values())


@pytest.fixture
def traffic(http: httpx.Client) -> Traffic:
    """20 answered requests from distinct units, and one refused for its context length."""
    t = Traffic(Counter(), 0, {})
    for i in range(20):
        r = ask(http, f"unit-{i}")
        assert r.status_code == 200, r.text
        arm, version = r.headers["x-canary-arm"], r.headers["x-canary-model-version"]
        t.by_labels[arm, version, "ok"] += 1
        t.completion_tokens += r.json()["usage"]["completion_tokens"]
        t.ok_ids[r.json()["id"]] = arm
    r = ask(http, "long-winded", "word " * (CONTEXT_LENGTH + 10))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    challenger = bucket_of("chat", "chat", "long-winded") < CHALLENGER_PERCENT * 100
    arm = "challenger" if challenger else "champion"
    t.by_labels[arm, VERSIONS[arm], "rejected"] += 1
    return t


# -- metrics ------------------------------------------------------------------------------
def test_request_counters_match_the_traffic(http: httpx.Client, traffic: Traffic) -> None:
    samples = scrape(http)
    counted = {
        (s.labels["arm"], s.labels["version"], s.labels["status"]): s.value
        for s in samples["canary_requests_total"]
    }
    assert {s.labels["route"] for s in samples["canary_requests_total"]} == {"chat"}
    assert counted == {k: float(v) for k, v in traffic.by_labels.items()}
    assert {arm for arm, _, _ in counted} == {"champion", "challenger"}  # 20 units, 70/30
    assert value(samples, "canary_request_duration_seconds_count") == traffic.total
    assert value(samples, "canary_completion_tokens_total") == traffic.completion_tokens > 0
    assert value(samples, "canary_requests_in_flight", route="chat") == 0
    assert all(s.value == 0 for s in samples["canary_requests_in_flight"])


def test_requests_refused_before_assignment_are_counted(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"model": "no-such-route", "messages": []})
    assert r.status_code == 400  # empty messages: refused before the route is looked up
    r = http.post(
        "/v1/chat/completions",
        json={"model": "no-such-route", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 404
    samples = scrape(http)
    # Client-chosen route names never become label values: they count as "unknown".
    assert value(samples, "canary_requests_total", route="unknown", arm="none") == 2
    assert "no-such-route" not in {s.labels["route"] for s in samples["canary_requests_total"]}


def test_every_request_is_counted_as_a_written_log_row(
    http: httpx.Client, traffic: Traffic
) -> None:
    wait_for(lambda: value(scrape(http), "canary_log_rows_written_total") >= traffic.total)
    samples = scrape(http)
    assert value(samples, "canary_log_rows_written_total") == traffic.total
    assert value(samples, "canary_log_rows_spilled_total") == 0
    assert value(samples, "canary_log_queue_depth") == 0


def test_thumbs_up_is_counted_by_arm(http: httpx.Client, traffic: Traffic) -> None:
    request_id, arm = next(iter(traffic.ok_ids.items()))
    assert value(scrape(http), "canary_feedback_total") == 0
    first = {"request_id": request_id, "value": "up", "user": "unit-0"}  # the first unit's
    r = http.post("/v1/feedback", json=first)
    assert r.status_code == 200, r.text
    samples = scrape(http)
    assert value(samples, "canary_feedback_total", route="chat", arm=arm, value="up") == 1
    assert value(samples, "canary_feedback_total") == 1


def test_traffic_weight_gauge_is_the_configured_split(http: httpx.Client) -> None:
    samples = scrape(http)
    champion = value(samples, "canary_traffic_weight_ratio", route="chat", arm="champion")
    challenger = value(samples, "canary_traffic_weight_ratio", route="chat", arm="challenger")
    assert challenger == pytest.approx(CHALLENGER_PERCENT / 100)
    assert champion == pytest.approx(1 - CHALLENGER_PERCENT / 100)
    assert champion + challenger == pytest.approx(1)


def test_in_flight_gauge_counts_a_running_request(
    make_settings: Callable[..., Settings], run_router: Any
) -> None:
    slow = {"latency_ms": 400}
    settings = make_settings(routes=fake_routes(champion=slow, challenger=slow))
    with run_router(settings) as (server, _), httpx.Client(base_url=server.url) as http:
        done: list[httpx.Response] = []

        def slow_request() -> None:  # its own client: it runs while this thread scrapes
            done.append(httpx.post(f"{server.url}/v1/chat/completions", json=body))

        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        thread = threading.Thread(target=slow_request)
        thread.start()
        wait_for(lambda: value(scrape(http), "canary_requests_in_flight") == 1)
        thread.join()
        assert done[0].status_code == 200
        assert value(scrape(http), "canary_requests_in_flight") == 0


def test_exposition_passes_promtool(http: httpx.Client, traffic: Traffic) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found: install the Debian package `prometheus` "
            "(apt-get install -y prometheus); CI installs it."
        )
    first = {"request_id": next(iter(traffic.ok_ids)), "value": "up", "user": "unit-0"}
    r = http.post("/v1/feedback", json=first)
    assert r.status_code == 200, r.text
    exposition = http.get("/metrics").text
    assert "canary_feedback_total" in exposition
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- health -------------------------------------------------------------------------------
def test_live(http: httpx.Client) -> None:
    r = http.get("/health/live")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_ready_checks_arms_log_database_registry_and_engines(http: httpx.Client) -> None:
    wait_for(lambda: "unchecked" not in http.get("/health/ready").text)
    r = http.get("/health/ready")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ready",
        "checks": {
            "arms": "ok",
            "log": "ok",
            "database": "ok",
            "registry": "ok",
            "engines": {"chat": {"champion": "ok", "challenger": "ok"}},
        },
    }


def test_an_unreachable_database_is_degraded_not_503(observed: Running, http: httpx.Client) -> None:
    # Every request is still served (rows go to the local journal): draining the router
    # would only take a working replica out of the load balancer.
    readiness = observed[1].state.readiness
    healthy = readiness.database
    broken = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/x")
    readiness.database = DatabaseProbe(broken)
    try:
        r = http.get("/health/ready")
    finally:
        readiness.database = healthy
        broken.dispose()
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "degraded"
    assert body["checks"]["arms"] == "ok"
    assert body["checks"]["database"].startswith("unreachable")
    assert http.get("/health/ready").json()["status"] == "ready"


# -- runtime weights ------------------------------------------------------------------------
def test_admin_moves_the_split_at_run_time(http: httpx.Client) -> None:
    r = set_weight(http, 100, f"Bearer {TOKEN}")
    assert r.status_code == 200, r.text
    route = r.json()
    assert (route["champion"]["weight"], route["challenger"]["weight"]) == (0.0, 1.0)
    assert http.get("/v1/routes/chat").json()["challenger"]["weight"] == 1.0

    arms = {ask(http, f"unit-{i}").headers["x-canary-arm"] for i in range(20)}
    assert arms == {"challenger"}
    samples = scrape(http)
    assert value(samples, "canary_traffic_weight_ratio", arm="challenger") == 1.0
    assert value(samples, "canary_traffic_weight_ratio", arm="champion") == 0.0


@pytest.mark.parametrize(
    ("authorization", "status", "code"),
    [
        (None, 401, "missing_admin_token"),
        (f"Token {TOKEN}", 401, "missing_admin_token"),
        ("Bearer wrong-token", 403, "invalid_admin_token"),
    ],
    ids=["no-token", "not-bearer", "wrong-token"],
)
def test_weight_change_needs_the_admin_token(
    http: httpx.Client, authorization: str | None, status: int, code: str
) -> None:
    r = set_weight(http, 100, authorization)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    assert http.get("/v1/routes/chat").json()["challenger"]["weight"] == pytest.approx(
        CHALLENGER_PERCENT / 100
    )
    assert value(scrape(http), "canary_traffic_weight_ratio", arm="challenger") == pytest.approx(
        CHALLENGER_PERCENT / 100
    )


def test_weight_change_needs_the_generated_admin_token(router: Running) -> None:
    """No admin token configured: the router made one, and only it is accepted."""
    server, app = router
    with httpx.Client(base_url=server.url) as http:
        r = set_weight(http, 100, "Bearer anything")
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "invalid_admin_token"
        token = (app.state.settings.data_dir / "admin_token").read_text().strip()
        assert set_weight(http, 100, f"Bearer {token}").status_code == 200


# -- logs -----------------------------------------------------------------------------------
@pytest.fixture
def json_formatter() -> Iterator[logging.Formatter]:
    """The formatter ``configure_logging`` installs; the logging setup is restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    names = ("uvicorn", "uvicorn.error")  # configure_logging rewires these too
    uvicorn = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names}
    try:
        configure_logging("INFO", "json")
        formatter = root.handlers[0].formatter
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name, (handlers, propagate) in uvicorn.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate
    assert formatter is not None
    yield formatter


def test_request_log_lines_are_json_with_the_request_id(
    http: httpx.Client, json_formatter: logging.Formatter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router")
    r = ask(http, "logged-unit")
    assert r.status_code == 200
    request_id = r.headers["x-request-id"]

    records = [rec for rec in caplog.records if getattr(rec, "request_id", None) == request_id]
    assert records, "no log record carries the request id"
    lines = [json.loads(json_formatter.format(rec)) for rec in records]
    line = next(entry for entry in lines if entry["message"] == "chat completion")
    assert line["request_id"] == request_id
    assert line["level"] == "INFO"
    assert line["logger"] == "router.completions"
    assert (line["route"], line["status"]) == ("chat", "ok")
    assert line["arm"] == r.headers["x-canary-arm"]
    assert "time" in line
