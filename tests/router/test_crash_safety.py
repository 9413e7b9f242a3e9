"""SIGKILL under load loses no answered request: every row is in the local journal before
its response leaves, and the next start replays it (real processes)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.canary_process import CanaryProcess

CONFIG = {
    "routes": {
        "chat": {
            "champion": {"backend": "fake", "name": "a", "version": "1", "mode": "echo"},
            "challenger": {"backend": "fake", "name": "b", "version": "2"},
            "challenger_weight": 50,
        }
    },
    "ui_enabled": False,
    # Commit rarely, so a kill finds hundreds of answered rows not yet in the database.
    "log_flush_interval_s": 5,
    "log_batch_size": 100000,
}


def load(url: str, answered: list[str], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        i = 0
        while not stop.is_set():
            i += 1
            body = {
                "model": "chat",
                "user": f"u{i % 50}",
                "messages": [{"role": "user", "content": "hi"}],
            }
            try:
                r = client.post("/v1/chat/completions", json=body)
            except httpx.HTTPError:
                return  # the process died under us: this request was never answered
            if r.status_code == 200:
                answered.append(r.headers["x-request-id"])


def wait_for_rows(router: CanaryProcess, want: set[str], timeout: float = 60) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        rows = router.rows()
        if want <= rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_sigkill_under_load_loses_no_answered_request(tmp_path: Path) -> None:
    router = CanaryProcess(CONFIG, tmp_path / "data").start()
    answered: list[str] = []
    stop = threading.Event()
    clients = [threading.Thread(target=load, args=(router.url, answered, stop)) for _ in range(4)]
    for c in clients:
        c.start()
    time.sleep(2.5)
    router.kill()
    stop.set()
    for c in clients:
        c.join()
    assert len(answered) > 100
    assert len(router.rows() & set(answered)) < len(answered)  # the kill did cut the drain

    router.start()  # replays what the killed process journaled, in the background
    rows = wait_for_rows(router, set(answered))
    router.stop()
    missing = set(answered) - rows
    assert not missing, f"{len(missing)} of {len(answered)} answered requests lost"
