"""Servers for the benchmarks, each in a process of its own.

Client, router and upstream engine must not share one interpreter (and so one GIL), or
the router's cost would be blurred by the client's. Each server is a spawned process
running uvicorn exactly as ``canary serve`` does (uvloop and httptools when installed,
no access log); ``stop`` sends SIGTERM, which uvicorn answers with a graceful shutdown
that runs the app's lifespan (the router flushes its inference log there).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx

#: Builds the ASGI app inside the child process; must be picklable (a module-level
#: function or a ``functools.partial`` of one).
AppBuilder = Callable[[], Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(build: AppBuilder, port: int, log_level: str) -> None:
    import uvicorn

    from router.logs import configure_logging

    configure_logging(log_level, "text")
    uvicorn.run(
        build(),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


class ServerProcess:
    """One uvicorn server in a spawned process, on a free loopback port."""

    def __init__(
        self, build: AppBuilder, *, log_level: str = "WARNING", port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited threads or models
        # daemon: never outlives the benchmark, even when it fails half-way
        self.process = ctx.Process(target=_serve, args=(build, self.port, log_level), daemon=True)

    def start(self, timeout_s: float = 180.0) -> ServerProcess:
        """Start and wait until it answers HTTP (uvicorn listens only after startup)."""
        self.process.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.is_alive():
                raise RuntimeError(f"server on {self.url} exited with {self.process.exitcode}")
            try:
                httpx.get(f"{self.url}/health/live", timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"server on {self.url} did not start within {timeout_s} s")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """Graceful shutdown (SIGTERM); returns the exit code."""
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        return self.process.exitcode

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system, all threads) the server has used; None off Linux."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # Fields 14 and 15 of proc(5), counted from after the command name.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
