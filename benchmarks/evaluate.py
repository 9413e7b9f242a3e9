"""How long the evaluator's SQL aggregation takes over 1,000,000 logged requests.

What is measured: one evaluation as the evaluator runs it — ``aggregate_stage`` (everything
one look reads from the database: per-unit error and thumbs sums per arm, the current
stage's units of the split, latency and TTFT samples, votes; its three scans at once on one
snapshot) then ``experiments.analysis.analyse`` (every statistic and the decision) — at the
first stage and at a later one; and what a report adds (``timeline``, hourly buckets, and
``stage_traffic``), on SQLite and on Postgres. Target: one evaluation over 1,000,000
requests under 2 s on each.

Side by side in the same run: a look whose per-unit error sums come from ``unit_totals``
(what the evaluator reads: running totals a trigger keeps on every log insert) against the
same look grouping the log itself (what a dashboard window reads; forced here by a window
that holds every row), and what the trigger costs the log writer: 500-row batches
committed as ``LogWriter`` commits them, alternately with the trigger and without it.

The data: one experiment on route ``chat`` with ``--rows`` inference rows over 7 days,
~200k units (a skewed number of requests per unit, arm by the unit's hash bucket, 50/50),
realistic statuses (ok ~95.5%, error, timeout, fallback, client gone, rejected, shadow
copies), assignment reasons (the split's ``hash``, ~3% ``unassigned``, ~1% forced arms:
``override`` and ``arena``), 30% streamed, lognormal latencies, short prompts and answers
stored as the router stores them; ~10% of requests rated (some twice, by a reviewer,
later), and votes on ~2% of requests. A few rows of another route and of no experiment are
mixed in, so the filters have something to skip.

How: SQLite is a temporary file migrated with ``router.inference_log.db.migrate`` and
filled with ``executemany`` in 50k-row batches; Postgres is a fresh temporary database on
127.0.0.1:5432 (``CANARY_TEST_POSTGRES`` overrides the admin URL), migrated the same way,
filled with ``COPY``, then ``VACUUM ANALYZE`` (what autovacuum does after a bulk load),
and dropped afterwards. Each backend then runs one untimed look (the evaluator looks every
few seconds, so the indexes it reads are in memory; the first read after the bulk load is
not that), then each measurement ``--repeats`` times; the median (and min/max) seconds are
printed against the target.

Run ``.venv/bin/python benchmarks/evaluate.py`` (``--rows 100000`` for a quick run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine

from experiments.analysis import analyse
from experiments.policy import Policy
from router.evaluation.aggregate import aggregate_stage, stage_traffic, timeline
from router.inference_log.crud import LOG
from router.inference_log.db import create_db_engine, insert, migrate

TARGET_S = 2.0
ROUTE, EXPERIMENT = "chat", "exp-bench"
PG_ADMIN_URL = os.environ.get("CANARY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
START = datetime(2026, 11, 1, tzinfo=UTC)
SPAN_S = 7 * 24 * 3600

LOG_COLUMNS = [
    "request_id",
    "created_at",
    "route",
    "experiment_id",
    "arm",
    "model_name",
    "model_version",
    "served_arm",
    "served_model_version",
    "shadow_of",
    "unit_id",
    "assignment_reason",
    "bucket",
    "stream",
    "prompt_messages",
    "prompt_chars",
    "prompt_sha256",
    "response_text",
    "response_chars",
    "response_sha256",
    "finish_reason",
    "status",
    "http_status",
    "error_type",
    "error_message",
    "latency_ms",
    "ttft_ms",
    "queue_wait_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
]
FEEDBACK_COLUMNS = ["request_id", "unit_id", "value", "comment", "created_at", "updated_at"]
VOTE_COLUMNS = ["created_at", "route", "request_id_a", "request_id_b", "winner", "unit_id"]

PROMPTS = [
    "how many legs does a spider have",
    "summarise the plot of Hamlet in two sentences",
    "write a haiku about the sea",
    "what is the capital of Australia and why is it not Sydney",
    "explain what a p-value is to a ten year old",
]
ANSWERS = [
    "A spider has eight legs, arranged in four pairs attached to the cephalothorax.",
    "Prince Hamlet seeks revenge for his father's murder by his uncle Claudius; "
    "his hesitation brings ruin to the whole Danish court, himself included.",
    "Grey waves fold and break / salt wind carries gull voices / the tide keeps its time",
    "Canberra. It was purpose-built as a compromise between Sydney and Melbourne, "
    "the two largest cities, which both wanted to be the capital.",
    "Imagine you flip a coin ten times and get ten heads. The p-value says how surprising "
    "that would be if the coin were fair.",
]
# status, probability, http status, error type
STATUSES = [
    ("ok", 0.955, 200, None),
    ("error", 0.012, 502, "backend_error"),
    ("timeout", 0.005, 504, "timeout"),
    ("fallback", 0.008, 200, None),
    ("client_disconnected", 0.005, 499, "client_disconnected"),
    ("rejected", 0.005, 400, "context_length_exceeded"),
]


# -- synthetic data ------------------------------------------------------------------------


def generate(
    rows: int, seed: int = 7
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Inference, feedback and vote rows as Python values, in column order."""
    rng = random.Random(seed)
    units = max(10, rows // 5)
    arm_of = [
        "challenger"
        if int.from_bytes(hashlib.sha256(b"u%d" % u).digest()[:8]) % 10_000 < 5000
        else "champion"
        for u in range(units)
    ]
    status_names = [s[0] for s in STATUSES]
    status_weights = [s[1] for s in STATUSES]
    status_info = {s[0]: s for s in STATUSES}
    reasons = rng.choices(["hash", "unassigned", "override", "arena"], [96, 3, 0.5, 0.5], k=rows)
    prompts = [json.dumps([{"role": "user", "content": p}]) for p in PROMPTS]
    prompt_sha = [hashlib.sha256(p.encode()).hexdigest() for p in prompts]
    answer_sha = [hashlib.sha256(a.encode()).hexdigest() for a in ANSWERS]
    statuses = rng.choices(status_names, status_weights, k=rows)
    log: list[tuple[Any, ...]] = []
    ok_ids: dict[str, list[str]] = {"champion": [], "challenger": []}
    rated: list[tuple[str, str, str, datetime]] = []
    for i in range(rows):
        u = int(units * rng.random() ** 2)  # skewed: a few heavy users, many light ones
        unit, status = f"user-{u}", statuses[i]
        arm: str | None = arm_of[u]
        route = ROUTE
        experiment: str | None = EXPERIMENT
        if i % 200 == 0:
            route = "other"  # another route's traffic
        elif i % 200 == 1:
            experiment = None  # logged before the experiment started
        served = arm
        if status == "fallback":
            served = "champion"
        if i % 100 == 2:
            arm = served = "shadow"
        if status == "rejected":
            arm = served = None
        created = START + timedelta(seconds=SPAN_S * i / rows)
        stream = rng.random() < 0.3
        latency = rng.lognormvariate(6.9 if arm != "challenger" else 6.95, 0.5)
        ok = status in ("ok", "fallback")
        k = rng.randrange(len(PROMPTS))
        rid = f"chatcmpl-{rng.getrandbits(128):032x}"
        _, _, http_status, error_type = status_info[status]
        log.append(
            (
                rid,
                created,
                route,
                experiment,
                arm,
                f"model-{arm}",
                "2" if arm == "challenger" else "1",
                served if status != "rejected" else None,
                "1" if served == "champion" else "2",
                None,
                unit if status != "rejected" else None,
                reasons[i],
                u % 10_000 if reasons[i] in ("hash", "unassigned") else None,
                stream,
                prompts[k],
                len(PROMPTS[k]),
                prompt_sha[k],
                ANSWERS[k] if ok else None,
                len(ANSWERS[k]) if ok else 0,
                answer_sha[k] if ok else None,
                "stop" if ok else None,
                status,
                http_status,
                error_type,
                "upstream failed" if error_type else None,
                latency,
                latency * rng.uniform(0.05, 0.2) if stream and ok else None,
                rng.uniform(0, 5),
                12,
                40 if ok else None,
                None,
            )
        )
        if status == "ok" and arm in ok_ids and route == ROUTE:
            ok_ids[arm].append(rid)
            if rng.random() < 0.105:
                p_up = 0.60 if arm == "champion" else 0.63
                rated.append((rid, unit, "up" if rng.random() < p_up else "down", created))
    feedback: list[tuple[Any, ...]] = []
    for rid, unit, value, created in rated:
        at = created + timedelta(seconds=rng.uniform(5, 600))
        feedback.append((rid, unit, value, None, at, at))
        if rng.random() < 0.05:  # a reviewer rates it later; the latest rating counts
            later = at + timedelta(hours=1)
            other = "down" if value == "up" else "up"
            feedback.append((rid, "reviewer", other, "reviewed", later, later))
    votes: list[tuple[Any, ...]] = []
    pairs = min(len(ok_ids["champion"]), len(ok_ids["challenger"]), rows // 50)
    for a, b in zip(ok_ids["champion"][:pairs], ok_ids["challenger"][:pairs], strict=True):
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        winner = rng.choices(["a", "b", "tie", "both_bad"], [0.4, 0.4, 0.15, 0.05])[0]
        at = START + timedelta(seconds=rng.uniform(0, SPAN_S))
        votes.append((at, ROUTE, first, second, winner, None))
    return log, feedback, votes


# -- seeding -------------------------------------------------------------------------------


def _sqlite_value(v: Any) -> Any:
    if isinstance(v, datetime):  # SQLAlchemy's SQLite storage format, in UTC
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(v, bool):
        return int(v)
    return v


def seed_sqlite(path: Path, data: tuple[list[Any], list[Any], list[Any]]) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        for table, columns, rows in zip(
            ("inference_log", "feedback", "votes"),
            (LOG_COLUMNS, FEEDBACK_COLUMNS, VOTE_COLUMNS),
            data,
            strict=True,
        ):
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
            for i in range(0, len(rows), 50_000):
                conn.executemany(sql, [tuple(map(_sqlite_value, r)) for r in rows[i : i + 50_000]])
        conn.commit()
    finally:
        conn.close()


def seed_postgres(url: str, data: tuple[list[Any], list[Any], list[Any]]) -> None:
    with psycopg.connect(url) as conn:
        for table, columns, rows in zip(
            ("inference_log", "feedback", "votes"),
            (LOG_COLUMNS, FEEDBACK_COLUMNS, VOTE_COLUMNS),
            data,
            strict=True,
        ):
            with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the local Postgres; its SQLAlchemy URL. Dropped afterwards."""
    name = f"canary_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- timing --------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def measure(name: str, engine: Engine, rows: int, seed_s: float, repeats: int) -> None:
    later_stage = START + timedelta(seconds=SPAN_S * 5 / 7)  # the last two of seven days

    def evaluate(stage_since: datetime | None, since: datetime | None = None) -> Callable[[], Any]:
        """What the evaluator does per look: SQL aggregates, then every statistic."""

        def look() -> Any:
            arms, votes, stage = aggregate_stage(
                engine,
                route=ROUTE,
                experiment_id=EXPERIMENT,
                since=since,
                stage_since=stage_since,
            )
            weights = {"champion": 0.5, "challenger": 0.5}
            analysis = analyse(
                arms["champion"], arms["challenger"], votes, weights, Policy(), 0, stage_units=stage
            )
            analysis.to_dict()
            return arms, votes, stage

        return look

    def report() -> Any:
        buckets = timeline(engine, route=ROUTE, experiment_id=EXPERIMENT, since=None, bucket_s=3600)
        stages = stage_traffic(
            engine, route=ROUTE, experiment_id=EXPERIMENT, starts=[START, later_stage]
        )
        return buckets, stages

    # One look first, untimed: the evaluator looks every few seconds at a log whose
    # indexes are in memory; the first read after a bulk load of 1M rows is not that.
    evaluate(None)()
    first_times, (arms, votes, _) = timed(evaluate(None), repeats)
    later_times, (_, _, later_units) = timed(evaluate(later_stage), repeats)
    everything = START - timedelta(days=1)  # a window over every row: the log is grouped
    scan_first, scanned = timed(evaluate(None, everything), repeats)
    scan_later, scanned_later = timed(evaluate(later_stage, everything), repeats)
    if (scanned[0], scanned_later[2]) != (arms, later_units):
        raise SystemExit("the unit totals and the log scan disagree")
    report_times, (buckets, stages) = timed(report, repeats)
    counted = sum(a.requests for a in arms.values())
    print(f"\n{name}: {rows:,} rows seeded in {seed_s:.1f} s")
    for arm, s in arms.items():
        print(
            f"  {arm:10s} requests={s.requests:,} units={s.units:,} (all {s.errors.units:,}; "
            f"last stage {later_units[arm]:,}) errors={int(s.errors.sum_x):,} "
            f"rated={int(s.thumbs.sum_y):,} up={int(s.thumbs.sum_x):,} "
            f"latency sample={len(s.latency_ms):,} ttft sample={len(s.ttft_ms):,}"
        )
    print(
        f"  votes: challenger {votes.challenger_wins:,}, champion {votes.champion_wins:,}, "
        f"ties {votes.ties:,}, both bad {votes.both_bad:,}; timeline {len(buckets)} rows, "
        f"{len(stages)} stages"
    )
    for label, times in (("first stage", first_times), ("later stage", later_times)):
        median = statistics.median(times)
        verdict = "PASS" if median < TARGET_S else "FAIL"
        print(
            f"  evaluation at the {label} over {counted:,} counted requests: "
            f"median {median:.3f} s (min {min(times):.3f}, max {max(times):.3f}; n={repeats}) "
            f"target < {TARGET_S:.1f} s: {verdict}  ({median / TARGET_S:.2f} of target)"
        )
    for label, scan, totals in (
        ("first", scan_first, first_times),
        ("later", scan_later, later_times),
    ):
        print(
            f"  {label} stage, grouping the log {statistics.median(scan):.3f} s -> unit totals "
            f"{statistics.median(totals):.3f} s "
            f"({statistics.median(totals) / statistics.median(scan):.2f}x)"
        )
    print(
        f"  report extras (hourly timeline + traffic per stage): median "
        f"{statistics.median(report_times):.3f} s (min {min(report_times):.3f}, "
        f"max {max(report_times):.3f})"
    )


def write_cost(engine: Engine, batches: int = 40, size: int = 500) -> None:
    """Milliseconds per 500-row batch committed as ``LogWriter`` commits it, with the
    ``unit_totals`` trigger and without it, batches alternating."""
    rows, _, _ = generate(batches * size, seed=99)
    batch_rows = [
        [dict(zip(LOG_COLUMNS, row, strict=True)) for row in rows[i : i + size]]
        for i in range(0, len(rows), size)
    ]
    stmt = insert(engine, LOG).on_conflict_do_nothing(index_elements=["request_id"])
    postgres = engine.dialect.name == "postgresql"
    with engine.connect() as conn:  # SQLite has no DISABLE TRIGGER: drop and recreate it
        trigger_sql = (
            ""
            if postgres
            else conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'unit_totals_on_log_insert'"
            ).scalar_one()
        )

    def switch(on: bool) -> None:
        with engine.begin() as conn:
            if postgres:
                state = "ENABLE" if on else "DISABLE"
                conn.exec_driver_sql(
                    f"ALTER TABLE inference_log {state} TRIGGER unit_totals_on_log_insert"
                )
            elif on:
                conn.exec_driver_sql(trigger_sql)
            else:
                conn.exec_driver_sql("DROP TRIGGER unit_totals_on_log_insert")

    times: dict[bool, list[float]] = {True: [], False: []}
    for k, batch in enumerate(batch_rows):
        with_trigger = k % 2 == 0
        if k % 2 == 1:
            switch(False)
        t0 = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(stmt, batch)
        times[with_trigger].append(time.perf_counter() - t0)
        if k % 2 == 1:
            switch(True)
    on, off = (statistics.median(times[flag]) * 1000 for flag in (True, False))
    print(
        f"  log writer, {size}-row batch: {off:.1f} ms without the unit_totals trigger, "
        f"{on:.1f} ms with it ({on / off:.2f}x; {(on - off) * 1000 / size:.0f} us per row)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()

    t0 = time.perf_counter()
    data = generate(args.rows)
    print(
        f"generated {len(data[0]):,} requests, {len(data[1]):,} ratings, {len(data[2]):,} votes "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp:
            path = Path(tmp) / "canary.db"
            engine = create_db_engine(f"sqlite:///{path}")
            try:
                t0 = time.perf_counter()
                migrate(engine)
                seed_sqlite(path, data)
                seed_s = time.perf_counter() - t0
                measure("SQLite", engine, args.rows, seed_s, args.repeats)
                write_cost(engine)
                print(f"  database file {path.stat().st_size / 1e6:.0f} MB")
            finally:
                engine.dispose()
    if args.backend in ("postgres", "both"):
        with postgres_database() as url:
            engine = create_db_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
            try:
                t0 = time.perf_counter()
                migrate(engine)
                seed_postgres(url, data)
                seed_s = time.perf_counter() - t0
                measure("Postgres", engine, args.rows, seed_s, args.repeats)
                write_cost(engine)
            finally:
                engine.dispose()


if __name__ == "__main__":
    main()
