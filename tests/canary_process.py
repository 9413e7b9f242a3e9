"""``canary serve`` as a real process (YAML config, its own data dir), and a steady load of
chat requests against it, for fault tests and the fault benchmark: killed, restarted
and read back like a deployment would be."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import create_engine, text

from tests.servers import free_port, wait_ready

JSON = {"content-type": "application/json"}


class CanaryProcess:
    """One router process; ``start`` again after ``kill`` reuses the port and data dir."""

    def __init__(self, config: dict[str, Any], data: Path, **env: str) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._config = data.parent / f"{data.name}.yaml"
        self._config.write_text(yaml.safe_dump(config))
        self._env = {**os.environ, "CANARY_DATA_DIR": str(data), "CANARY_LOG_FORMAT": "text"}
        self._env.update(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = data.parent / f"{data.name}.log"

    def start(self, timeout: float = 90) -> CanaryProcess:
        command = [sys.executable, "-m", "router.cli", "serve", "--port", str(self.port)]
        with self._log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, "--config", str(self._config)],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(self.url, timeout)
        return self

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM, then the exit code and the seconds it took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no shutdown, no drain."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the graceful path."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    @property
    def log(self) -> str:
        return self._log.read_text(errors="replace")

    def request_ids(self, database_url: str | None = None) -> set[str]:
        """Request ids in the inference table (the SQLite file unless given a URL)."""
        return {row["request_id"] for row in self.rows(database_url)}

    def rows(self, database_url: str | None = None) -> list[dict[str, Any]]:
        """Every inference row (from the SQLite file unless given a URL)."""
        engine = create_engine(database_url or f"sqlite:///{self.data / 'canary.db'}")
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
    process = CanaryProcess({"ui_enabled": False, **config}, tmp_path / "data", **(env or {}))
    try:
        yield process.start(timeout=120)
    finally:
        process.kill()


@dataclass
class Load:
    """Client threads sending chat requests until stopped; what each got back."""

    url: str
    threads: int = 4
    body: Callable[[int], dict[str, Any]] = field(
        default=lambda i: {
            "model": "chat",
            "user": f"u{i % 500}",
            "messages": [{"role": "user", "content": f"hello {i}"}],
        }
    )
    sent: int = 0
    statuses: Counter[int | str] = field(default_factory=Counter)
    answered: set[str] = field(default_factory=set)  # request ids of responses received
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, offset: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = offset
            while not self._stop.is_set():
                i += self.threads
                with self._lock:
                    self.sent += 1
                try:
                    # json.dumps escapes lone surrogates as \udXXX, as hostile clients send them
                    body = json.dumps(self.body(i)).encode()
                    r = client.post("/v1/chat/completions", content=body, headers=JSON)
                except httpx.HTTPError:
                    with self._lock:
                        self.statuses["no answer"] += 1
                    continue
                with self._lock:
                    self.statuses[r.status_code] += 1
                    if rid := r.headers.get("x-request-id"):
                        self.answered.add(rid)
                time.sleep(0.002)

    @contextmanager
    def running(self) -> Iterator[Load]:
        workers = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)
        ]
        for w in workers:
            w.start()
        try:
            yield self
        finally:
            self._stop.set()
            for w in workers:
                w.join()


class FakeEngineProcess:
    """The fake OpenAI-compatible engine (``router.backends.fake_server``) in a process of
    its own, so a test can SIGKILL it mid-load and start it again on the same port."""

    _CODE = (
        "import sys, json, uvicorn\n"
        "from router.backends import FakeSpec\n"
        "from router.backends.fake_server import create_fake_openai_app\n"
        "spec = FakeSpec(**json.loads(sys.argv[2]))\n"
        "uvicorn.run(create_fake_openai_app(spec), host='127.0.0.1', port=int(sys.argv[1]),"
        " log_level='warning')\n"
    )

    def __init__(self, **spec: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._spec = {"name": "engine", **spec}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> FakeEngineProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self._CODE, str(self.port), json.dumps(self._spec)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(f"{self.url}/v1/models", timeout=1)
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fake engine on {self.url} did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def spec(self, **extra: Any) -> dict[str, Any]:
        """The router's backend spec for this engine."""
        return {
            "backend": "openai",
            "name": self._spec["name"],
            "base_url": f"{self.url}/v1",
            "remote_model": "fake",
            **extra,
        }
