"""No metric label takes a client-chosen value: made-up model names and request ids, by
the thousand, add no series to ``/metrics`` (each distinct value would be kept forever)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from router.config import Settings

N = 2000
MADE_UP_IDS = 200


def series(text: str) -> set[str]:
    """Every sample line's name and labels (the series), without its value."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and line[0] != "#"}


async def _flood(url: str) -> None:
    """N chat requests for made-up routes, thumbs on each refused request, and thumbs on
    made-up request ids; 20 at a time. Idle connections are dropped before uvicorn's
    keep-alive timeout (5 s) would close them under a request."""
    limit = asyncio.Semaphore(20)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with limit:
            r = await client.post(
                "/v1/chat/completions",
                json={"model": f"made-up-{i}", "messages": [{"role": "user", "content": "x"}]},
            )
            assert r.status_code == 404, r.text
            request_id = r.headers["x-request-id"]
            f = await client.post("/v1/feedback", json={"request_id": request_id, "value": "up"})
            assert f.status_code == 200, f.text
            if i < MADE_UP_IDS:
                missing = await client.post(
                    "/v1/feedback", json={"request_id": f"nope-{i}", "value": "down"}
                )
                assert missing.status_code == 404, missing.text

    limits = httpx.Limits(max_connections=20, keepalive_expiry=1)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(one(client, i) for i in range(N)))


def test_client_chosen_strings_add_no_series(
    make_settings: Callable[..., Settings], run_router: Any
) -> None:
    with run_router(make_settings()) as (server, _):
        ok = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
        )
        assert ok.status_code == 200
        httpx.post(f"{server.url}/v1/chat/completions", json={"model": "warm-up", "messages": []})
        first = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "warm-up", "messages": [{"role": "user", "content": "x"}]},
        )
        httpx.post(
            f"{server.url}/v1/feedback",
            json={"request_id": first.headers["x-request-id"], "value": "up"},
        )
        before = series(httpx.get(f"{server.url}/metrics").text)

        asyncio.run(_flood(server.url))

        after = series(httpx.get(f"{server.url}/metrics").text)
    assert after == before, sorted(after - before)[:10]
    assert not any("made-up" in s or "nope-" in s for s in after)
    assert any('route="unknown"' in s for s in after)
