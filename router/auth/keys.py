"""Client API keys: made, listed and revoked by an admin; looked up on every request.

A key is ``sk-canary-`` + 43 random URL-safe characters (256 bits). It is shown once,
when made; the database keeps its SHA-256 (``key_hash``), its first characters to tell
it apart, its name, allowed routes and limits. ``KeyRing`` keeps every key in memory,
re-read every ``keys_refresh_s``, so a request costs one hash and one dict lookup and
keeps working while the database is down; a key made on another replica is found by one
read on its first use, a revocation anywhere applies within one refresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update
from starlette.concurrency import run_in_threadpool

from router.auth.models import ApiKey
from router.inference_log.models import utcnow

log = logging.getLogger(__name__)

KEYS = ApiKey.__table__  # type: ignore[attr-defined]
PREFIX = "sk-canary-"
#: How many unknown hashes are remembered as unknown (a client retrying a wrong key
#: costs no database read until the next refresh).
_UNKNOWN_MAX = 10_000


def hash_key(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What a request needs to know about its key (never the key itself)."""

    id: str
    name: str
    routes: frozenset[str] | None
    rpm: int | None
    tpm: int | None
    revoked: bool

    @classmethod
    def of(cls, row: Any) -> KeyInfo:
        routes = row["routes"]
        return cls(
            id=row["id"],
            name=row["name"],
            routes=frozenset(routes) if routes is not None else None,
            rpm=row["rpm"],
            tpm=row["tpm"],
            revoked=row["revoked_at"] is not None,
        )


def public(row: Any) -> dict[str, Any]:
    """A key's row as the API shows it: everything but the hash."""
    return {c.name: row[c.name] for c in KEYS.c if c.name != "key_hash"}


def create_key(
    engine: Engine,
    *,
    name: str,
    routes: list[str] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """A new key: the key itself (show it once) and its stored row."""
    key = PREFIX + secrets.token_urlsafe(32)
    row = {
        "id": f"key_{secrets.token_hex(6)}",
        "name": name,
        "key_hash": hash_key(key),
        "key_prefix": key[: len(PREFIX) + 4],
        "created_at": utcnow(),
        "routes": routes,
        "rpm": rpm,
        "tpm": tpm,
    }
    with engine.begin() as conn:
        stored = conn.execute(KEYS.insert().values(**row).returning(*KEYS.c)).mappings().one()
    return key, public(stored)


def list_keys(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(KEYS).order_by(KEYS.c.created_at)).mappings()
        return [public(r) for r in rows]


def revoke_key(engine: Engine, *, key_id: str) -> dict[str, Any] | None:
    """Revoke a key (idempotent: the first revocation's time stays); None if unknown."""
    with engine.begin() as conn:
        conn.execute(
            update(KEYS)
            .where(KEYS.c.id == key_id, KEYS.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        row = conn.execute(select(KEYS).where(KEYS.c.id == key_id)).mappings().first()
    return public(row) if row is not None else None


def _load(engine: Engine, key_hash: str | None = None) -> dict[str, KeyInfo]:
    stmt = select(KEYS)
    if key_hash is not None:
        stmt = stmt.where(KEYS.c.key_hash == key_hash)
    with engine.connect() as conn:
        return {r["key_hash"]: KeyInfo.of(r) for r in conn.execute(stmt).mappings()}


def _touch(engine: Engine, used: dict[str, datetime]) -> None:
    with engine.begin() as conn:
        for key_id, at in used.items():
            conn.execute(update(KEYS).where(KEYS.c.id == key_id).values(last_used_at=at))


class KeyRing:
    """Every key, by hash, in memory; refreshed in the background (``run``)."""

    def __init__(self, engine: Engine, *, refresh_s: float) -> None:
        self._engine = engine
        self._refresh_s = refresh_s
        self._keys: dict[str, KeyInfo] = {}
        self._unknown: set[str] = set()
        self._used: dict[str, datetime] = {}  # key id -> last use, not yet written

    async def load(self) -> None:
        self._keys = await run_in_threadpool(_load, self._engine)
        self._unknown.clear()

    async def find(self, key: bytes) -> KeyInfo | None:
        """The key's info (revoked ones too), or None for a key nobody made."""
        digest = hash_key(key)
        info = self._keys.get(digest)
        if info is None and digest not in self._unknown:
            try:  # made on another replica since the last refresh?
                found = await run_in_threadpool(_load, self._engine, digest)
            except Exception:
                log.warning("could not look a key up (database unavailable?)", exc_info=True)
                return None
            info = found.get(digest)
            if info is None:
                if len(self._unknown) >= _UNKNOWN_MAX:
                    self._unknown.clear()
                self._unknown.add(digest)
            else:
                self._keys[digest] = info
        if info is not None and not info.revoked:
            self._used[info.id] = utcnow()
        return info

    async def run(self) -> None:
        """Re-read the keys and write their last use, every ``refresh_s``, forever."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.flush()
                await self.load()
            except Exception:
                log.warning("could not refresh the API keys; keeping the ones known", exc_info=True)

    async def flush(self) -> None:
        """Write each key's last use (batched: not one write per request)."""
        used, self._used = self._used, {}
        if used:
            try:
                await run_in_threadpool(_touch, self._engine, used)
            except Exception:
                self._used = {**used, **self._used}  # try again next time
                raise
