"""Real ``canary serve`` processes: YAML config, stickiness across replicas, SIGTERM flush."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text

from tests.servers import free_port, wait_ready

CONFIG = {
    "routes": {
        "chat": {
            "champion": {"backend": "fake", "name": "a", "version": "1", "mode": "echo"},
            "challenger": {"backend": "fake", "name": "b", "version": "2"},
            "challenger_weight": 30,
        }
    },
    "log_flush_interval_s": 3600,  # rows reach the database only through the shutdown drain
    "log_batch_size": 100000,
}


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], str, Path]]]:
    config = tmp_path / "canary.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    procs = []
    for i in range(2):
        port, data = free_port(), tmp_path / f"data{i}"
        env = {**os.environ, "CANARY_DATA_DIR": str(data), "CANARY_LOG_FORMAT": "text"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "router.cli",
                "serve",
                "--port",
                str(port),
                "--config",
                str(config),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append((proc, f"http://127.0.0.1:{port}", data))
    try:
        for _, url, _ in procs:
            wait_ready(url)
        yield procs
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()


def test_same_unit_same_arm_in_every_process_and_sigterm_flushes(
    replicas: list[tuple[subprocess.Popen[bytes], str, Path]],
) -> None:
    seen: dict[str, set[str]] = {}
    for i in range(60):
        for _, url, _ in replicas:
            r = httpx.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "chat",
                    "user": f"unit-{i}",
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            assert r.status_code == 200
            seen.setdefault(f"unit-{i}", set()).add(r.headers["x-canary-arm"])
    assert all(len(arms) == 1 for arms in seen.values())
    challenger = sum(arms == {"challenger"} for arms in seen.values())
    assert 5 <= challenger <= 35  # 30% of 60 units, loosely

    for proc, _, data in replicas:
        proc.send_signal(signal.SIGTERM)
        # A complete graceful shutdown exits 0 (router.server), not "killed by SIGTERM".
        assert proc.wait(timeout=30) == 0
        assert b"inference log flushed" in (proc.stderr.read() if proc.stderr else b"")
        engine = create_engine(f"sqlite:///{data / 'canary.db'}")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM inference_log")).scalar_one() == 60
        engine.dispose()
