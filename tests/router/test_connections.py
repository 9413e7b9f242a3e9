"""Connection hygiene of a real ``canary serve``: slow-loris connections are closed at
``header_timeout_s``, idle keep-alive connections outlive client pools, and a busy client
pool sees no connection errors and leaves one row per request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.header_timeout import HeaderDeadline, protocol_class
from tests.canary_process import CanaryProcess, canary_serve
from tests.servers import serve

CONFIG: dict[str, Any] = {
    "routes": {"chat": {"champion": {"backend": "fake", "name": "m", "version": "1"}}},
}
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
PARTIAL = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"  # no blank line: never done


async def _loris(port: int, drip: bool) -> tuple[float, bytes]:
    """Send half a request (and with ``drip`` a header line every 0.2 s); the seconds the
    server kept the connection and what it sent back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(PARTIAL)
    received = b""

    async def dripping() -> None:
        for i in range(1000):
            await asyncio.sleep(0.2)
            writer.write(b"X-Drip-%d: y\r\n" % i)

    dripper = asyncio.create_task(dripping()) if drip else None
    try:
        async with asyncio.timeout(60):
            while chunk := await reader.read(4096):
                received += chunk
    except ConnectionResetError:
        pass
    finally:
        if dripper is not None:
            dripper.cancel()
        writer.close()
    return time.monotonic() - started, received


async def _slow_loris(server: CanaryProcess, n: int) -> dict[str, Any]:
    lorises = [asyncio.create_task(_loris(server.port, drip=i % 2 == 0)) for i in range(n)]
    silent = asyncio.create_task(asyncio.open_connection("127.0.0.1", server.port))
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        served = [
            (await client.post("/v1/chat/completions", json=BODY)).status_code for _ in range(10)
        ]
    reader, writer = await silent  # connected, sends nothing at all
    async with asyncio.timeout(60):
        silent_eof = await reader.read()
    writer.close()
    return {"lorises": await asyncio.gather(*lorises), "served": served, "silent": silent_eof}


def test_slow_loris_connections_are_closed_at_the_header_timeout(tmp_path: Path) -> None:
    with canary_serve(tmp_path, {**CONFIG, "header_timeout_s": 1}) as server:
        seen = asyncio.run(_slow_loris(server, 100))
        assert seen["served"] == [200] * 10  # normal requests go on meanwhile
        lifetimes = [t for t, _ in seen["lorises"]]
        # Not before the timeout; well before the 60 s the clients would wait.
        assert min(lifetimes) >= 0.9
        assert max(lifetimes) < 15, max(lifetimes)  # generous: 2 shared cores
        assert all(b" 408 " in answer for _, answer in seen["lorises"])
        assert b" 408 " in seen["silent"]
        metrics = httpx.get(f"{server.url}/metrics").text
        closed = [
            line
            for line in metrics.splitlines()
            if line.startswith('canary_connections_closed_total{reason="header_timeout"}')
        ]
        assert closed and float(closed[0].split()[-1]) >= 101


def test_an_idle_keep_alive_connection_outlives_client_pools(tmp_path: Path) -> None:
    with canary_serve(tmp_path, CONFIG) as server:
        limits = httpx.Limits(keepalive_expiry=60)  # the client keeps it longer than usual
        with httpx.Client(base_url=server.url, timeout=30, limits=limits) as client:
            ports, codes = [], []
            for pause in (0, 6):  # past uvicorn's default 5 s keep-alive
                time.sleep(pause)
                r = client.post("/v1/chat/completions", json=BODY)
                codes.append(r.status_code)
                sock = r.extensions["network_stream"].get_extra_info("socket")
                ports.append(sock.getsockname()[1])
        assert codes == [200, 200]
        assert ports[0] == ports[1]  # the same connection carried both


async def _load(url: str, *, bursts: int, per_burst: int, concurrency: int) -> list[str]:
    """Bursts of requests at ``concurrency`` through one default httpx pool, with pauses
    as long as the pool's keep-alive between them; the failures."""
    failures: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for burst in range(bursts):
            if burst:
                await asyncio.sleep(5.0)  # idle connections reach the 5 s pool expiry

            async def worker(queue: Iterator[int]) -> None:
                for _ in queue:
                    try:
                        r = await client.post("/v1/chat/completions", json=BODY)
                        if r.status_code != 200:
                            failures.append(f"HTTP {r.status_code}")
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))

            queue = iter(range(per_burst))
            await asyncio.gather(*(worker(queue) for _ in range(concurrency)))
    return failures


def test_a_busy_client_pool_sees_no_connection_errors(tmp_path: Path) -> None:
    with canary_serve(tmp_path, CONFIG, env={"CANARY_LOG_LEVEL": "WARNING"}) as server:
        failures = asyncio.run(_load(server.url, bursts=3, per_burst=1000, concurrency=32))
        assert failures == []
        code, _ = server.terminate(60)
        assert code == 0
        assert len(server.rows()) == 3000


async def _tiny_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_both_protocols_keep_the_header_deadline(http: str) -> None:
    closed: list[int] = []
    deadline = HeaderDeadline(0.5, lambda: closed.append(1))
    with serve(_tiny_app, http=protocol_class(deadline, http=http), lifespan="off") as server:
        assert httpx.get(server.url).text == "ok"
        elapsed, answer = asyncio.run(_loris(server.port, drip=True))
    assert 0.4 <= elapsed < 10
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert closed == [1]
