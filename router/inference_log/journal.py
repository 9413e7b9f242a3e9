"""The local journal: every inference row is on disk before its response leaves.

Rows are appended (one JSON line each, ``os.write`` into the page cache, which outlives
the process) to segment files ``segment-<pid>-<ns>.jsonl``; the writer fsyncs the open
segment once per flush, so a SIGKILL loses nothing and a power cut at most one flush
interval. A segment is deleted once every row in it is in the database. Rows the
writer could not commit in order (database down, memory buffer full) stay in their
segments, which are replayed later; replay is idempotent because ``request_id`` is the
table's key. Each process holds an ``flock`` on its own segments, so replicas sharing a
data dir replay only what a dead process left behind.

Rows no database will take (the writer isolates them one by one) go to
``dead-letter.jsonl`` with the error, for a person to look at.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

DEAD_LETTER = "dead-letter.jsonl"


@dataclass(slots=True)
class _Segment:
    id: int
    path: Path
    fd: int
    size: int = 0
    rows: int = 0  # appended
    settled: int = 0  # committed or dead-lettered, in the writer's order
    orphaned: bool = False  # some rows left memory uncommitted: replay the file
    unsynced: bool = False


class Journal:
    """Segment files in one directory; not thread-safe except ``sync`` (see ``LogWriter``)."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int = 8 << 20) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        self._next_id = 0
        directory.mkdir(parents=True, exist_ok=True)
        #: On disk in this journal, own and inherited segments alike.
        self.bytes = sum(p.stat().st_size for p in directory.glob("segment-*"))
        dead = directory / DEAD_LETTER
        self.dead_letters = dead.read_bytes().count(b"\n") if dead.exists() else 0

    # -- appending ----------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes

    def append(self, line: bytes) -> int | None:
        """Write one row (a JSON line); its segment's id, or None when the journal is full."""
        if self.full:
            return None
        segment = self._current or self._rotate()
        os.write(segment.fd, line)
        segment.rows += 1
        segment.size += len(line)
        segment.unsynced = True
        self.bytes += len(line)
        if segment.size >= self._segment_bytes:
            self._rotate()
        return segment.id

    def sync(self) -> None:
        """fsync segments written since the last call (a worker thread may run this)."""
        for segment in list(self._segments.values()):
            if segment.unsynced:
                segment.unsynced = False
                # The loop may close a settled segment meanwhile; fsyncing a closed (or
                # reused) descriptor is harmless, so that race needs no lock.
                with contextlib.suppress(OSError):
                    os.fsync(segment.fd)

    # -- settling -----------------------------------------------------------------------
    def settled(self, segment_id: int, rows: int = 1) -> None:
        """``rows`` of a segment are in the database (or dead-lettered)."""
        segment = self._segments.get(segment_id)
        if segment is None:
            return  # replayed and removed already
        segment.settled += rows
        self._drop_if_done(segment)

    def orphan(self, segment_id: int) -> None:
        """A row of this segment left memory uncommitted: the file must be replayed."""
        segment = self._segments.get(segment_id)
        if segment is not None:
            segment.orphaned = True

    @property
    def has_orphans(self) -> bool:
        return any(s.orphaned for s in self._segments.values())

    def claim_replays(self) -> list[Path]:
        """Files to replay: own segments with orphaned rows (sealed first) and segments
        no live process holds (left by a crash). Claimed files are this process's to
        delete with ``replayed``."""
        current = self._current
        if current is not None and current.orphaned:
            self._rotate()
        claimed = [s.path for s in self._segments.values() if s.orphaned and s is not current]
        own = {s.path for s in self._segments.values()}
        for path in sorted(self.directory.glob("segment-*.jsonl")):
            if path in own:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live process is still writing it
                continue
            segment = _Segment(self._new_id(), path, fd, orphaned=True)
            self._segments[segment.id] = segment
            claimed.append(path)
        return claimed

    def replayed(self, path: Path) -> None:
        """Every row of a claimed file is in the database: remove it."""
        for segment in list(self._segments.values()):
            if segment.path == path:
                self._remove(segment)

    # -- dead letters -------------------------------------------------------------------
    def dead_letter(self, row: Any, error: str) -> None:
        """Keep a row no database takes, with why; fsynced (rare, and evidence)."""
        entry = {"at": datetime.now(UTC).isoformat(), "error": error, "row": row}
        try:
            line = orjson.dumps(entry, default=repr, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:
            line = orjson.dumps({**entry, "row": repr(row)})
        with (self.directory / DEAD_LETTER).open("ab") as f:
            f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.dead_letters += 1

    # -- internals ----------------------------------------------------------------------
    def close(self) -> None:
        """Release the files; segments still holding rows stay for the next start."""
        for segment in list(self._segments.values()):
            if segment.settled >= segment.rows and not segment.orphaned:
                self._remove(segment)
            else:
                os.close(segment.fd)
        self._segments.clear()
        self._current = None

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _rotate(self) -> _Segment:
        previous = self._current
        path = self.directory / f"segment-{os.getpid()}-{time.time_ns()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # ours while we live; the kernel frees it on death
        segment = _Segment(self._new_id(), path, fd)
        self._segments[segment.id] = segment
        self._current = segment
        if previous is not None:
            self._drop_if_done(previous)
        return segment

    def _drop_if_done(self, segment: _Segment) -> None:
        done = segment.settled >= segment.rows and not segment.orphaned
        if done and segment is not self._current:
            self._remove(segment)

    def _remove(self, segment: _Segment) -> None:
        try:
            self.bytes = max(0, self.bytes - segment.path.stat().st_size)
            segment.path.unlink()
        except FileNotFoundError:
            pass
        os.close(segment.fd)
        self._segments.pop(segment.id, None)
        if segment is self._current:
            self._current = None
