"""A bounded, batched, asynchronous writer for inference rows.

The request path calls ``submit`` (never awaits a commit). A background task commits
batches in a worker thread. Nothing is dropped:

- a failed batch is retried with exponential backoff, ``max_retries`` times, and then
  spilled to a local JSON-lines file;
- when the buffer is full, rows go straight to the spill file (counted in
  ``canary_log_rows_spilled_total``);
- spill files are replayed at start-up (``ON CONFLICT DO NOTHING``, so replay is safe
  to repeat);
- ``close`` drains the buffer before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import Engine

from router.inference_log.db import insert
from router.inference_log.models import InferenceRecord
from router.metrics import Metrics
from router.storable import escape

log = logging.getLogger(__name__)
TABLE = InferenceRecord.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class LogHealth:
    """Can the router still record requests? Readiness reports it.

    ``ok``: rows reach the database. ``degraded``: they do not right now (database
    unreachable, rows dead-lettered) but every request is still recorded locally.
    ``down``: requests can no longer be recorded (the local journal is full).
    """

    status: Literal["ok", "degraded", "down"]
    reason: str | None = None


class LogWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        metrics: Metrics,
        spill_dir: Path,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.25,
        max_retries: int = 5,
        retry_base_s: float = 0.05,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._spill_dir = spill_dir
        self._spill_file = spill_dir / f"inference-{os.getpid()}-{time.time_ns()}.jsonl"
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._max_retries = max_retries
        self._retry_base_s = retry_base_s
        self._buffer: deque[dict[str, Any]] = deque()
        self._pending: set[str] = set()  # request ids submitted but not yet committed
        self._submitted = 0
        self._done = 0  # rows committed or spilled, in submission order
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- request path ---------------------------------------------------------------
    def submit(self, row: dict[str, Any]) -> None:
        """Queue one row; never blocks. A full buffer spills the row to disk."""
        row = escape(row)  # nothing a client sent may fail a batch (router.storable)
        if len(self._buffer) >= self._queue_size or (self._closing and self._task is None):
            self._spill([row])
            return
        self._buffer.append(row)
        self._pending.add(row["request_id"])
        self._submitted += 1
        self._metrics.log_queue_depth.set(len(self._buffer))
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    def is_pending(self, request_id: str) -> bool:
        return request_id in self._pending

    def health(self) -> LogHealth:
        """Whether requests are being recorded, and where to."""
        return LogHealth("ok")

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.replay_spills)
        self._task = asyncio.create_task(self._run(), name="inference-log-writer")

    async def flush(self) -> None:
        """Return once every row submitted before the call is committed (or spilled)."""
        target = self._submitted
        self._wake.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._done >= target)

    async def close(self) -> None:
        """Drain everything, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    # -- background ---------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            if not self._buffer:
                if self._closing:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if not self._buffer:
                continue
            if len(self._buffer) < self._batch_size and not self._closing:
                # Let a batch build up for a moment; a lone row still goes out promptly.
                await asyncio.sleep(min(self._interval, 0.05))
            batch = [
                self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))
            ]
            self._metrics.log_queue_depth.set(len(self._buffer))
            await self._commit(batch)
            for row in batch:
                self._pending.discard(row["request_id"])
            async with self._progress:
                self._done += len(batch)
                self._progress.notify_all()

    async def _commit(self, batch: list[dict[str, Any]]) -> None:
        for attempt in range(self._max_retries + 1):
            try:
                await asyncio.to_thread(self._write, batch)
                self._metrics.log_rows_written.inc(len(batch))
                return
            except Exception as exc:
                self._metrics.log_write_failures.inc()
                log.warning(
                    "inference log write failed",
                    extra={"attempt": attempt + 1, "rows": len(batch), "error": repr(exc)},
                )
                if attempt < self._max_retries:
                    await asyncio.sleep(self._retry_base_s * 2**attempt)
        log.error("inference log unreachable; spilling rows", extra={"rows": len(batch)})
        self._spill(batch)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        stmt = insert(self._engine, TABLE).on_conflict_do_nothing(index_elements=["request_id"])
        with self._engine.begin() as conn:
            conn.execute(stmt, rows)

    # -- spill file ---------------------------------------------------------------------
    def _spill(self, rows: list[dict[str, Any]]) -> None:
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        with self._spill_file.open("ab") as f:
            f.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self._metrics.log_rows_spilled.inc(len(rows))

    def replay_spills(self) -> int:
        """Write every spill file left by this or an earlier process; returns rows replayed."""
        replayed = 0
        for path in sorted(self._spill_dir.glob("inference-*")):
            claimed = path.with_suffix(".replaying")
            try:
                # Atomic claim, so two routers rarely replay one file; a ".replaying" file
                # left by a crash is taken up again (replaying twice inserts nothing twice).
                path.rename(claimed)
                data = claimed.read_bytes()
            except FileNotFoundError:
                continue
            rows = [_decode(line) for line in data.splitlines() if line.strip()]
            for i in range(0, len(rows), self._batch_size):
                self._write(rows[i : i + self._batch_size])
            claimed.unlink(missing_ok=True)
            replayed += len(rows)
        if replayed:
            log.info("replayed spilled inference rows", extra={"rows": replayed})
        return replayed


def _decode(line: bytes) -> dict[str, Any]:
    row = orjson.loads(line)
    row["created_at"] = datetime.fromisoformat(row["created_at"])
    return row
