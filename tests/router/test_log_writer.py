"""The log writer on its own, on SQLite and the real Postgres: poison rows are isolated
and dead-lettered, the writer survives its own errors, the journal is replayed after a
crash without holding up start-up, and a full journal says so."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, text

from router.inference_log.db import create_db_engine, migrate
from router.inference_log.journal import DEAD_LETTER
from router.inference_log.writer import LogWriter
from router.metrics import Metrics


def row(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "request_id": f"req-{i}",
        "created_at": datetime.now(UTC),
        "route": "chat",
        "status": "ok",
        "stream": False,
        "prompt_chars": 1,
        "response_chars": 1,
        "http_status": 200,
        "latency_ms": 1.0,
        **extra,
    }


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'log.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    engine = create_db_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


def ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(text("SELECT request_id FROM inference_log")).scalars())


def value(metric: Any) -> float:
    return float(metric._value.get())


async def test_a_poison_row_is_isolated_and_dead_lettered(engine: Engine, tmp_path: Path) -> None:
    metrics = Metrics()
    writer = LogWriter(engine, metrics=metrics, journal_dir=tmp_path / "journal")
    await writer.start()
    for i in range(200):
        # A dict cannot be bound to the integer column on either database: the batch of
        # 200 fails, and halving isolates the one row the database will never take.
        writer.submit(row(i, bucket={"not": "an int"} if i == 77 else i))
    await writer.flush()
    writer.submit(row(1000, bucket=1))  # the writer lives on
    await writer.flush()
    health = writer.health()
    await writer.close()

    assert ids(engine) == sorted([f"req-{i}" for i in range(200) if i != 77] + ["req-1000"])
    dead = [orjson.loads(line) for line in (tmp_path / "journal" / DEAD_LETTER).open("rb")]
    assert [d["row"]["request_id"] for d in dead] == ["req-77"]
    assert dead[0]["error"]
    assert value(metrics.log_rows_dead_lettered) == 1
    assert value(metrics.log_rows_written) == 200
    assert health.status == "degraded" and DEAD_LETTER in (health.reason or "")
    assert not list((tmp_path / "journal").glob("segment-*"))  # all settled, removed


async def test_nul_and_lone_surrogates_are_stored_escaped(engine: Engine, tmp_path: Path) -> None:
    writer = LogWriter(engine, metrics=Metrics(), journal_dir=tmp_path / "journal")
    await writer.start()
    writer.submit(row(1, route="\ud800", unit_id="p\x00q", prompt_messages=[{"c": "a\udfffb"}]))
    writer.submit(row(2))
    await writer.flush()
    await writer.close()
    with engine.connect() as conn:
        got = conn.execute(
            text("SELECT route, unit_id, prompt_messages FROM inference_log ORDER BY request_id")
        ).all()
    route, unit, messages = got[0]
    assert (route, unit) == ("\\ud800", "p\\u0000q")
    messages = orjson.loads(messages) if isinstance(messages, str) else messages
    assert messages == [{"c": "a\\udfffb"}]
    assert len(got) == 2
    assert not (tmp_path / "journal" / DEAD_LETTER).exists()


async def test_the_writer_survives_its_own_errors(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'log.db'}")
    migrate(engine)
    metrics = Metrics()
    writer = LogWriter(engine, metrics=metrics, journal_dir=tmp_path / "journal", retry_s=0.01)
    real_sync, calls = writer.journal.sync, {"n": 0}

    def broken_sync() -> None:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("disk on fire")
        real_sync()

    writer.journal.sync = broken_sync  # type: ignore[method-assign]
    await writer.start()
    for _ in range(200):  # the idle loop syncs, fails three times, goes on
        if calls["n"] > 3:
            break
        await asyncio.sleep(0.05)
    writer.submit(row(1))
    await asyncio.wait_for(writer.flush(), 5)
    assert value(metrics.log_writer_errors) == 3
    assert writer.health().status == "degraded"  # the error is reported for a minute
    await writer.close()
    assert ids(engine) == ["req-1"]


async def test_a_crash_leaves_the_journal_which_the_next_start_replays(
    engine: Engine, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    crashed = LogWriter(engine, metrics=Metrics(), journal_dir=journal, queue_size=5)
    for i in range(12):  # never started: 5 rows in memory, 7 journal-only; all on disk
        crashed.submit(row(i))
    assert len(list(journal.glob("segment-*"))) == 1
    # Process death: the kernel drops its lock; nothing was committed.
    crashed.journal.close()
    # A torn last line, as a kill in the middle of a write would leave.
    segment = next(journal.glob("segment-*"))
    with segment.open("ab") as f:
        f.write(b'{"request_id": "req-torn", "creat')

    metrics = Metrics()
    restarted = LogWriter(engine, metrics=metrics, journal_dir=journal)
    await restarted.start()  # returns at once; replay runs in the background
    for _ in range(100):
        if value(metrics.log_rows_replayed) >= 12:
            break
        await asyncio.sleep(0.05)
    await restarted.close()
    assert ids(engine) == sorted(f"req-{i}" for i in range(12))
    assert value(metrics.log_rows_replayed) == 12
    dead = (journal / DEAD_LETTER).read_bytes()
    assert b"req-torn" in dead and b"unreadable line" in dead
    assert not list(journal.glob("segment-*"))


async def test_a_live_process_segments_are_not_replayed_by_another(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'log.db'}")
    migrate(engine)
    journal = tmp_path / "journal"
    alive = LogWriter(engine, metrics=Metrics(), journal_dir=journal)
    alive.submit(row(1))  # held (flock) by a writer that is still running
    other = LogWriter(engine, metrics=Metrics(), journal_dir=journal)
    assert other.journal.claim_replays() == []
    alive.journal.close()
    assert len(other.journal.claim_replays()) == 1


async def test_start_up_does_not_wait_for_an_unreachable_database(tmp_path: Path) -> None:
    engine = create_db_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    journal = tmp_path / "journal"
    journal.mkdir()
    (journal / "segment-1-1.jsonl").write_bytes(orjson.dumps(row(1)) + b"\n")
    writer = LogWriter(engine, metrics=Metrics(), journal_dir=journal, retry_s=0.05)
    await asyncio.wait_for(writer.start(), 1)
    writer.submit(row(2))
    for _ in range(100):
        if writer.health().status == "degraded":
            break
        await asyncio.sleep(0.05)
    health = writer.health()
    assert health.status == "degraded" and "database unreachable" in (health.reason or "")
    await asyncio.wait_for(writer.close(), 5)  # shutdown never fails because of the log
    assert len(list(journal.glob("segment-*"))) == 2  # both rows wait for the next start


async def test_a_full_journal_while_the_database_is_down_is_down(tmp_path: Path) -> None:
    engine = create_db_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    metrics = Metrics()
    writer = LogWriter(
        engine,
        metrics=metrics,
        journal_dir=tmp_path / "journal",
        journal_max_bytes=1 << 20,
        retry_s=0.05,
    )
    await writer.start()
    big = "x" * 50_000
    for i in range(40):  # ~2 MB of rows against 1 MB of journal
        writer.submit(row(i, response_text=big))
        await asyncio.sleep(0.01)
    health = writer.health()
    await writer.close()
    assert health.status == "down" and "journal is full" in (health.reason or "")
    assert value(metrics.log_rows_dropped) > 0
    written = sum(p.stat().st_size for p in (tmp_path / "journal").glob("segment-*"))
    assert 1 << 20 <= written < (1 << 20) + 60_000  # bounded by the setting
