"""Faults under load, with real processes: SIGKILL loses no answered request (every row
is in the local journal before its response leaves, and the next start replays it), and
an engine killed mid-load leaves a row for every request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.canary_process import CanaryProcess, FakeEngineProcess, Load

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


def wait_for_rows(router: CanaryProcess, want: set[str], timeout: float = 60) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        rows = router.request_ids()
        if want <= rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_sigkill_under_load_loses_no_answered_request(tmp_path: Path) -> None:
    router = CanaryProcess(CONFIG, tmp_path / "data").start()
    load = Load(router.url)
    with load.running():
        time.sleep(2.5)
        router.kill()
    answered = load.answered
    assert len(answered) > 100
    assert len(router.request_ids() & answered) < len(answered)  # the kill did cut the drain

    router.start()  # replays what the killed process journaled, in the background
    rows = wait_for_rows(router, answered)
    router.stop()
    missing = answered - rows
    assert not missing, f"{len(missing)} of {len(answered)} answered requests lost"


def test_an_engine_killed_mid_load_leaves_a_row_for_every_request(tmp_path: Path) -> None:
    """Plain requests and streams in flight when the champion's engine dies all get an
    answer (an error one) and a row; the engine back, requests succeed again."""
    engine = FakeEngineProcess(text="word " * 100, tokens_per_s=20).start()  # 5 s a stream
    config = {**CONFIG, "routes": {"chat": {"champion": engine.spec(version="1", timeout_s=5)}}}
    router = CanaryProcess({**config, "log_flush_interval_s": 0.25}, tmp_path / "data").start()
    streams: list[list[str]] = [[] for _ in range(5)]

    def stream(into: list[str]) -> None:
        body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        try:
            with httpx.stream("POST", f"{router.url}/v1/chat/completions", json=body) as r:
                into.extend(line for line in r.iter_lines() if line)
        except httpx.HTTPError as exc:
            into.append(f"transport error: {exc!r}")

    streamers = [threading.Thread(target=stream, args=(s,)) for s in streams]
    short = [{"role": "user", "content": "hi"}]
    load = Load(
        router.url, threads=3, body=lambda i: {"model": "chat", "messages": short, "max_tokens": 2}
    )
    with load.running():
        for s in streamers:
            s.start()
        time.sleep(1.5)
        engine.kill()
        time.sleep(1.5)
        engine.start()
        time.sleep(1.5)
    for s in streamers:
        s.join()
    router.stop()
    engine.kill()

    assert load.statuses[502] > 0 and load.statuses[200] > 0  # failed, then served again
    assert set(load.statuses) <= {200, 502}
    assert len(router.request_ids()) == load.sent + len(streams)
    for lines in streams:  # each stream was cut, and ended with an error event
        assert len(lines) > 3 and '"error"' in lines[-1], lines[-3:]
