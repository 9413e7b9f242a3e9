"""How long one look of the evaluator takes over 1,000,000 logged requests.

What is measured: one look as the evaluator takes it (``Evaluator._analyse``) —
``router.evaluation.phases.aggregate_look`` (everything a look reads from the database:
per-unit error and thumbs sums of each running phase with their cross-phase products, the
current stage's units of the split, in all and in the SRM window, latency and TTFT samples
of the current stage, votes clustered by voter; its reads at once on one snapshot) then
``experiments.analysis.analyse`` (every statistic and the decision, carrying the previous
look's sequential state) — at the first stage and at the last, on SQLite and on Postgres.
Target: one look over 1,000,000 requests under 2 s on each.

The experiment's phases over its 7 days, as ``store.new_phase`` records them, with the
challenger's share of the split: stage 0 (5%) running from day 0, paused for an hour at
day 2 (no challenger traffic; those rows do not count), stage 0 running again, stage 1
(25%) from day 3, stage 2 (50%) from day 5. The first-stage look is the last one before
the advance at day 3: the three phases known then, over the rows logged by then (3/7 of
them). The last-stage look is at day 7, over every row, four running phases as strata.
The log is seeded in those two parts, so each look reads the log as it stood.

Once every row is in, also: where the last-stage look's time goes (each of its SQL reads
timed from its start to the next statement on its connection; on Postgres they run at
once, four connections sharing the cores; ``--explain`` prints their plans); what a report
adds (``timeline`` in the report's ~60 buckets, ``stage_traffic`` over the phase starts);
the dashboard's ``aggregate()`` (a window of the log, no phases) whose per-unit error sums
come from ``unit_totals`` (running totals a trigger keeps on every log insert) against the
same call grouping the log itself (forced by a window that holds every row), which must
agree; and what that trigger costs the log writer: 500-row batches committed as
``LogWriter`` commits them, alternately with the trigger and without it. A look no longer
reads ``unit_totals`` (its sums are per phase, the totals are not): the trigger serves
the dashboard only.

The data: one experiment on route ``chat`` with ``--rows`` inference rows spread evenly
over 7 days, from ~200k named units (a skewed number of requests per unit) whose arm is
the router's (``router.assignment.bucket_of`` against the phase's share, so a unit of
buckets 500-2499 moves from champion to challenger at stage 1), ~3% ``unassigned`` (a
fresh anonymous unit per request), ~1% forced arms (``override`` and ``arena``, either
arm); realistic statuses (ok ~95.5%, error, timeout, fallback, client gone, rejected,
shadow copies), 30% streamed, lognormal latencies, short prompts and answers stored as
the router stores them; ~10% of requests rated (some twice, by a reviewer, later); ~20k
votes, each between a challenger request and the champion request logged nearest it, by
~2,000 voters (10% anonymous). A few rows of another route and of no experiment are
mixed in, so the filters have something to skip.

How: SQLite is a temporary file migrated with ``router.inference_log.db.migrate`` and
filled with ``executemany`` in 50k-row batches; Postgres is a fresh temporary database on
127.0.0.1:5432 (``CANARY_TEST_POSTGRES`` overrides the admin URL), migrated the same way,
filled with ``COPY``, then ``VACUUM ANALYZE`` after each part (what autovacuum does after
a bulk load), and dropped afterwards. Before each timed series one look runs untimed (the
evaluator looks every few seconds, so the indexes it reads are in memory; the first read
after a bulk load is not that) and hands its sequential state to the timed ones; each
measurement then runs ``--repeats`` times, and the median (min, max) seconds are printed.

Run ``.venv/bin/python benchmarks/evaluate.py`` (``--rows 100000`` for a quick run).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, event

from experiments.analysis import Analysis, Look, SequentialHistory, analyse
from experiments.policy import Policy
from router.assignment import bucket_of
from router.evaluation.aggregate import ARMS, aggregate, stage_traffic, timeline
from router.evaluation.phases import aggregate_look
from router.inference_log.crud import LOG
from router.inference_log.db import create_db_engine, insert, migrate

TARGET_S = 2.0
ROUTE, EXPERIMENT = "chat", "exp-bench"
PG_ADMIN_URL = os.environ.get("CANARY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
POLICY = Policy()  # stages 5%, 25%, 50%
DAY = timedelta(days=1)
START = datetime(2026, 11, 1, tzinfo=UTC)
END = START + 7 * DAY
SPAN_S = (END - START).total_seconds()


def _phase(stage: int, status: str, start: datetime) -> dict[str, Any]:
    """A phase as ``store.new_phase`` records it (its percent is the stage's, paused or not)."""
    percent = POLICY.stages[stage]
    return {
        "stage": stage,
        "status": status,
        "challenger_percent": percent,
        "started_at": start.isoformat(),
    }


PHASES = [
    _phase(0, "running", START),
    _phase(0, "paused", START + 2 * DAY),
    _phase(0, "running", START + 2 * DAY + timedelta(hours=1)),
    _phase(1, "running", START + 3 * DAY),
    _phase(2, "running", START + 5 * DAY),
]
PHASE_STARTS = [datetime.fromisoformat(p["started_at"]) for p in PHASES]
#: The first-stage look is the last before the advance to stage 1; it knows three phases.
FIRST_LOOK, FIRST_PHASES = PHASE_STARTS[3], PHASES[:3]

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
#: Where each table's rows keep their time: the log is seeded in two parts by it.
CREATED = {"log": LOG_COLUMNS.index("created_at"), "feedback": 4, "votes": 0}

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

Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Data:
    """Inference, feedback and vote rows as Python values, in column order."""

    log: Rows = field(default_factory=list)
    feedback: Rows = field(default_factory=list)
    votes: Rows = field(default_factory=list)

    def split(self, at: datetime) -> tuple[Data, Data]:
        """The rows made before ``at``, and the rest."""
        parts: dict[str, tuple[Rows, Rows]] = {}
        for table, column in CREATED.items():
            rows = getattr(self, table)
            parts[table] = (
                [r for r in rows if r[column] < at],
                [r for r in rows if r[column] >= at],
            )
        return Data(*(p[0] for p in parts.values())), Data(*(p[1] for p in parts.values()))

    def tables(self) -> list[tuple[str, list[str], Rows]]:
        return [
            ("inference_log", LOG_COLUMNS, self.log),
            ("feedback", FEEDBACK_COLUMNS, self.feedback),
            ("votes", VOTE_COLUMNS, self.votes),
        ]


# -- synthetic data ------------------------------------------------------------------------


def challenger_bps(at: datetime) -> int:
    """The challenger's share of the split (basis points) in the phase of ``at``."""
    phase = PHASES[bisect.bisect_right(PHASE_STARTS, at) - 1]
    running = phase["status"] == "running"
    return round(float(phase["challenger_percent"]) * 100) if running else 0


def generate(rows: int, seed: int = 7) -> Data:
    """The experiment's log, ratings and votes (see the module docstring)."""
    rng = random.Random(seed)
    units = max(10, rows // 5)
    bucket_of_unit = [bucket_of(ROUTE, EXPERIMENT, f"user-{u}") for u in range(units)]
    status_names = [s[0] for s in STATUSES]
    status_weights = [s[1] for s in STATUSES]
    status_info = {s[0]: s for s in STATUSES}
    reasons = rng.choices(["hash", "unassigned", "override", "arena"], [96, 3, 0.5, 0.5], k=rows)
    prompts = [json.dumps([{"role": "user", "content": p}]) for p in PROMPTS]
    prompt_sha = [hashlib.sha256(p.encode()).hexdigest() for p in prompts]
    answer_sha = [hashlib.sha256(a.encode()).hexdigest() for a in ANSWERS]
    statuses = rng.choices(status_names, status_weights, k=rows)
    log: Rows = []
    ok: dict[str, list[tuple[datetime, str]]] = {arm: [] for arm in ARMS}
    rated: list[tuple[str, str, str, datetime]] = []
    for i in range(rows):
        created = START + timedelta(seconds=SPAN_S * i / rows)
        status, reason = statuses[i], reasons[i]
        bucket: int | None
        if reason == "unassigned":  # no unit sent: a fresh one per request
            unit = f"anon-{rng.getrandbits(128):032x}"
            bucket = bucket_of(ROUTE, EXPERIMENT, unit)
        else:
            u = int(units * rng.random() ** 2)  # skewed: a few heavy users, many light ones
            unit, bucket = f"user-{u}", bucket_of_unit[u]
        arm: str | None
        if reason in ("hash", "unassigned"):
            arm = "challenger" if bucket < challenger_bps(created) else "champion"
        else:  # forced onto an arm by the override header or an arena battle
            arm, bucket = rng.choice(ARMS), None
        route = ROUTE
        experiment: str | None = EXPERIMENT
        if i % 200 == 0:
            route = "other"  # another route's traffic
        elif i % 200 == 1:
            experiment = None  # logged outside the experiment
        served: str | None = arm
        if status == "fallback":
            served = "champion"
        if i % 100 == 2:
            arm = served = "shadow"
        if status == "rejected":
            arm = served = None
        stream = rng.random() < 0.3
        latency = rng.lognormvariate(6.9 if arm != "challenger" else 6.95, 0.5)
        answered = status in ("ok", "fallback")
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
                reason,
                bucket,
                stream,
                prompts[k],
                len(PROMPTS[k]),
                prompt_sha[k],
                ANSWERS[k] if answered else None,
                len(ANSWERS[k]) if answered else 0,
                answer_sha[k] if answered else None,
                "stop" if answered else None,
                status,
                http_status,
                error_type,
                "upstream failed" if error_type else None,
                latency,
                latency * rng.uniform(0.05, 0.2) if stream and answered else None,
                rng.uniform(0, 5),
                12,
                40 if answered else None,
                None,
            )
        )
        if status == "ok" and arm in ok and route == ROUTE and experiment is not None:
            ok[arm].append((created, rid))
            if rng.random() < 0.105:
                p_up = 0.60 if arm == "champion" else 0.63
                rated.append((rid, unit, "up" if rng.random() < p_up else "down", created))
    feedback: Rows = []
    for rid, unit, value, created in rated:
        at = created + timedelta(seconds=rng.uniform(5, 600))
        feedback.append((rid, unit, value, None, at, at))
        if rng.random() < 0.05:  # a reviewer rates it later; the latest rating counts
            later = at + timedelta(hours=1)
            other = "down" if value == "up" else "up"
            feedback.append((rid, "reviewer", other, "reviewed", later, later))
    votes: Rows = []
    voters = max(10, rows // 500)
    champion_times = [t for t, _ in ok["champion"]]
    n = min(len(ok["challenger"]), len(ok["champion"]), rows // 50)
    for created, b in sorted(rng.sample(ok["challenger"], n)):
        j = min(bisect.bisect_left(champion_times, created), len(champion_times) - 1)
        a = ok["champion"][j][1]  # the champion's answer logged nearest the challenger's
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        winner = rng.choices(["a", "b", "tie", "both_bad"], [0.4, 0.4, 0.15, 0.05])[0]
        at = created + timedelta(seconds=rng.uniform(5, 600))
        voter = None if rng.random() < 0.1 else f"user-{int(voters * rng.random() ** 2)}"
        votes.append((at, ROUTE, first, second, winner, voter))
    return Data(log, feedback, votes)


# -- seeding -------------------------------------------------------------------------------


def _sqlite_value(v: Any) -> Any:
    if isinstance(v, datetime):  # SQLAlchemy's SQLite storage format, in UTC
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(v, bool):
        return int(v)
    return v


def seed_sqlite(path: Path, data: Data) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        for table, columns, rows in data.tables():
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
            for i in range(0, len(rows), 50_000):
                conn.executemany(sql, [tuple(map(_sqlite_value, r)) for r in rows[i : i + 50_000]])
        conn.commit()
    finally:
        conn.close()


def seed_postgres(url: str, data: Data) -> None:
    with psycopg.connect(url) as conn:
        for table, columns, rows in data.tables():
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


# -- one look ------------------------------------------------------------------------------


def look(
    engine: Engine,
    phases: Sequence[Mapping[str, Any]],
    at: datetime,
    history: SequentialHistory | None,
    clock: list[tuple[float, float]] | None = None,
) -> Analysis:
    """One look as ``Evaluator._analyse`` takes it at ``at``: the reads, then every
    statistic; and the two things the evaluator stores of it. ``clock`` gets the seconds
    of each part."""
    t0 = time.perf_counter()
    stage = int(phases[-1]["stage"])
    halts = [k for k, p in enumerate(phases) if p["status"] == "halted"]
    srm_since = halts[-1] + 1 if halts else 0
    data = aggregate_look(
        engine,
        route=ROUTE,
        experiment_id=EXPERIMENT,
        phases=phases,
        stage_index=stage,
        srm_since_phase=srm_since,
    )
    t1 = time.perf_counter()
    percent = POLICY.stages[stage]
    current = Look(
        stage_index=stage,
        weights={"champion": 100.0 - percent, "challenger": percent},
        stage_units=data.stage_units,
        srm_units=data.srm_units,
        srm_window=f"stage {stage} from phase {srm_since}",
        elapsed_days=(at - START) / DAY,
    )
    analysis = analyse(
        data.arms["champion"], data.arms["challenger"], data.votes, POLICY, current, history
    )
    analysis.to_dict()
    analysis.sequential_state()
    if clock is not None:
        clock.append((t1 - t0, time.perf_counter() - t1))
    return analysis


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def summary(times: Sequence[float]) -> str:
    return (
        f"median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}; "
        f"n={len(times)})"
    )


def measure_look(
    engine: Engine, label: str, phases: Sequence[Mapping[str, Any]], at: datetime, repeats: int
) -> Analysis:
    """Time ``repeats`` looks after an untimed one whose sequential state they carry."""
    history = look(engine, phases, at, None).sequential_state()
    clock: list[tuple[float, float]] = []
    times, analysis = timed(lambda: look(engine, phases, at, history, clock), repeats)
    reads_s, analyse_s = (statistics.median(part) for part in zip(*clock, strict=True))
    counted = analysis.champion.requests + analysis.challenger.requests
    running = sum(p["status"] == "running" for p in phases)
    print(f"  {label}: {running} running phases, {counted:,} requests counted")
    for arm in ARMS:
        s = getattr(analysis, arm)
        errors, thumbs = s.errors.pooled(), s.thumbs.pooled()
        print(
            f"    {arm:10s} requests={s.requests:,} split units={s.units:,} "
            f"(this stage {analysis.look.stage_units[arm]:,}) errors={int(errors.sum_x):,} "
            f"rated={int(thumbs.sum_y):,} up={int(thumbs.sum_x):,} "
            f"latency sample={len(s.latency_ms):,} ttft sample={len(s.ttft_ms):,}"
        )
    votes, srm = analysis.vote_counts, analysis.srm
    print(
        f"    votes: challenger {votes.challenger_wins:,}, champion {votes.champion_wins:,}, "
        f"ties {votes.ties:,}, both bad {votes.both_bad:,}; SRM {srm.status} "
        f"(p {srm.p_value if srm.p_value is None else round(srm.p_value, 3)}); "
        f"decision {analysis.decision.action}"
    )
    median = statistics.median(times)
    print(
        f"    look: {summary(times)}; target < {TARGET_S:.1f} s: "
        f"{'PASS' if median < TARGET_S else 'FAIL'} ({median / TARGET_S:.2f} of target); "
        f"of it aggregate_look {reads_s:.3f} s, analyse {analyse_s:.3f} s (medians)",
        flush=True,
    )
    return analysis


# -- where a look's time goes --------------------------------------------------------------


@dataclass(slots=True)
class Read:
    label: str
    seconds: float
    statement: str
    parameters: Any


def _label(statement: str, parameters: Any) -> str:
    """Which of ``aggregate_look``'s reads a statement is."""
    s = " ".join(statement.lower().split())
    values = list(parameters.values()) if isinstance(parameters, Mapping) else list(parameters)
    # The read of one arm names it twice: ``arm IN (both)`` and ``arm = it``.
    counts = {arm: values.count(arm) for arm in ARMS}
    arm = max(ARMS, key=counts.__getitem__) if len(set(counts.values())) > 1 else ""
    if "per_voter" in s:
        return "votes per voter"
    if " votes" in s:
        return "votes by outcome"
    if "feedback" in s:
        return "thumbs per unit and phase (both arms)"
    if " limit " in s:
        column = "ttft" if "inference_log.ttft_ms from" in s else "latency"
        return f"{column} sample, {arm}"
    if "per_unit" in s:
        return f"errors per unit and phase, {arm}"
    return ""  # the snapshot's export and import, settings


@contextmanager
def reads(engine: Engine) -> Iterator[list[Read]]:
    """The SQL reads run meanwhile, each timed from its start to the next statement or the
    end of the transaction on its connection (so fetching and summing its rows count)."""
    out: list[Read] = []
    open_reads: dict[int, tuple[float, str, Any]] = {}

    def close(conn: Any) -> None:
        started = open_reads.pop(id(conn.connection.dbapi_connection), None)
        if started is not None:
            t0, statement, parameters = started
            label = _label(statement, parameters)
            if label:
                out.append(Read(label, time.perf_counter() - t0, statement, parameters))

    def before(conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        close(conn)
        open_reads[id(conn.connection.dbapi_connection)] = (
            time.perf_counter(),
            statement,
            parameters,
        )

    listeners: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", before),
        ("commit", close),
        ("rollback", close),
    ]
    for name, fn in listeners:
        event.listen(engine, name, fn)
    try:
        yield out
    finally:
        for name, fn in listeners:
            event.remove(engine, name, fn)
        for t0, statement, parameters in open_reads.values():  # a connection left open
            if label := _label(statement, parameters):
                out.append(Read(label, time.perf_counter() - t0, statement, parameters))


def breakdown(engine: Engine, explain: bool) -> None:
    """One last-stage ``aggregate_look`` with each of its reads timed; their plans with
    ``explain``."""
    t0 = time.perf_counter()
    with reads(engine) as timed_reads:
        aggregate_look(
            engine,
            route=ROUTE,
            experiment_id=EXPERIMENT,
            phases=PHASES,
            stage_index=int(PHASES[-1]["stage"]),
            srm_since_phase=0,
        )
    wall = time.perf_counter() - t0
    total = sum(r.seconds for r in timed_reads)
    mode = "at once on 4 connections" if engine.dialect.name == "postgresql" else "in turn"
    print(
        f"  where the last-stage aggregate_look's time goes: {wall:.3f} s, its reads run {mode} "
        f"(summing {total:.3f} s), each from its start to the next statement on its connection:"
    )
    for r in sorted(timed_reads, key=lambda r: -r.seconds):
        print(f"    {r.seconds:7.3f} s  {r.label}")
    if not explain:
        return
    postgres = engine.dialect.name == "postgresql"
    seen: set[str] = set()
    for r in sorted(timed_reads, key=lambda r: -r.seconds):  # the slower arm of each kind
        kind = r.label.split(",")[0]
        if kind in seen:
            continue
        seen.add(kind)
        print(f"\n  plan of {r.label} ({r.seconds:.3f} s):")
        with engine.connect() as conn, conn.begin():
            if postgres:  # as snapshot.concurrent_reads sets its workers
                conn.exec_driver_sql("SET LOCAL jit = off")
                conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
                sql = "EXPLAIN (ANALYZE, BUFFERS) " + r.statement
            else:
                sql = "EXPLAIN QUERY PLAN " + r.statement
            for row in conn.exec_driver_sql(sql, r.parameters):
                print(f"    {row[0] if postgres else row[-1]}")
    print()


# -- what else a report and the dashboard read ----------------------------------------------


def measure_extras(engine: Engine, repeats: int, last: Analysis) -> None:
    def report() -> tuple[list[Any], list[Any]]:
        buckets = timeline(
            engine,
            route=ROUTE,
            experiment_id=EXPERIMENT,
            since=None,
            bucket_s=max(60.0, SPAN_S / 60),  # as reporting.report_data: ~60 points
        )
        stages = stage_traffic(engine, route=ROUTE, experiment_id=EXPERIMENT, starts=PHASE_STARTS)
        return buckets, stages

    def dashboard(since: datetime | None) -> Callable[[], Any]:
        return lambda: aggregate(engine, route=ROUTE, experiment_id=EXPERIMENT, since=since)

    dashboard(None)()  # unit_totals has not been read yet
    totals_times, (arms, votes) = timed(dashboard(None), repeats)
    scan_times, scanned = timed(dashboard(START - DAY), repeats)  # a window over every row
    if scanned != (arms, votes):
        raise SystemExit("the dashboard's unit totals and its log scan disagree")
    paused = {arm: arms[arm].requests - getattr(last, arm).requests for arm in ARMS}
    totals, scan = statistics.median(totals_times), statistics.median(scan_times)
    print(
        f"  dashboard aggregate() over the whole experiment: per-unit errors from unit_totals "
        f"{summary(totals_times)}, grouping the log {summary(scan_times)} "
        f"(totals {totals / scan:.2f}x); it counts {sum(paused.values()):,} more requests "
        f"than the look (the paused hour: champion {paused['champion']:,}, "
        f"challenger {paused['challenger']:,})"
    )
    report_times, (buckets, stages) = timed(report, repeats)
    per_phase = ", ".join(f"{sum(s['requests'].values()):,}" for s in stages)
    print(
        f"  report extras (timeline, {len(buckets)} rows; traffic per phase: {per_phase}): "
        f"{summary(report_times)}",
        flush=True,
    )


def write_cost(engine: Engine, batches: int = 40, size: int = 500) -> None:
    """Milliseconds per 500-row batch committed as ``LogWriter`` commits it, with the
    ``unit_totals`` trigger and without it, batches alternating."""
    rows = generate(batches * size, seed=99).log
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
        if not with_trigger:
            switch(False)
        t0 = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(stmt, batch)
        times[with_trigger].append(time.perf_counter() - t0)
        if not with_trigger:
            switch(True)
    on, off = (statistics.median(times[flag]) * 1000 for flag in (True, False))
    print(
        f"  log writer, {size}-row batch: {off:.1f} ms without the unit_totals trigger, "
        f"{on:.1f} ms with it ({on / off:.2f}x; {(on - off) * 1000 / size:.0f} us per row)",
        flush=True,
    )


# -- one backend ---------------------------------------------------------------------------


def run_backend(
    name: str,
    engine: Engine,
    seed: Callable[[Data], None],
    parts: tuple[Data, Data],
    args: argparse.Namespace,
) -> None:
    early, late = parts
    print(f"\n{name}:", flush=True)
    t0 = time.perf_counter()
    migrate(engine)
    seed(early)
    print(f"  {len(early.log):,} rows (days 0-3) seeded in {time.perf_counter() - t0:.1f} s")
    measure_look(engine, "first stage, day 3 (5%)", FIRST_PHASES, FIRST_LOOK, args.repeats)
    t0 = time.perf_counter()
    seed(late)
    print(f"  {len(late.log):,} more rows (days 3-7) seeded in {time.perf_counter() - t0:.1f} s")
    last = measure_look(engine, "last stage, day 7 (50%)", PHASES, END, args.repeats)
    breakdown(engine, args.explain)
    measure_extras(engine, args.repeats, last)
    write_cost(engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--explain", action="store_true", help="plans of the look's reads")
    args = parser.parse_args()

    t0 = time.perf_counter()
    data = generate(args.rows)
    parts = data.split(FIRST_LOOK)
    print(
        f"generated {len(data.log):,} requests, {len(data.feedback):,} ratings, "
        f"{len(data.votes):,} votes in {time.perf_counter() - t0:.1f} s; load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores",
        flush=True,
    )
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory(prefix="canary-bench-") as tmp:
            path = Path(tmp) / "canary.db"
            engine = create_db_engine(f"sqlite:///{path}")
            try:
                run_backend("SQLite", engine, lambda d: seed_sqlite(path, d), parts, args)
                print(f"  database file {path.stat().st_size / 1e6:.0f} MB")
            finally:
                engine.dispose()
    if args.backend in ("postgres", "both"):
        with postgres_database() as url:
            engine = create_db_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
            try:
                run_backend("Postgres", engine, lambda d: seed_postgres(url, d), parts, args)
            finally:
                engine.dispose()
    print(f"load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
