"""A real ``canary serve`` process with a YAML config, for tests that need signals, sockets
and the rows it leaves in its SQLite log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, text

from tests.servers import free_port, wait_ready


@dataclass
class CanaryProcess:
    """The process, its base URL, data dir and stderr file."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    data: Path
    stderr: Path

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM, then the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def rows(self) -> list[dict[str, Any]]:
        """Every inference row, read from the database once the process has exited."""
        engine = create_engine(f"sqlite:///{self.data / 'canary.db'}")
        try:
            with engine.connect() as conn:
                result = conn.execute(text("SELECT * FROM inference_log"))
                return [dict(row._mapping) for row in result]
        finally:
            engine.dispose()


@contextmanager
def canary_serve(
    tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> Iterator[CanaryProcess]:
    """``canary serve --config`` on a free port, ready; killed if a test leaves it running."""
    path = tmp_path / "canary.yaml"
    path.write_text(yaml.safe_dump({"ui_enabled": False, **config}))
    port, data, stderr = free_port(), tmp_path / "data", tmp_path / "stderr.log"
    environ = {
        **os.environ,
        "CANARY_DATA_DIR": str(data),
        "CANARY_LOG_FORMAT": "text",
        **(env or {}),
    }
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "router.cli",
                "serve",
                "--port",
                str(port),
                "--config",
                str(path),
            ],
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=err,  # a file, not a pipe: a chatty log must never block the server
        )
    process = CanaryProcess(proc, f"http://127.0.0.1:{port}", port, data, stderr)
    try:
        wait_ready(process.url, timeout=120)
        yield process
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
