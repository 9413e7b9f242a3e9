"""SIGKILL under load loses no answered request: every row is in the local journal before
its response leaves, and the next start replays it (real processes)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.canary_process import CanaryProcess, Load

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
        rows = router.rows()
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
    assert len(router.rows() & answered) < len(answered)  # the kill did cut the drain

    router.start()  # replays what the killed process journaled, in the background
    rows = wait_for_rows(router, answered)
    router.stop()
    missing = answered - rows
    assert not missing, f"{len(missing)} of {len(answered)} answered requests lost"
