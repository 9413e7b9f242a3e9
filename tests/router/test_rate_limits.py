"""Per-key rate limits (``router.auth.limits.RateLimiter``), in this process and in the real
Redis at 127.0.0.1:6379: rpm, tpm charged after the fact, limits shared by replicas,
failing open when Redis is down or hangs, and the metrics. Each test counts under a
namespace of its own in Redis and deletes only its own keys afterwards."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio

from router.auth import limits
from router.auth.keys import KeyInfo
from router.auth.limits import RateLimiter, seconds_until_room
from router.errors import RateLimited
from router.metrics import Metrics
from tests.tcp_proxy import TcpProxy

REDIS_URL = "redis://127.0.0.1:6379/0"
BACKENDS = ["memory", "redis"]


def key(rpm: int | None = None, tpm: int | None = None) -> KeyInfo:
    return KeyInfo(
        id=f"key_{uuid.uuid4().hex[:12]}",
        name="test",
        routes=None,
        rpm=rpm,
        tpm=tpm,
        revoked=False,
    )


def sample(metrics: Metrics, name: str, k: KeyInfo, limit: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"key": k.id, "limit": limit})


@pytest.fixture
def namespace() -> str:
    return f"canary-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def own_keys(namespace: str) -> AsyncIterator[None]:
    """Deletes this test's keys (and only those) from the shared Redis afterwards."""
    yield
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        async for name in client.scan_iter(match=f"{namespace}:*"):
            await client.delete(name)
    finally:
        await client.aclose()


@asynccontextmanager
async def limiter(
    backend: str,
    namespace: str,
    *,
    metrics: Metrics | None = None,
    default_rpm: int | None = None,
    default_tpm: int | None = None,
    redis_url: str = REDIS_URL,
) -> AsyncIterator[RateLimiter]:
    made = RateLimiter(
        redis_url=redis_url if backend == "redis" else None,
        default_rpm=default_rpm,
        default_tpm=default_tpm,
        metrics=metrics or Metrics(),
        namespace=namespace,
    )
    try:
        yield made
    finally:
        await made.aclose()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def not_at_a_minute_boundary() -> None:
    """The in-process storage's windows are whole minutes of the clock: at the turn of one,
    this minute's count starts sliding out, and a key just refused has room again an
    instant later. A test that refuses a key right after filling it starts well before
    that turn (Redis windows start at a key's first request, so this is for memory)."""
    left = 60 - time.time() % 60
    if left < 2:
        time.sleep(left + 0.05)


pytestmark = pytest.mark.usefixtures("own_keys", "not_at_a_minute_boundary")


# -- requests per minute ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_rpm_refuses_the_request_past_the_limit(backend: str, namespace: str) -> None:
    metrics = Metrics()
    k = key(rpm=5)
    async with limiter(backend, namespace, metrics=metrics) as rl:
        for _ in range(5):
            await rl.check(k)
        with pytest.raises(RateLimited) as refused:
            await rl.check(k)
    exc = refused.value
    assert exc.status_code == 429
    assert 1 <= exc.retry_after_s <= 60
    assert exc.headers == {"retry-after": str(exc.retry_after_s)}
    assert "5 requests per minute" in exc.message
    assert f"retry in {exc.retry_after_s} s" in exc.message
    assert exc.body()["error"]["code"] == "rate_limit_exceeded"
    assert sample(metrics, "canary_rate_limited_total", k, "rpm") == 1
    assert sample(metrics, "canary_rate_limited_total", k, "tpm") is None
    assert sample(metrics, "canary_key_limit", k, "rpm") == 5


@pytest.mark.parametrize("backend", BACKENDS)
async def test_each_key_has_its_own_count(backend: str, namespace: str) -> None:
    first, second = key(rpm=2), key(rpm=2)
    async with limiter(backend, namespace) as rl:
        await rl.check(first)
        await rl.check(first)
        with pytest.raises(RateLimited):
            await rl.check(first)
        await rl.check(second)  # untouched by the first key's requests
        await rl.check(second)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_refused_requests_are_not_counted(backend: str, namespace: str) -> None:
    metrics = Metrics()
    k = key(rpm=1)
    async with limiter(backend, namespace, metrics=metrics) as rl:
        await rl.check(k)
        for _ in range(3):
            with pytest.raises(RateLimited):
                await rl.check(k)
    assert sample(metrics, "canary_rate_limited_total", k, "rpm") == 3


async def test_defaults_apply_to_keys_without_their_own(namespace: str) -> None:
    metrics = Metrics()
    plain, own, unlimited_default = key(), key(rpm=3), key()
    async with limiter("memory", namespace, metrics=metrics, default_rpm=2) as rl:
        await rl.check(plain)
        await rl.check(plain)
        with pytest.raises(RateLimited):
            await rl.check(plain)
        for _ in range(3):  # its own limit wins over the default
            await rl.check(own)
        with pytest.raises(RateLimited):
            await rl.check(own)
    assert sample(metrics, "canary_key_limit", plain, "rpm") == 2
    assert sample(metrics, "canary_key_limit", own, "rpm") == 3
    async with limiter("memory", namespace, metrics=metrics) as rl:
        for _ in range(100):  # no limit of its own and no default: unlimited
            await rl.check(unlimited_default)
    assert sample(metrics, "canary_key_limit", unlimited_default, "rpm") is None


# -- tokens per minute --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_tpm_refuses_once_the_tokens_are_spent(backend: str, namespace: str) -> None:
    metrics = Metrics()
    k = key(tpm=50)
    async with limiter(backend, namespace, metrics=metrics) as rl:
        await rl.check(k)
        rl.spend(k.id, 100)  # more than the whole limit: charged in full all the same
        await rl.flush()
        with pytest.raises(RateLimited) as refused:
            await rl.check(k)
    exc = refused.value
    assert "50 tokens per minute (tpm)" in exc.message
    # 100 tokens against 50 a minute: half of them must slide out of the window, which
    # ends within a minute; never earlier than one second.
    assert 1 <= exc.retry_after_s <= 90
    assert sample(metrics, "canary_rate_limited_total", k, "tpm") == 1
    assert sample(metrics, "canary_rate_limited_total", k, "rpm") is None
    assert sample(metrics, "canary_key_limit", k, "tpm") == 50


@pytest.mark.parametrize("backend", BACKENDS)
async def test_tokens_add_up_to_the_limit(backend: str, namespace: str) -> None:
    k = key(tpm=100)
    async with limiter(backend, namespace) as rl:
        await rl.check(k)
        rl.spend(k.id, 60)
        await rl.flush()
        await rl.check(k)  # 40 left
        rl.spend(k.id, 39)
        await rl.flush()
        await rl.check(k)  # 1 left
        rl.spend(k.id, 1)
        await rl.flush()
        with pytest.raises(RateLimited):
            await rl.check(k)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_token_refusal_does_not_use_up_a_request(backend: str, namespace: str) -> None:
    k = key(rpm=2, tpm=10)
    async with limiter(backend, namespace) as rl:
        await rl.check(k)
        rl.spend(k.id, 10)
        await rl.flush()
        for _ in range(3):
            with pytest.raises(RateLimited, match="tpm"):
                await rl.check(k)
        # Only one of the two requests was counted: the rpm window still has room.
        assert await rl._window.test(limits._PerMinute(2), k.id, "rpm")


async def test_keys_without_a_tpm_are_not_charged(namespace: str) -> None:
    no_tpm, default_tpm, unseen = key(), key(), key(tpm=10)
    async with limiter("memory", namespace) as rl:
        await rl.check(no_tpm)
        rl.spend(no_tpm.id, 1_000)
        rl.spend(unseen.id, 1_000)  # never checked here: its tpm is not known
        assert not rl._pending
        await rl.check(no_tpm)
        await rl.check(unseen)
    async with limiter("memory", namespace, default_tpm=5) as rl:
        await rl.check(default_tpm)
        rl.spend(default_tpm.id, 0)
        rl.spend(default_tpm.id, 5)
        await rl.flush()
        with pytest.raises(RateLimited, match="5 tokens per minute"):
            await rl.check(default_tpm)


async def test_spend_never_blocks_the_caller(namespace: str) -> None:
    """Charging tokens in Redis is a task of its own: ``spend`` returns at once."""
    k = key(tpm=1_000)
    async with limiter("redis", namespace) as rl:
        await rl.check(k)
        started = time.perf_counter()
        for _ in range(50):
            rl.spend(k.id, 10)
        assert time.perf_counter() - started < 0.2
        assert rl._pending  # not written yet: nothing was awaited
        await rl.flush()
        assert not rl._pending
        await rl.check(k)  # 500 of 1000 used
        for _ in range(50):
            rl.spend(k.id, 10)
    # aclose wrote the charges still waiting
    async with limiter("redis", namespace) as other:
        with pytest.raises(RateLimited):
            await other.check(k)


# -- shared by replicas -------------------------------------------------------------------


async def test_replicas_sharing_redis_share_the_counts(namespace: str) -> None:
    a_metrics, b_metrics = Metrics(), Metrics()
    requests, tokens = key(rpm=4), key(tpm=30)
    async with (
        limiter("redis", namespace, metrics=a_metrics) as a,
        limiter("redis", namespace, metrics=b_metrics) as b,
    ):
        await a.check(requests)
        await b.check(requests)
        await a.check(requests)
        await b.check(requests)
        with pytest.raises(RateLimited):
            await a.check(requests)
        with pytest.raises(RateLimited):
            await b.check(requests)

        await a.check(tokens)
        await b.check(tokens)
        a.spend(tokens.id, 20)
        b.spend(tokens.id, 10)
        await a.flush()
        await b.flush()
        with pytest.raises(RateLimited, match="tpm"):
            await a.check(tokens)
        with pytest.raises(RateLimited, match="tpm"):
            await b.check(tokens)
    # Each replica counts the refusals it made itself.
    assert sample(a_metrics, "canary_rate_limited_total", requests, "rpm") == 1
    assert sample(b_metrics, "canary_rate_limited_total", requests, "rpm") == 1


async def test_processes_without_redis_count_alone(namespace: str) -> None:
    k = key(rpm=1)
    async with limiter("memory", namespace) as a, limiter("memory", namespace) as b:
        await a.check(k)
        await b.check(k)  # another process's memory: its own count
        with pytest.raises(RateLimited):
            await a.check(k)


async def test_redis_keys_are_namespaced(namespace: str) -> None:
    k = key(rpm=3)
    async with limiter("redis", namespace) as rl:
        await rl.check(k)
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        names = [n.decode() async for n in client.scan_iter(match=f"*{k.id}*")]
    finally:
        await client.aclose()
    assert names == [f"{namespace}:{{rate/{k.id}/rpm}}"]


# -- failing open -------------------------------------------------------------------------


async def test_redis_down_lets_requests_through(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    k = key(rpm=1, tpm=1)
    url = f"redis://127.0.0.1:{closed_port()}/0"
    with caplog.at_level(logging.WARNING, logger="router.auth.limits"):
        async with limiter("redis", namespace, metrics=metrics, redis_url=url) as rl:
            for _ in range(5):
                await rl.check(k)
                rl.spend(k.id, 100)
            await rl.flush()
    warnings = [r for r in caplog.records if r.name == "router.auth.limits"]
    assert len(warnings) == 1  # at most one every 30 s
    assert "not applied" in warnings[0].getMessage()
    assert sample(metrics, "canary_rate_limited_total", k, "rpm") is None
    assert sample(metrics, "canary_rate_limited_total", k, "tpm") is None


async def test_limits_come_back_with_redis(namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis goes away (connections reset) and comes back: the router fails open while it
    is gone, and counts again once it is back (after ``PAUSE_S``)."""
    monkeypatch.setattr(limits, "PAUSE_S", 0.0)
    k = key(rpm=2)
    with TcpProxy(6379) as proxy:
        async with limiter("redis", namespace, redis_url=proxy.url_for(REDIS_URL)) as rl:
            await rl.check(k)
            await rl.check(k)
            with pytest.raises(RateLimited):
                await rl.check(k)
            proxy.pause()
            for _ in range(3):
                await rl.check(k)  # not refused: fail open
            proxy.resume()
            with pytest.raises(RateLimited):  # the two requests counted before are there
                await rl.check(k)


async def test_a_hung_redis_costs_one_short_timeout(namespace: str) -> None:
    """Redis accepts connections and never answers: the first check waits for the
    timeout, the next ones skip Redis for ``PAUSE_S`` instead of each waiting."""
    k = key(rpm=1)
    with TcpProxy(6379) as proxy:
        proxy.blackhole()
        async with limiter("redis", namespace, redis_url=proxy.url_for(REDIS_URL)) as rl:
            started = time.perf_counter()
            await rl.check(k)
            assert time.perf_counter() - started < limits.REDIS_TIMEOUT_S * 2 + 1
            started = time.perf_counter()
            for _ in range(20):
                await rl.check(k)
            assert time.perf_counter() - started < 0.1


# -- Retry-After --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "limit", "expected"),
    [
        # Nothing counted: room now.
        ((0, 0.0, 0, 0.0), 5, 0.0),
        # This minute holds 5 of 5, ending in 20 s: room as soon as those 5 become the
        # previous window's and start sliding out.
        ((0, 0.0, 5, 80.0), 5, 20.0),
        # 60 of 50 this minute, ending in 30 s: at least 10 must slide out afterwards.
        ((0, 0.0, 60, 90.0), 50, 30.0 + 10.0),
        # Last minute 10, 30 s of it still in the window (weight 5), this minute 3 of
        # limit 5: room when the previous share drops below 2, i.e. at its ttl 12 s.
        ((10, 30.0, 3, 90.0), 5, 18.0),
        # Room already: previous share 10 * 6/60 = 1, plus 3 < 5.
        ((10, 6.0, 3, 66.0), 5, 0.0),
    ],
)
def test_seconds_until_room(
    window: tuple[int, float, int, float], limit: int, expected: float
) -> None:
    assert seconds_until_room(*window, limit=limit) == pytest.approx(expected)
