"""A Postgres outage made by a paused TCP proxy between the router and the database (the
shared server itself is never stopped): every request is served and, once the database
answers again, every row is in the table while the same router keeps running."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.canary_process import CanaryProcess
from tests.router.test_crash_safety import CONFIG
from tests.tcp_proxy import TcpProxy


def load(url: str, results: list[tuple[int, str]], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            i += 1
            body = {
                "model": "chat",
                "user": f"u{i}",
                "messages": [{"role": "user", "content": "hi"}],
            }
            r = client.post("/v1/chat/completions", json=body)
            results.append((r.status_code, r.headers.get("x-request-id", "")))
            time.sleep(0.005)


def test_rows_equal_requests_after_an_outage_without_a_restart(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    config = {**CONFIG, "log_flush_interval_s": 0.25, "log_batch_size": 100}
    with TcpProxy(5432) as proxy:
        router = CanaryProcess(
            config, tmp_path / "data", CANARY_DATABASE_URL=proxy.url_for(fresh_postgres_url)
        ).start()
        results: list[tuple[int, str]] = []
        stop = threading.Event()
        clients = [
            threading.Thread(target=load, args=(router.url, results, stop)) for _ in range(3)
        ]
        try:
            for c in clients:
                c.start()
            time.sleep(1.5)
            proxy.pause()
            time.sleep(2)
            during = httpx.get(f"{router.url}/health/ready", timeout=10)
            time.sleep(6)
            served_in_outage = len(results)
            proxy.resume()
            time.sleep(1.5)
        finally:
            stop.set()
            for c in clients:
                c.join()
        answered = {rid for status, rid in results if status == 200}
        assert len(answered) == len(results), "a request failed during the outage"
        assert served_in_outage > 100

        deadline = time.monotonic() + 30
        while (rows := router.rows(fresh_postgres_url)) < answered and time.monotonic() < deadline:
            time.sleep(0.3)
        after = httpx.get(f"{router.url}/health/ready", timeout=10).json()
        metrics = httpx.get(f"{router.url}/metrics").text
        router.stop()

    assert not answered - rows, f"{len(answered - rows)} of {len(answered)} rows missing"
    assert during.status_code == 200, during.text
    assert during.json()["status"] == "degraded"
    assert "database" in str(during.json()["checks"]).lower()
    assert after["status"] == "ready", after
    replayed = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("canary_log_rows_replayed_total")
    )
    assert replayed > 0  # rows came back from the journal, not from memory
    assert not list((tmp_path / "data" / "journal").glob("segment-*"))  # all settled
