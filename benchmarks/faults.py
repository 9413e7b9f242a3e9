"""Rows written against requests sent, through faults: is anything lost?

Each scenario runs real ``canary serve`` processes under a steady load of chat requests
from client threads, makes a fault, and then counts the rows in the inference table
against the requests the clients sent and the answers they got:

- ``outage``: Postgres gone for ``--outage-s`` (a TCP proxy between the router and the
  shared server is paused: connections reset, new ones refused), the router keeps
  running; rows are counted once it has replayed its journal, without a restart.
  Readiness is polled through the outage.
- ``sigkill``: the router is SIGKILLed under load ``--kills`` times and restarted on the
  same data dir (SQLite); every answered request must have its row.
- ``engine``: the champion is a remote OpenAI-compatible engine process that is killed
  mid-load and restarted; every request, failed or not, must have its row.
- ``poison``: on Postgres, one request in ten carries a NUL or a lone surrogate (in
  ``user``, ``model`` or message content); each gets a 400 and still its row, and no
  innocent row is lost.

Run ``.venv/bin/python benchmarks/faults.py`` (about 2 minutes; ``--outage-s 10`` for a
shorter outage). Needs the Postgres server at 127.0.0.1:5432 (database ``test``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests' process helpers

from serving import ServerProcess

from router.backends.fake_server import create_fake_openai_app
from tests.canary_process import CanaryProcess, Load
from tests.tcp_proxy import TcpProxy

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
FAKE_ROUTES = {
    "chat": {
        "champion": {"backend": "fake", "name": "a", "version": "1", "mode": "echo"},
        "challenger": {"backend": "fake", "name": "b", "version": "2"},
        "challenger_weight": 50,
    }
}
JSON = {"content-type": "application/json"}
BASE = {"routes": FAKE_ROUTES, "ui_enabled": False, "log_flush_interval_s": 0.25}


@contextmanager
def postgres_database() -> Iterator[str]:
    name = f"canary_faults_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_rows(router: CanaryProcess, want: set[str], url: str | None, timeout: float) -> float:
    """Seconds until every id in ``want`` is a row (or the timeout)."""
    start = time.monotonic()
    while not want <= router.request_ids(url) and time.monotonic() - start < timeout:
        time.sleep(0.2)
    return time.monotonic() - start


def report(name: str, load: Load, rows: set[str], extra: str) -> None:
    lost = load.answered - rows
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items(), key=str))
    print(
        f"| {name} | {load.sent} | {statuses} | {len(rows & load.answered)} "
        f"| **{len(lost)}** | {extra} |",
        flush=True,
    )


def outage(tmp: Path, outage_s: float) -> None:
    with postgres_database() as url, TcpProxy(5432) as proxy:
        router = CanaryProcess(BASE, tmp / "outage", CANARY_DATABASE_URL=proxy.url_for(url))
        router.start()
        load = Load(router.url)
        ready: Counter[str] = Counter()
        with load.running():
            time.sleep(2)
            proxy.pause()
            end = time.monotonic() + outage_s
            while time.monotonic() < end:
                r = httpx.get(f"{router.url}/health/ready", timeout=10)
                ready[f"{r.status_code} {r.json().get('status')}"] += 1
                time.sleep(1)
            journal = sum(p.stat().st_size for p in (tmp / "outage" / "journal").glob("seg*"))
            with load._lock:
                before_resume = set(load.answered)
            proxy.resume()
            caught_up = wait_rows(router, before_resume, url, 120)  # the load goes on
        wait_rows(router, load.answered, url, 60)
        rows = router.request_ids(url)
        router.stop()
        seen = ", ".join(f"{k} x{v}" for k, v in sorted(ready.items()))
        extra = (
            f"{outage_s:.0f} s outage; readiness during it: {seen}; journal at the end "
            f"{journal / 1e6:.1f} MB; every row answered during it in the table "
            f"{caught_up:.1f} s after the database came back (no restart)"
        )
        report("Postgres outage", load, rows, extra)


def sigkill(tmp: Path, kills: int) -> None:
    config = {**BASE, "log_flush_interval_s": 2}
    router = CanaryProcess(config, tmp / "sigkill")
    total, lost_per_kill = Load(""), []
    for _ in range(kills):
        router.start()
        load = Load(router.url)
        with load.running():
            time.sleep(2)
            before = router.request_ids()
            router.kill()
        unflushed = len(load.answered - before)
        router.start()
        wait_rows(router, load.answered, None, 30)
        lost_per_kill.append((unflushed, len(load.answered - router.request_ids())))
        router.stop()
        total.sent += load.sent
        total.statuses.update(load.statuses)
        total.answered |= load.answered
    extra = "; ".join(
        f"kill {i + 1}: {u} answered rows not yet committed, {lost} lost"
        for i, (u, lost) in enumerate(lost_per_kill)
    )
    report(f"SIGKILL x{kills} (SQLite)", total, router.request_ids(), extra)


def engine(tmp: Path) -> None:
    upstream = ServerProcess(create_fake_openai_app).start()
    remote = {
        "backend": "openai",
        "name": "remote",
        "version": "1",
        "base_url": f"{upstream.url}/v1",
        "remote_model": "fake",
        "timeout_s": 5,
    }
    config = {**BASE, "routes": {"chat": {"champion": remote}}}
    router = CanaryProcess(config, tmp / "engine").start()
    load = Load(router.url)
    with load.running():
        time.sleep(2)
        upstream.process.kill()
        time.sleep(3)
        upstream = ServerProcess(create_fake_openai_app, port=upstream.port).start()
        time.sleep(2)
    router.stop()
    upstream.stop()
    rows = router.request_ids()
    report("engine killed mid-load, restarted", load, rows, f"rows {len(rows)} = sent {load.sent}")


def poison(tmp: Path) -> None:
    def body(i: int) -> dict[str, Any]:
        base = {"model": "chat", "user": f"u{i}", "messages": [{"role": "user", "content": "hi"}]}
        kind = i % 30
        if kind == 0:
            base["user"] = "p\x00q"
        elif kind == 10:
            base["model"] = "\ud800"
        elif kind == 20:
            base["messages"] = [{"role": "user", "content": "a\udfffb"}]
        return base

    with postgres_database() as url:
        router = CanaryProcess(BASE, tmp / "poison", CANARY_DATABASE_URL=url).start()
        load = Load(router.url, body=body)
        with load.running():
            time.sleep(5)
        router.stop()
        rows = router.request_ids(url)
        dead = tmp / "poison" / "journal" / "dead-letter.jsonl"
        dead_rows = dead.read_bytes().count(b"\n") if dead.exists() else 0
        extra = f"rows {len(rows)} = sent {load.sent}; dead-lettered {dead_rows}"
        report("poison inputs, 1 in 10 (Postgres)", load, rows, extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage-s", type=float, default=32)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument(
        "--only", choices=["outage", "sigkill", "engine", "poison"], action="append"
    )
    args = parser.parse_args()
    only = set(args.only or ["outage", "sigkill", "engine", "poison"])
    print("| fault | requests sent | responses by status | answered with a row | lost | notes |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        if "outage" in only:
            outage(Path(tmp), args.outage_s)
        if "sigkill" in only:
            sigkill(Path(tmp), args.kills)
        if "engine" in only:
            engine(Path(tmp))
        if "poison" in only:
            poison(Path(tmp))


if __name__ == "__main__":
    main()
