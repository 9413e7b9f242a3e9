"""Graceful shutdown of a real ``canary serve``: SIGTERM with streams and whole answers
still running. Nothing is lost: every client hears how its request ended, every request
leaves a row, and the process exits 0 soon after the grace."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from tests.canary_process import CanaryProcess, canary_serve

GRACE_S = 3
LONG, SHORT, WHOLE = 50, 5, 3


def _route(text: str, **fake: Any) -> dict[str, Any]:
    return {"champion": {"backend": "fake", "name": "m", "version": "1", "text": text, **fake}}


CONFIG = {
    "shutdown_grace_s": GRACE_S,
    "routes": {
        # 400 words at 20 words/s: 20 s, far past the grace.
        "long": _route(" ".join(["word"] * 400), tokens_per_s=20),
        # 6 words at 10 words/s: done well within the grace.
        "short": _route("one two three four five six", tokens_per_s=10),
        # A whole answer that takes a minute.
        "whole": _route("late", latency_ms=60_000),
    },
}


async def _stream(client: httpx.AsyncClient, route: str, started: asyncio.Event) -> list[str]:
    """The ``data:`` payloads one streaming client receives, to the end of the response."""
    body = {"model": route, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    events: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                started.set()
    return events


async def _whole(client: httpx.AsyncClient) -> httpx.Response:
    body = {"model": "whole", "messages": [{"role": "user", "content": "hi"}]}
    return await client.post("/v1/chat/completions", json=body)


async def _sigterm_under_load(server: CanaryProcess) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
        flags = [asyncio.Event() for _ in range(LONG + SHORT)]
        routes = ["long"] * LONG + ["short"] * SHORT
        streams = [
            asyncio.create_task(_stream(client, route, flag))
            for route, flag in zip(routes, flags, strict=True)
        ]
        wholes = [asyncio.create_task(_whole(client)) for _ in range(WHOLE)]
        async with asyncio.timeout(60):  # every stream has its first event
            await asyncio.gather(*(f.wait() for f in flags))
        await asyncio.sleep(0.2)  # the whole answers are in the model too
        exit_code, exit_s = await asyncio.to_thread(server.terminate, GRACE_S + 30)
        return {
            "exit_code": exit_code,
            "exit_s": exit_s,
            "streams": await asyncio.gather(*streams, return_exceptions=True),
            "wholes": await asyncio.gather(*wholes, return_exceptions=True),
        }


def test_sigterm_lets_short_streams_finish_and_ends_the_rest_with_an_error_event(
    tmp_path: Path,
) -> None:
    with canary_serve(tmp_path, CONFIG) as server:
        seen = asyncio.run(_sigterm_under_load(server))

        assert seen["exit_code"] == 0, server.log
        assert seen["exit_s"] < GRACE_S + 10  # generous: 2 shared cores
        assert "Application shutdown failed" not in server.log
        assert "inference log flushed" in server.log

        streams: list[list[str] | BaseException] = seen["streams"]
        errors = [s for s in streams if isinstance(s, BaseException)]
        assert not errors, errors
        long, short = streams[:LONG], streams[LONG:]
        for events in short:
            assert isinstance(events, list) and events[-1] == "[DONE]"
        for events in long:
            assert isinstance(events, list)
            assert "[DONE]" not in events
            last = json.loads(events[-1])
            assert last == {
                "error": {
                    "message": last["error"]["message"],
                    "type": "server_error",
                    "code": "server_shutting_down",
                    "param": None,
                }
            }
            # Only the final event is the error; the ones before it were chunks.
            assert all("choices" in json.loads(e) for e in events[:-1])
        for r in seen["wholes"]:
            assert isinstance(r, httpx.Response), r
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "server_shutting_down"

        rows = server.rows()
        by_route: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_route.setdefault(row["route"], []).append(row)
        assert len(rows) == LONG + SHORT + WHOLE
        assert {(r["status"], r["http_status"]) for r in by_route["long"]} == {("shutdown", 503)}
        assert len(by_route["long"]) == LONG
        assert all(r["response_text"].startswith("word") for r in by_route["long"])
        assert {(r["status"], r["http_status"]) for r in by_route["short"]} == {("ok", 200)}
        assert [r["response_text"] for r in by_route["short"]] == [
            "one two three four five six"
        ] * SHORT
        assert {(r["status"], r["http_status"]) for r in by_route["whole"]} == {("shutdown", 503)}
        assert len(by_route["whole"]) == WHOLE


def test_sigterm_stops_accepting_at_once(tmp_path: Path) -> None:
    with canary_serve(tmp_path, CONFIG) as server:
        limits = httpx.Limits(max_keepalive_connections=0)  # a fresh connection each call
        with httpx.Client(base_url=server.url, timeout=30, limits=limits) as client:
            body = {"model": "long", "stream": True, "messages": [{"role": "user", "content": "x"}]}
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                lines = r.iter_lines()
                next(lines)  # a stream is open, so the server waits for it
                server.proc.send_signal(signal.SIGTERM)
                refused = False
                for _ in range(100):  # within 10 s: usually at the next 0.1 s tick
                    try:
                        client.get("/health/live")
                    except httpx.ConnectError:
                        refused = True
                        break
                    time.sleep(0.1)
                assert refused
                tail = [line for line in lines if line.startswith("data: ")]
            assert "server_shutting_down" in tail[-1]
        assert server.proc.wait(timeout=GRACE_S + 30) == 0
