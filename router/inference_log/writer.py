"""The inference log's writer: every row journaled at once, committed in batches, never lost.

The request path calls ``submit``: the row is made storable (``router.storable``),
appended to the local journal (``journal.py``: on disk before the response leaves, so
SIGKILL loses nothing) and queued in memory; it never waits on the database. A
supervised background task commits batches in a worker thread:

- a batch that fails while the database answers is split in halves until the bad row
  is isolated; that row goes to the dead-letter file, the others are written;
- a batch that fails because the database does not answer starts an outage: rows stop
  queueing in memory (they are in the journal) and the database is pinged every
  ``retry_s``; the first answer replays the journal, while the router keeps running;
- segments left by an earlier process are replayed in the background after start-up;
  replay is idempotent (``ON CONFLICT (request_id) DO NOTHING``);
- any exception is logged, counted and survived; ``close`` drains what it can within a
  time limit and leaves the rest in the journal for the next start.

Guarantees: at-least-once into the journal, exactly once in the table (by request id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy import Engine

from router.inference_log.db import insert, ping
from router.inference_log.journal import DEAD_LETTER, Journal
from router.inference_log.models import InferenceRecord
from router.metrics import Metrics
from router.storable import escape

log = logging.getLogger(__name__)
TABLE = InferenceRecord.__table__  # type: ignore[attr-defined]
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class LogHealth:
    """Can the router still record requests? Readiness reports it.

    ``ok``: rows reach the database. ``degraded``: they do not right now (database
    unreachable, rows dead-lettered) but every request is still recorded locally.
    ``down``: requests can no longer be recorded (the local journal is full).
    """

    status: Literal["ok", "degraded", "down"]
    reason: str | None = None


class DatabaseDown(Exception):
    """The database did not answer a ping after a write failed."""


@dataclass(slots=True)
class _Entry:
    row: Row
    segment: int | None  # journal segment holding the row; None if the journal was full


class LogWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        metrics: Metrics,
        journal_dir: Path,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.25,
        journal_max_bytes: int = 1 << 30,
        retry_s: float = 1.0,
        close_timeout_s: float = 20.0,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self.journal = Journal(journal_dir, max_bytes=journal_max_bytes)
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._retry_s = retry_s
        self._close_timeout_s = close_timeout_s
        self._buffer: deque[_Entry] = deque()
        self._pending: dict[str, int] = {}  # request id -> entries of it in memory
        self._submitted = 0
        self._done = 0  # entries that left memory (committed, dead-lettered or journal-only)
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._outage_since: float | None = None
        self._replay_due = True  # segments a crashed process left behind
        self._dropped_at: float | None = None
        self._last_error: tuple[float, str] | None = None
        metrics.log_journal_bytes.set_function(lambda: self.journal.bytes)

    # -- request path ---------------------------------------------------------------------
    def submit(self, row: Row) -> None:
        """Journal one row and queue it; never blocks on the database, never raises."""
        try:
            row, line = _storable(row)
            segment = self.journal.append(line)
        except Exception as exc:  # a bug or a disk error: keep going, keep it visible
            self._error("journal append failed", exc)
            segment = None
        if segment is None and (self._outage_since is not None or self._buffer_full):
            self._dropped_at = time.monotonic()
            self._metrics.log_rows_dropped.inc()
            log.error("inference row lost: the journal is full", extra=_ids(row))
            return
        if self._outage_since is not None or self._buffer_full:
            self._orphan(segment)  # the journal has it; replayed once there is room
            return
        self._buffer.append(_Entry(row, segment))
        request_id = row.get("request_id", "")
        self._pending[request_id] = self._pending.get(request_id, 0) + 1
        self._submitted += 1
        self._metrics.log_queue_depth.set(len(self._buffer))
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    def is_pending(self, request_id: str) -> bool:
        """Whether the row is still in memory, committed soon (``flush`` waits for it)."""
        return request_id in self._pending

    def health(self) -> LogHealth:
        """Whether requests are being recorded, and where to."""
        journal = self.journal
        recent_drop = self._dropped_at is not None and time.monotonic() - self._dropped_at < 60
        if journal.full and (self._outage_since is not None or recent_drop):
            return LogHealth(
                "down",
                f"requests cannot be recorded: the local journal is full "
                f"({journal.bytes / 1e6:.0f} of {journal.max_bytes / 1e6:.0f} MB) and the "
                "database is not taking rows",
            )
        reasons = []
        if self._outage_since is not None:
            reasons.append(
                f"database unreachable for {time.monotonic() - self._outage_since:.0f} s; "
                f"rows kept in the local journal ({journal.bytes / 1e6:.1f} of "
                f"{journal.max_bytes / 1e6:.0f} MB) and replayed when it answers"
            )
        if journal.full:
            reasons.append("the local journal is full: rows are kept in memory only")
        if journal.dead_letters:
            reasons.append(
                f"{journal.dead_letters} rows the database refused are in "
                f"{journal.directory / DEAD_LETTER}"
            )
        if self._last_error is not None and time.monotonic() - self._last_error[0] < 60:
            reasons.append(f"writer error: {self._last_error[1]}")
        return LogHealth("degraded", "; ".join(reasons)) if reasons else LogHealth("ok")

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the background task; earlier segments replay in it, start-up never waits."""
        self._task = asyncio.create_task(self._run(), name="inference-log-writer")

    async def flush(self) -> None:
        """Return once every row submitted before the call has left memory: committed,
        dead-lettered, or (database down) kept in the journal for replay."""
        target = self._submitted
        self._wake.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._done >= target)

    async def close(self) -> None:
        """Drain within ``close_timeout_s``; whatever is left stays in the journal."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self._close_timeout_s)
            except TimeoutError:
                log.error("inference log drain timed out; rows stay in the journal")
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        with contextlib.suppress(OSError):
            self.journal.sync()
        self.journal.close()

    # -- background -----------------------------------------------------------------------
    async def _run(self) -> None:
        """Supervise ``_step``: an error is logged, counted and survived."""
        while True:
            try:
                if await self._step():
                    return
            except Exception as exc:
                self._error("inference log writer error", exc)
                await asyncio.sleep(self._retry_s)

    async def _step(self) -> bool:
        """One unit of work; True when closed and done."""
        if self._outage_since is not None:
            if self._closing:
                await self._orphan_buffer()
                return True
            await asyncio.sleep(self._retry_s)
            if await asyncio.to_thread(self._alive):
                log.warning(
                    "database answers again; replaying the journal",
                    extra={"outage_s": round(time.monotonic() - self._outage_since, 1)},
                )
                self._outage_since, self._replay_due = None, True
            return False
        if not self._closing and (
            self._replay_due or (not self._buffer and self.journal.has_orphans)
        ):
            self._replay_due = False
            await self._replay()
            return False
        if not self._buffer:
            if self._closing:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await asyncio.to_thread(self.journal.sync)
            return False
        if len(self._buffer) < self._batch_size and not self._closing:
            # Let a batch build up for a moment; a lone row still goes out promptly.
            await asyncio.sleep(min(self._interval, 0.05))
        batch = [self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))]
        self._metrics.log_queue_depth.set(len(self._buffer))
        try:
            dead = await asyncio.to_thread(self._write_isolating, [e.row for e in batch])
        except DatabaseDown as exc:
            self._begin_outage(exc)
            for entry in batch:
                self._orphan(entry.segment)
            await self._left_memory(batch)
            await self._orphan_buffer()
            return False
        self._dead_letter(dead)
        self._metrics.log_rows_written.inc(len(batch) - len(dead))
        for entry in batch:
            if entry.segment is not None:
                self.journal.settled(entry.segment)
        await self._left_memory(batch)
        return False

    async def _replay(self) -> None:
        """Write every journal file that holds rows not known to be in the database."""
        for path in self.journal.claim_replays():
            rows, bad = await asyncio.to_thread(_read, path)
            try:
                dead = [*bad]
                for i in range(0, len(rows), self._batch_size):
                    dead += await asyncio.to_thread(
                        self._write_isolating, rows[i : i + self._batch_size]
                    )
            except DatabaseDown as exc:
                self._begin_outage(exc)
                return  # the file stays claimed and orphaned: replayed after the outage
            self._dead_letter(dead)
            self.journal.replayed(path)
            self._metrics.log_rows_replayed.inc(len(rows) - len(dead) + len(bad))
            if rows:
                log.info("replayed journaled rows", extra={"rows": len(rows), "file": path.name})

    # -- database (worker thread) ---------------------------------------------------------
    def _write(self, rows: list[Row]) -> None:
        stmt = insert(self._engine, TABLE).on_conflict_do_nothing(index_elements=["request_id"])
        with self._engine.begin() as conn:
            conn.execute(stmt, rows)

    def _alive(self) -> bool:
        try:
            ping(self._engine)
        except Exception:
            return False
        return True

    def _write_isolating(self, rows: list[Row]) -> list[tuple[Any, str]]:
        """Write ``rows``; a failure while the database answers is split in halves until
        each bad row is alone. Returns the bad rows with their errors; raises
        ``DatabaseDown`` when the database stops answering."""
        try:
            self._write(rows)
            return []
        except Exception as exc:
            self._metrics.log_write_failures.inc()
            if not self._alive():
                raise DatabaseDown(str(exc)) from exc
            if len(rows) > 1:
                mid = len(rows) // 2
                return self._write_isolating(rows[:mid]) + self._write_isolating(rows[mid:])
            try:  # once more: a lock timeout or a serialization failure passes
                self._write(rows)
                return []
            except Exception as again:
                if not self._alive():
                    raise DatabaseDown(str(again)) from again
                return [(rows[0], f"{type(again).__name__}: {again}")]

    # -- bookkeeping (event loop) ---------------------------------------------------------
    @property
    def _buffer_full(self) -> bool:
        return len(self._buffer) >= self._queue_size

    def _orphan(self, segment: int | None) -> None:
        if segment is not None:
            self.journal.orphan(segment)
        self._metrics.log_rows_spilled.inc()

    async def _orphan_buffer(self) -> None:
        """Database down: what memory holds stays in the journal only."""
        entries = list(self._buffer)
        self._buffer.clear()
        self._metrics.log_queue_depth.set(0)
        for entry in entries:
            self._orphan(entry.segment)
        await self._left_memory(entries)

    async def _left_memory(self, entries: list[_Entry]) -> None:
        for entry in entries:
            request_id = entry.row.get("request_id", "")
            left = self._pending.get(request_id, 1) - 1
            if left > 0:
                self._pending[request_id] = left
            else:
                self._pending.pop(request_id, None)
        async with self._progress:
            self._done += len(entries)
            self._progress.notify_all()

    def _begin_outage(self, exc: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.error(
                "database unreachable; rows stay in the local journal until it answers",
                extra={"error": str(exc)[:500]},
            )

    def _dead_letter(self, dead: list[tuple[Any, str]]) -> None:
        for row, error in dead:
            self.journal.dead_letter(row, error)
            self._metrics.log_rows_dead_lettered.inc()
            log.error(
                "inference row refused by the database; dead-lettered",
                extra={**_ids(row), "error": error[:500]},
            )

    def _error(self, message: str, exc: Exception) -> None:
        self._last_error = (time.monotonic(), f"{type(exc).__name__}: {exc}"[:300])
        self._metrics.log_writer_errors.inc()
        log.exception(message)


#: Columns newer than some journal a previous version may have left: null when replayed.
_ADDED_COLUMNS: Row = {"key_id": None, "unit_source": None, "tool_calls": None}


def _storable(row: Row) -> tuple[Row, bytes]:
    """The row made storable (nothing a client sent may fail a batch) and its journal line.

    orjson refuses lone surrogates and writes NUL as ``\\u0000``, so serialising first
    finds both at the cost of the line we need anyway (~1 µs); only such rows take the
    slower walk (``escape``, ~20 µs).
    """
    try:
        line = orjson.dumps(row)
        if b"\\u0000" not in line:
            return row, line + b"\n"
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate
        pass
    row = escape(row)
    return row, orjson.dumps(row) + b"\n"


def _ids(row: Any) -> dict[str, Any]:
    return {"request_id": row.get("request_id")} if isinstance(row, dict) else {}


def _read(path: Path) -> tuple[list[Row], list[tuple[Any, str]]]:
    """The rows of a journal file, and the lines that are not rows (a write torn by a
    crash) with why."""
    rows: list[Row] = []
    bad: list[tuple[Any, str]] = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            row = {**_ADDED_COLUMNS, **orjson.loads(line)}
            row["created_at"] = datetime.fromisoformat(row["created_at"])
            rows.append(row)
        except Exception as exc:
            bad.append((line.decode("utf-8", "backslashreplace"), f"unreadable line: {exc}"))
    return rows, bad
