"""Per-key rate limits: requests per minute (rpm) and tokens per minute (tpm).

Each API key has up to two limits, its own ``rpm``/``tpm`` or else the router's defaults
(``rate_limit_rpm``/``rate_limit_tpm``; None: unlimited). Before a client call made with a
key, ``check`` counts one request against the key's rpm and refuses the call with 429
(``RateLimited``, with Retry-After) when the key is over either limit. Tokens are known
only once a chat request has finished, so they are charged afterwards (``spend``: prompt
plus completion tokens); a key that has used up its tpm is refused from its next request
on, until enough of its tokens have slid out of the last minute.

Counting is done by the ``limits`` library with its **sliding window counter** strategy:
per key and limit, two counters (this minute's and the last minute's) and an estimate of
the last 60 s as ``last * share of it still inside the window + this``. Unlike a fixed
window it does not let a key spend two windows' worth across a minute boundary; unlike
the moving window (exact, but one stored entry per unit counted: per *token* for tpm, and
capped at the limit, so a response that overruns it could not be charged in full) it
costs two small counters per key and limit and one atomic Lua script per call in Redis.
A response larger than what was left is charged in full: the key stays refused until
that debt has slid out of the window.

Storage: with ``redis_url`` (``CANARY_REDIS_URL``) the counters live in Redis, under keys
``canary:{rate/<key id>/<rpm|tpm>}``, so every router replica shares them and a key's
limit holds across the whole fleet; without it they live in this process (each replica
would then allow the full limit by itself).

Fail open: a rate limiter that is down must not take the router down with it. When Redis
cannot be reached (or errs) the call goes through unlimited, a warning is logged at most
once every 30 s, nothing is counted as limited, and Redis is left alone for a few seconds
before it is tried again (so an outage costs at most one short timeout now and then, not
one per request).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NoReturn, TypeVar

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from router.auth.keys import KeyInfo
from router.errors import RateLimited
from router.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
Limit = Literal["rpm", "tpm"]

WINDOW_S = 60
#: At most one "rate limits not applied" warning this often.
WARN_EVERY_S = 30.0
#: After a storage failure, the storage is not tried again for this long (fail open fast).
PAUSE_S = 5.0
#: One Redis connect or command; a rate-limit check sits in front of every client call.
REDIS_TIMEOUT_S = 0.5
#: Token charges waiting to be written; past it, new ones are dropped (storage too slow).
MAX_PENDING = 10_000
# Tokens are charged with this "limit": a charge is never refused (so it can overrun the
# key's real tpm and leave a debt), while checks compare the same counters with the real one.
_NO_CAP = 2**40


class _PerMinute(RateLimitItemPerMinute):
    """A per-minute limit whose storage key leaves out the amount (the library's puts it
    in): checks (against the key's limit) and charges (uncapped) count in one window, and
    a key's count survives a change of its limit."""

    def __init__(self, amount: int) -> None:
        super().__init__(amount, namespace="rate")

    def key_for(self, *identifiers: bytes | str | int | float) -> str:
        return "/".join([self.namespace, *(str(i) for i in identifiers)])


def seconds_until_room(
    previous: int,
    previous_ttl: float,
    current: int,
    current_ttl: float,
    limit: int,
    window: float = WINDOW_S,
) -> float:
    """Seconds until a sliding window's weighted count ``previous * previous_ttl / window
    + current`` drops below ``limit`` (room for one more unit), if nothing more is counted.

    ``*_ttl`` are the two counters' times to live as the ``limits`` storages report them:
    the current window turns into the previous one when its ttl reaches ``window``.
    (The library's own reset time is when the count drops by *one*: right for a request
    just over its rpm, far too early for a key that spent many tokens over its tpm.)
    """
    shift = max(0.0, current_ttl - window)  # when this window becomes the previous one
    if current < limit:  # the previous window's share has to decay below limit - current
        if previous <= 0:
            return 0.0
        return max(0.0, min(shift, previous_ttl - window * (limit - current) / previous))
    # Not before the shift; then ``current`` weighs in as the previous window, decaying.
    return shift + window * (1 - limit / current)


class RateLimiter:
    """Per-key rpm and tpm limits, in Redis (shared by replicas) or in this process."""

    def __init__(
        self,
        *,
        redis_url: str | None,
        default_rpm: int | None,
        default_tpm: int | None,
        metrics: Metrics,
        namespace: str = "canary",
    ) -> None:
        self.default_rpm = default_rpm
        self.default_tpm = default_tpm
        self._metrics = metrics
        self.shared = redis_url is not None
        self._pool: Any = None
        storage: MemoryStorage | RedisStorage
        if redis_url is None:
            storage = MemoryStorage()
        else:
            storage, self._pool = _redis_storage(redis_url, namespace)
        self._storage = storage
        self._window = SlidingWindowCounterRateLimiter(storage)
        self._tpm: dict[str, int] = {}  # key id -> tpm applied at its last check
        self._pending: set[asyncio.Task[None]] = set()
        self._paused_until = 0.0
        self._warned_at = float("-inf")

    # -- requests ------------------------------------------------------------------------

    async def check(self, key: KeyInfo) -> None:
        """Count one request of ``key``; 429 (``RateLimited``) when it is over its rpm or
        has used up its tpm. Lets the request through if the storage is unreachable."""
        rpm = key.rpm or self.default_rpm
        tpm = key.tpm or self.default_tpm
        if tpm:
            self._tpm[key.id] = tpm
            self._metrics.key_limit.labels(key.id, "tpm").set(tpm)
            # Tested first, without counting: a request refused for its tokens must not
            # also use up one of its requests.
            item = _PerMinute(tpm)
            room = await self._guard(lambda: self._window.test(item, key.id, "tpm"))
            if room is False:
                await self._refuse(key, "tpm", tpm, "tokens")
        else:
            self._tpm.pop(key.id, None)
        if rpm:
            self._metrics.key_limit.labels(key.id, "rpm").set(rpm)
            item = _PerMinute(rpm)
            allowed = await self._guard(lambda: self._window.hit(item, key.id, "rpm"))
            if allowed is False:
                await self._refuse(key, "rpm", rpm, "requests")

    async def _refuse(self, key: KeyInfo, limit: Limit, amount: int, unit: str) -> NoReturn:
        self._metrics.rate_limited.labels(key.id, limit).inc()
        stats = await self._guard(
            lambda: self._storage.get_sliding_window(
                _PerMinute(amount).key_for(key.id, limit), WINDOW_S
            )
        )
        wait = seconds_until_room(*stats, limit=amount) if stats is not None else WINDOW_S
        retry_after_s = max(1, math.ceil(wait))
        raise RateLimited(
            f"API key {key.id} ({key.name}) is over its limit of {amount} {unit} per minute "
            f"({limit}); retry in {retry_after_s} s.",
            retry_after_s=retry_after_s,
        )

    # -- tokens --------------------------------------------------------------------------

    def spend(self, key_id: str, tokens: int) -> None:
        """Charge ``tokens`` (prompt + completion) to the key's tpm window, in the
        background: never blocks, never raises. A key without a tpm (at its last check)
        is not charged."""
        tpm = self._tpm.get(key_id)
        if not tpm or tokens <= 0 or self._paused():
            return
        if len(self._pending) >= MAX_PENDING:
            self._warn("too many token charges waiting for the rate-limit storage; dropped one")
            return
        try:
            task = asyncio.get_running_loop().create_task(self._charge(key_id, tokens))
        except RuntimeError:  # no event loop: nothing can be written from here
            log.debug("no event loop to charge %s tokens to %s", tokens, key_id)
            return
        self._pending.add(task)  # a task nobody references may be garbage collected
        task.add_done_callback(self._pending.discard)

    async def _charge(self, key_id: str, tokens: int) -> None:
        item = _PerMinute(_NO_CAP)
        await self._guard(lambda: self._window.hit(item, key_id, "tpm", cost=tokens))

    async def flush(self) -> None:
        """Wait until every token charge made so far is written."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def aclose(self) -> None:
        """Write the charges still waiting, then close the Redis connections."""
        await self.flush()
        if self._pool is not None:
            await self._pool.aclose()

    # -- failing open --------------------------------------------------------------------

    def _paused(self) -> bool:
        return time.monotonic() < self._paused_until

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """``call()``'s result, or None (no limit applied) when the storage fails."""
        if self._paused():
            return None
        try:
            return await call()
        except Exception as exc:
            self._paused_until = time.monotonic() + PAUSE_S
            self._warn(
                f"rate limits are not applied for now: the rate-limit storage failed "
                f"({type(exc).__name__}: {exc}); requests go through unlimited"
            )
            return None

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(message)


def _redis_storage(url: str, namespace: str) -> tuple[RedisStorage, Any]:
    """The ``limits`` Redis storage on redis-py's asyncio client (``implementation=
    "redispy"``; the library's default would be coredis), with short timeouts and its
    connection pool (ours to close)."""
    from redis.asyncio import ConnectionPool
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    pool = ConnectionPool.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        # One retry at once, on a dropped connection only (a pooled connection that a
        # Redis restart closed); never a wait with backoff in front of a request.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    # The URI only tells the storage which server it talks to (Redis, not Valkey): the
    # connections come from the pool.
    scheme, _, rest = url.partition("://")
    uri = f"async+{'redis+unix' if scheme == 'unix' else scheme}://{rest}"
    storage = RedisStorage(
        uri,
        implementation="redispy",
        key_prefix=namespace,
        connection_pool=pool,  # type: ignore[arg-type]
    )
    return storage, pool
