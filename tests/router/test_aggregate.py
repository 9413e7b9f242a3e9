"""The evaluator's SQL aggregation, checked against a Python reference on SQLite and Postgres."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, text

from experiments.stats import ArmStats, PhasedSums, RatioSums, VoteCounts
from router.evaluation.aggregate import ARMS, FAILED, SPLIT, aggregate, stage_traffic, timeline
from router.evaluation.phases import LookData, aggregate_look
from router.inference_log.crud import FEEDBACK, LOG, VOTES
from router.inference_log.db import create_db_engine, insert, migrate

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
#: What ``aggregate`` gives an arm without rows: one phase, empty.
NO_ROWS = ArmStats(errors=PhasedSums.single(RatioSums()), thumbs=PhasedSums.single(RatioSums()))
STATUSES = ["ok"] * 12 + ["error", "timeout", "fallback", "client_disconnected", "rejected"]
#: Assignment reasons: mostly the split, sometimes a forced arm (override, arena battle).
REASONS = ["hash"] * 6 + ["unassigned", "override", "arena"]


# -- databases: a fresh SQLite file per test; one migrated Postgres, truncated per test ------


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_db_engine(postgres_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = create_db_engine(f"sqlite:///{tmp_path / 'canary.db'}")
        migrate(engine)
        yield engine
        engine.dispose()
        return
    engine = request.getfixturevalue("postgres_engine")
    truncate = text("TRUNCATE votes, feedback, inference_log, unit_totals RESTART IDENTITY")
    with engine.begin() as conn:
        conn.execute(truncate)
    yield engine
    with engine.begin() as conn:  # leave the shared database empty for other tests
        conn.execute(truncate)


# -- data --------------------------------------------------------------------------------


def log_row(
    request_id: str,
    arm: str | None,
    unit: str | None,
    status: str = "ok",
    *,
    route: str = "chat",
    experiment: str | None = "exp-1",
    latency: float = 100.0,
    ttft: float | None = None,
    at: datetime = T0,
    reason: str = "hash",
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "created_at": at,
        "route": route,
        "experiment_id": experiment,
        "arm": arm,
        "unit_id": unit,
        "assignment_reason": reason,
        "status": status,
        "http_status": 200,
        "stream": ttft is not None,
        "prompt_chars": 2,
        "response_chars": 2,
        "latency_ms": latency,
        "ttft_ms": ttft,
    }


def rating(request_id: str, unit: str, value: str, at: datetime) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "unit_id": unit,
        "value": value,
        "created_at": at,
        "updated_at": at,
    }


def a_vote(
    a: str,
    b: str,
    winner: str,
    *,
    at: datetime = T0,
    route: str = "chat",
    unit: str | None = None,
) -> dict[str, Any]:
    return {
        "created_at": at,
        "route": route,
        "request_id_a": a,
        "request_id_b": b,
        "winner": winner,
        "unit_id": unit,
    }


def store(
    engine: Engine,
    rows: list[dict[str, Any]],
    ratings: list[dict[str, Any]] = (),  # type: ignore[assignment]
    votes: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> None:
    with engine.begin() as conn:
        conn.execute(LOG.insert(), rows)
        if ratings:
            conn.execute(FEEDBACK.insert(), list(ratings))
        if votes:
            conn.execute(VOTES.insert(), list(votes))


def random_dataset(seed: int = 3) -> tuple[list[dict[str, Any]], ...]:
    """~400 requests of 30 units on two routes, three experiment ids, shadow copies, ratings
    (some rated again by others, some ties in time) and votes, a few of them not counted."""
    rng = random.Random(seed)
    rows, ratings, votes = [], [], []
    for i in range(400):
        unit = f"u{rng.randrange(30)}"
        arm = rng.choice([*ARMS, *ARMS, "shadow"])
        status = rng.choice(STATUSES)
        rows.append(
            log_row(
                f"r{i:04d}",
                None if status == "rejected" and rng.random() < 0.5 else arm,
                unit,
                status,
                route=rng.choice(["chat"] * 5 + ["other"]),
                experiment=rng.choice(["exp-1"] * 4 + ["exp-2", None]),
                latency=rng.uniform(50, 500),
                ttft=rng.uniform(5, 50) if rng.random() < 0.4 else None,
                at=T0 + timedelta(seconds=i * 30),
                reason=rng.choice(REASONS),
            )
        )
    for row in rng.sample(rows, 150):
        at = row["created_at"] + timedelta(seconds=rng.randrange(1, 60))
        ratings.append(rating(row["request_id"], row["unit_id"], rng.choice(["up", "down"]), at))
        if rng.random() < 0.3:  # someone else rates it later, or at the very same moment
            later = at + timedelta(seconds=rng.choice([0, 0, 5]))
            ratings.append(rating(row["request_id"], "reviewer", rng.choice(["up", "down"]), later))
    for _ in range(80):
        a, b = rng.sample(rows, 2)
        votes.append(
            a_vote(
                a["request_id"],
                b["request_id"],
                rng.choice(["a", "b", "tie", "both_bad"]),
                at=T0 + timedelta(seconds=rng.randrange(12_000)),
            )
        )
    return rows, ratings, votes


# -- the Python reference ------------------------------------------------------------------


def counted(
    row: dict[str, Any], route: str, experiment: str | None, since: datetime | None
) -> bool:
    return (
        row["route"] == route
        and row["experiment_id"] == experiment
        and row["arm"] in ARMS
        and row["status"] != "rejected"
        and (since is None or row["created_at"] >= since)
    )


def ratio_sums(per_unit: dict[str, list[int]]) -> RatioSums:
    """Sums over units with y > 0 of x, y, x², y², xy (the delta method's inputs)."""
    units = [(x, y) for x, y in per_unit.values() if y > 0]
    return RatioSums(
        units=len(units),
        sum_x=float(sum(x for x, _ in units)),
        sum_y=float(sum(y for _, y in units)),
        sum_x2=float(sum(x * x for x, _ in units)),
        sum_y2=float(sum(y * y for _, y in units)),
        sum_xy=float(sum(x * y for x, y in units)),
    )


def reference(
    rows: list[dict[str, Any]],
    ratings: list[dict[str, Any]],
    votes: list[dict[str, Any]],
    *,
    route: str = "chat",
    experiment: str | None = "exp-1",
    since: datetime | None = None,
) -> tuple[dict[str, ArmStats], VoteCounts]:
    by_id = {r["request_id"]: r for r in rows}
    latest: dict[str, tuple[datetime, int, str]] = {}
    for i, f in enumerate(ratings):  # ids are given in insertion order: ties go to the later
        key = (f["updated_at"], i, f["value"])
        latest[f["request_id"]] = max(latest.get(f["request_id"], key), key)
    stats = {}
    for arm in ARMS:
        mine = [r for r in rows if counted(r, route, experiment, since) and r["arm"] == arm]
        errors: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        thumbs: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in mine:
            errors[r["unit_id"]][0] += r["status"] in FAILED
            errors[r["unit_id"]][1] += 1
            if r["request_id"] in latest:
                thumbs[r["unit_id"]][0] += latest[r["request_id"]][2] == "up"
                thumbs[r["unit_id"]][1] += 1
        ok = [r for r in mine if r["status"] == "ok"]
        stats[arm] = ArmStats(
            requests=len(mine),
            units=len({r["unit_id"] for r in mine if r["assignment_reason"] in SPLIT}),
            errors=PhasedSums.single(ratio_sums(errors)),
            thumbs=PhasedSums.single(ratio_sums(thumbs)),
            latency_ms=tuple(sorted(r["latency_ms"] for r in ok)),
            ttft_ms=tuple(sorted(r["ttft_ms"] for r in ok if r["ttft_ms"] is not None)),
        )
    outcomes: dict[str, int] = defaultdict(int)
    for v in votes:
        a, b = by_id[v["request_id_a"]], by_id[v["request_id_b"]]
        if (
            v["route"] == route
            and a["experiment_id"] == b["experiment_id"] == experiment
            and {a["arm"], b["arm"]} == set(ARMS)
            and (since is None or v["created_at"] >= since)
        ):
            outcomes[{"a": a["arm"], "b": b["arm"]}.get(v["winner"], v["winner"])] += 1
    return stats, VoteCounts(
        challenger_wins=outcomes["challenger"],
        champion_wins=outcomes["champion"],
        ties=outcomes["tie"],
        both_bad=outcomes["both_bad"],
    )


def sorted_samples(stats: dict[str, ArmStats]) -> dict[str, ArmStats]:
    """Samples come in request-id order; compare them as multisets."""
    return {
        arm: ArmStats(
            s.requests,
            s.units,
            s.errors,
            s.thumbs,
            tuple(sorted(s.latency_ms)),
            tuple(sorted(s.ttft_ms)),
        )
        for arm, s in stats.items()
    }


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", ["exp-1", "exp-2", None])
@pytest.mark.parametrize("route", ["chat", "other"])
def test_sums_match_the_python_reference(
    engine: Engine, experiment: str | None, route: str
) -> None:
    rows, ratings, votes = random_dataset()
    store(engine, rows, ratings, votes)
    arms, votes_seen = aggregate(engine, route=route, experiment_id=experiment)
    expected, expected_votes = reference(rows, ratings, votes, route=route, experiment=experiment)
    assert sorted_samples(arms) == expected
    assert votes_seen == expected_votes
    # The dataset is rich enough for the comparison to mean something.
    if (route, experiment) == ("chat", "exp-1"):
        for arm in ARMS:
            errors, thumbs = expected[arm].errors.pooled(), expected[arm].thumbs.pooled()
            assert errors.sum_x > 0
            assert thumbs.sum_x > 0
            assert errors.units > thumbs.units > 0
            assert expected[arm].ttft_ms
            # Some units came only through forced arms: they are no units of the split.
            assert 0 < expected[arm].units < errors.units
        assert (
            min(expected_votes.challenger_wins, expected_votes.champion_wins, expected_votes.ties)
            > 0
        )


def test_since_keeps_later_requests_and_votes(engine: Engine) -> None:
    rows, ratings, votes = random_dataset(seed=11)
    store(engine, rows, ratings, votes)
    since = T0 + timedelta(hours=1, minutes=7)
    arms, votes_seen = aggregate(engine, route="chat", experiment_id="exp-1", since=since)
    expected, expected_votes = reference(rows, ratings, votes, since=since)
    assert sorted_samples(arms) == expected
    assert votes_seen == expected_votes
    everything, _ = aggregate(engine, route="chat", experiment_id="exp-1")
    assert 0 < arms["champion"].requests < everything["champion"].requests


def test_per_unit_sums_by_hand(engine: Engine) -> None:
    # champion: unit p has 3 requests (1 error, 1 fallback), unit q 1 request (timeout);
    # challenger: unit r has 2 ok requests. A client that left is not the arm's failure.
    store(
        engine,
        [
            log_row("c1", "champion", "p", "ok"),
            log_row("c2", "champion", "p", "error"),
            log_row("c3", "champion", "p", "fallback"),
            log_row("c4", "champion", "q", "timeout"),
            log_row("c5", "champion", "q", "client_disconnected"),
            log_row("h1", "challenger", "r", "ok"),
            log_row("h2", "challenger", "r", "ok"),
        ],
    )
    arms, _ = aggregate(engine, route="chat", experiment_id="exp-1")
    # p: x=2, y=3; q: x=1, y=2.
    assert arms["champion"].requests == 5
    assert arms["champion"].units == 2
    assert arms["champion"].errors == PhasedSums.single(RatioSums(2, 3.0, 5.0, 5.0, 13.0, 8.0))
    assert arms["challenger"].errors == PhasedSums.single(RatioSums(1, 0.0, 2.0, 0.0, 4.0, 0.0))
    assert arms["champion"].thumbs == PhasedSums.single(RatioSums()) == arms["challenger"].thumbs


def test_latest_rating_per_request_counts_whoever_gave_it(engine: Engine) -> None:
    later = T0 + timedelta(minutes=5)
    store(
        engine,
        [log_row("c1", "champion", "p"), log_row("c2", "champion", "p")],
        [
            rating("c1", "p", "up", T0),
            rating("c1", "reviewer", "down", later),  # the latest: c1 is a thumbs-down
            rating("c2", "reviewer", "down", T0),
            rating("c2", "p", "up", later),  # the latest: c2 is a thumbs-up
        ],
    )
    arms, _ = aggregate(engine, route="chat", experiment_id="exp-1")
    # One unit, two rated requests, one up: x=1, y=2.
    assert arms["champion"].thumbs == PhasedSums.single(RatioSums(1, 1.0, 2.0, 1.0, 4.0, 2.0))


def test_rejected_shadow_and_other_routes_or_experiments_do_not_count(engine: Engine) -> None:
    store(
        engine,
        [
            log_row("c1", "champion", "p"),
            log_row("x1", "champion", "p", "rejected"),
            log_row("x2", None, None, "rejected"),
            log_row("x3", "shadow", "p"),
            log_row("x4", "champion", "p", route="other"),
            log_row("x5", "champion", "p", experiment="exp-2"),
            log_row("x6", "champion", "p", experiment=None),
        ],
        [rating(i, "p", "up", T0) for i in ("c1", "x1", "x3", "x4", "x5", "x6")],
    )
    arms, _ = aggregate(engine, route="chat", experiment_id="exp-1")
    assert (arms["champion"].requests, arms["champion"].units) == (1, 1)
    assert arms["champion"].thumbs == PhasedSums.single(RatioSums(1, 1.0, 1.0, 1.0, 1.0, 1.0))
    assert arms["champion"].latency_ms == (100.0,)
    assert arms["challenger"] == NO_ROWS
    outside, _ = aggregate(engine, route="chat", experiment_id=None)
    assert outside["champion"].requests == 1
    assert outside["champion"].thumbs.pooled().sum_x == 1.0


def test_votes_map_a_and_b_to_the_arms_of_their_rows(engine: Engine) -> None:
    store(
        engine,
        [
            log_row("c1", "champion", "p"),
            log_row("h1", "challenger", "p"),
            log_row("c2", "champion", "p"),
            log_row("s1", "shadow", "p"),
            log_row("o1", "challenger", "p", experiment="exp-2"),
        ],
        votes=[
            a_vote("c1", "h1", "a"),  # champion
            a_vote("h1", "c1", "a"),  # challenger
            a_vote("h1", "c1", "a"),  # challenger
            a_vote("c1", "h1", "b"),  # challenger
            a_vote("h1", "c1", "b"),  # champion
            a_vote("c1", "h1", "tie"),
            a_vote("h1", "c1", "both_bad"),
            a_vote("c1", "c2", "a"),  # same arm: not a comparison
            a_vote("c1", "s1", "a"),  # shadow
            a_vote("c1", "o1", "b"),  # another experiment's answer
            a_vote("c1", "h1", "a", route="other"),
        ],
    )
    _, votes = aggregate(engine, route="chat", experiment_id="exp-1")
    assert votes == VoteCounts(challenger_wins=3, champion_wins=2, ties=1, both_bad=1)


def test_latency_samples_are_bounded_and_drawn_from_successful_requests(engine: Engine) -> None:
    rows = [
        log_row(
            f"r{i:03d}",
            "challenger",
            f"u{i % 7}",
            "ok" if i % 5 else "error",
            latency=float(i),
            ttft=float(i) / 10 if i % 2 else None,
        )
        for i in range(200)
    ]
    store(engine, rows)
    ok = {r["latency_ms"] for r in rows if r["status"] == "ok"}
    ttft = {r["ttft_ms"] for r in rows if r["status"] == "ok" and r["ttft_ms"] is not None}
    full, _ = aggregate(engine, route="chat", experiment_id="exp-1")
    assert sorted(full["challenger"].latency_ms) == sorted(ok)
    assert sorted(full["challenger"].ttft_ms) == sorted(ttft)
    small, _ = aggregate(engine, route="chat", experiment_id="exp-1", latency_sample=25)
    sample = small["challenger"]
    assert len(sample.latency_ms) == 25 == len(set(sample.latency_ms))
    assert set(sample.latency_ms) <= ok
    assert len(sample.ttft_ms) == 25
    assert set(sample.ttft_ms) <= ttft
    # Deterministic: the same rows give the same sample.
    again, _ = aggregate(engine, route="chat", experiment_id="exp-1", latency_sample=25)
    assert again["challenger"].latency_ms == sample.latency_ms
    none, _ = aggregate(engine, route="chat", experiment_id="exp-1", latency_sample=0)
    assert none["challenger"].latency_ms == () == none["challenger"].ttft_ms
    assert none["challenger"].requests == 200


def test_empty_log_gives_zero_stats(engine: Engine) -> None:
    arms, votes = aggregate(engine, route="chat", experiment_id="exp-1")
    assert arms == {"champion": NO_ROWS, "challenger": NO_ROWS}
    assert votes == VoteCounts()
    assert timeline(engine, route="chat", experiment_id="exp-1", since=None, bucket_s=60) == []


def test_timeline_buckets_requests_errors_and_thumbs(engine: Engine) -> None:
    rows, ratings, votes = random_dataset(seed=5)
    store(engine, rows, ratings, votes)
    since = T0 + timedelta(minutes=20)
    got = timeline(engine, route="chat", experiment_id="exp-1", since=since, bucket_s=600)
    latest: dict[str, tuple[datetime, int, str]] = {}
    for i, f in enumerate(ratings):
        key = (f["updated_at"], i, f["value"])
        latest[f["request_id"]] = max(latest.get(f["request_id"], key), key)
    expected: dict[tuple[datetime, str], dict[str, Any]] = {}
    for r in rows:
        if not counted(r, "chat", "exp-1", since):
            continue
        epoch = int(r["created_at"].timestamp())
        start = datetime.fromtimestamp(epoch - epoch % 600, UTC)
        slot = expected.setdefault(
            (start, r["arm"]),
            {"start": start, "arm": r["arm"], "requests": 0, "errors": 0, "ups": 0, "rated": 0},
        )
        slot["requests"] += 1
        slot["errors"] += r["status"] in FAILED
        if r["request_id"] in latest:
            slot["rated"] += 1
            slot["ups"] += latest[r["request_id"]][2] == "up"
    assert got == [expected[k] for k in sorted(expected)]
    assert len(got) > 10
    assert sum(b["rated"] for b in got) > 0


def test_timeline_refuses_a_bucket_under_a_second(engine: Engine) -> None:
    with pytest.raises(ValueError, match="bucket_s"):
        timeline(engine, route="chat", experiment_id=None, since=None, bucket_s=0.5)


def test_forced_arms_count_as_requests_and_votes_but_not_as_units(engine: Engine) -> None:
    # Unit p was assigned by the split; q only ever came through forced arms (an arena
    # battle asks both arms; the X-Canary-Arm override picks one).
    store(
        engine,
        [
            log_row("c1", "champion", "p"),
            log_row("c2", "champion", "q", reason="arena"),
            log_row("h2", "challenger", "q", "error", reason="arena"),
            log_row("h3", "challenger", "q", reason="override"),
            log_row("c4", "champion", "r", reason="unassigned"),
        ],
        [rating("h3", "q", "up", T0)],
        [a_vote("c2", "h2", "b")],  # the arena battle's vote: the challenger won
    )
    arms, votes = aggregate(engine, route="chat", experiment_id="exp-1")
    assert (arms["champion"].requests, arms["champion"].units) == (3, 2)  # p and r
    assert (arms["challenger"].requests, arms["challenger"].units) == (2, 0)
    assert arms["challenger"].errors == PhasedSums.single(RatioSums(1, 1.0, 2.0, 1.0, 4.0, 2.0))
    assert arms["challenger"].thumbs.pooled().sum_x == 1.0
    assert votes == VoteCounts(challenger_wins=1)
    # A window groups the log itself, not the unit totals: forced units left out there too.
    scanned, _ = aggregate(
        engine, route="chat", experiment_id="exp-1", since=T0 - timedelta(days=1)
    )
    assert scanned == arms


def test_a_window_counts_the_units_the_split_assigned_in_it(engine: Engine) -> None:
    rows, ratings, votes = random_dataset(seed=13)
    store(engine, rows, ratings, votes)
    window_start = T0 + timedelta(hours=1, minutes=40)
    window, _ = aggregate(engine, route="chat", experiment_id="exp-1", since=window_start)
    expected = {
        arm: len(
            {
                r["unit_id"]
                for r in rows
                if counted(r, "chat", "exp-1", window_start)
                and r["arm"] == arm
                and r["assignment_reason"] in SPLIT
            }
        )
        for arm in ARMS
    }
    assert {arm: window[arm].units for arm in ARMS} == expected
    whole, _ = aggregate(engine, route="chat", experiment_id="exp-1")
    for arm in ARMS:  # the window is part of the experiment, and not all of it
        assert 0 < window[arm].units < whole[arm].units
        assert window[arm].units < window[arm].errors.distinct_units  # forced units too


def test_stage_traffic_counts_requests_and_split_units_per_stage(engine: Engine) -> None:
    rows, ratings, votes = random_dataset(seed=17)
    store(engine, rows, ratings, votes)
    starts = [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2, minutes=30)]
    got = stage_traffic(engine, route="chat", experiment_id="exp-1", starts=starts)
    ends = [*starts[1:], T0 + timedelta(days=1)]
    expected = []
    for start, end in zip(starts, ends, strict=True):
        mine = [r for r in rows if counted(r, "chat", "exp-1", start) and r["created_at"] < end]
        expected.append(
            {
                "requests": {arm: sum(r["arm"] == arm for r in mine) for arm in ARMS},
                "units": {
                    arm: len(
                        {
                            r["unit_id"]
                            for r in mine
                            if r["arm"] == arm and r["assignment_reason"] in SPLIT
                        }
                    )
                    for arm in ARMS
                },
            }
        )
    assert got == expected
    assert all(stage["requests"]["challenger"] > 0 for stage in got)
    one = stage_traffic(engine, route="chat", experiment_id="exp-1", starts=[T0])
    everything, _ = aggregate(engine, route="chat", experiment_id="exp-1")
    assert one[0]["requests"] == {arm: everything[arm].requests for arm in ARMS}
    assert one[0]["units"] == {arm: everything[arm].units for arm in ARMS}
    assert stage_traffic(engine, route="chat", experiment_id="exp-1", starts=[]) == []


def test_unit_totals_count_every_row_once_across_batches_and_replays(engine: Engine) -> None:
    # The writer commits batches, and replays a spill file with ON CONFLICT DO NOTHING
    # after a crash: the trigger's totals must count each logged row once.
    rows, ratings, votes = random_dataset(seed=19)
    write = insert(engine, LOG).on_conflict_do_nothing(index_elements=["request_id"])
    for i in range(0, len(rows), 70):
        with engine.begin() as conn:
            conn.execute(write, rows[i : i + 70])
    with engine.begin() as conn:
        conn.execute(write, rows[:150])  # the replay: nothing new
        conn.execute(FEEDBACK.insert(), ratings)
        conn.execute(VOTES.insert(), votes)
    arms, _ = aggregate(engine, route="chat", experiment_id="exp-1")
    expected, _ = reference(rows, ratings, votes)
    assert sorted_samples(arms) == expected
    # The totals (a whole experiment) and the log scan (any window) agree.
    scanned, _ = aggregate(
        engine, route="chat", experiment_id="exp-1", since=T0 - timedelta(days=1)
    )
    assert sorted_samples(scanned) == sorted_samples(arms)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrade_fills_unit_totals_from_rows_logged_before_it(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'old.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("fresh_postgres_url")
    )
    engine = create_db_engine(url)
    try:
        migrate(engine, "0005")  # the schema before unit_totals
        rows, ratings, votes = random_dataset(seed=23)
        store(engine, rows[:300])
        migrate(engine)
        store(engine, rows[300:], ratings, votes)
        arms, votes_seen = aggregate(engine, route="chat", experiment_id="exp-1")
        expected, expected_votes = reference(rows, ratings, votes)
        assert sorted_samples(arms) == expected
        assert votes_seen == expected_votes
        with engine.connect() as conn:
            totals = conn.execute(text("SELECT sum(requests) FROM unit_totals")).scalar_one()
        counted_rows = [r for r in rows if r["arm"] in ARMS and r["status"] != "rejected"]
        assert totals == len(counted_rows)
    finally:
        engine.dispose()


# -- looks over phases ----------------------------------------------------------------------


def phase(stage: int, status: str, at: datetime, percent: float = 10.0) -> dict[str, Any]:
    return {
        "stage": stage,
        "status": status,
        "challenger_percent": percent,
        "started_at": at.isoformat(),
    }


def look(engine: Engine, phases: list[dict[str, Any]], stage: int, **kwargs: Any) -> LookData:
    kwargs.setdefault("srm_since_phase", 0)
    return aggregate_look(
        engine, route="chat", experiment_id="exp-1", phases=phases, stage_index=stage, **kwargs
    )


def phased_sums(x: np.ndarray, y: np.ndarray) -> PhasedSums:
    """PhasedSums of per-unit counts: ``x``, ``y`` of shape (units, phases)."""
    x, y = x[y.sum(axis=1) > 0], y[y.sum(axis=1) > 0]

    def matrix(m: np.ndarray) -> tuple[tuple[float, ...], ...]:
        return tuple(tuple(float(v) for v in r) for r in m)

    return PhasedSums(
        units=tuple(int(n) for n in (y > 0).sum(axis=0)),
        sum_x=tuple(float(v) for v in x.sum(axis=0)),
        sum_y=tuple(float(v) for v in y.sum(axis=0)),
        xx=matrix(x.T @ x),
        xy=matrix(x.T @ y),
        yy=matrix(y.T @ y),
        distinct_units=len(y),
    )


def look_reference(
    rows: list[dict[str, Any]],
    ratings: list[dict[str, Any]],
    votes: list[dict[str, Any]],
    phases: list[dict[str, Any]],
    stage: int,
    srm_since: int,
) -> LookData:
    """``aggregate_look`` in plain Python and numpy, row by row."""
    starts = [datetime.fromisoformat(p["started_at"]) for p in phases]
    ends = [*starts[1:], datetime.max.replace(tzinfo=UTC)]
    strata = [i for i, p in enumerate(phases) if p["status"] == "running"]

    def stratum(at: datetime) -> int | None:
        for k, i in enumerate(strata):
            if starts[i] <= at < ends[i]:
                return k
        return None

    current = {k for k, i in enumerate(strata) if phases[i]["stage"] == stage}
    srm = {k for k in current if strata[k] >= srm_since}
    latest: dict[str, tuple[datetime, int, str]] = {}
    for i, f in enumerate(ratings):
        key = (f["updated_at"], i, f["value"])
        latest[f["request_id"]] = max(latest.get(f["request_id"], key), key)
    arms, stage_units, srm_units = {}, {}, {}
    for arm in ARMS:
        mine = [
            (r, stratum(r["created_at"]))
            for r in rows
            if counted(r, "chat", "exp-1", None) and r["arm"] == arm
        ]
        mine = [(r, k) for r, k in mine if k is not None]
        units = sorted({r["unit_id"] for r, _ in mine})
        index = {u: n for n, u in enumerate(units)}
        shape = (len(units), len(strata))
        ex, ey, tx, ty = (np.zeros(shape) for _ in range(4))
        for r, k in mine:
            n = index[r["unit_id"]]
            ex[n, k] += r["status"] in FAILED
            ey[n, k] += 1
            if r["request_id"] in latest:
                tx[n, k] += latest[r["request_id"]][2] == "up"
                ty[n, k] += 1

        def split_units(keep: set[int] | None, mine: list[Any] = mine) -> int:
            return len(
                {
                    r["unit_id"]
                    for r, k in mine
                    if r["assignment_reason"] in SPLIT and (keep is None or k in keep)
                }
            )

        def sample(column: str, mine: list[Any] = mine) -> tuple[float, ...]:
            values = []
            for r, k in mine:
                if k not in current or (column == "ttft_ms" and r["ttft_ms"] is None):
                    continue  # the dataset marks streamed rows by a TTFT, failed ones too
                if r["status"] in FAILED:
                    values.append(math.inf)
                elif r["status"] == "ok":
                    values.append(r[column])
            return tuple(sorted(values))

        arms[arm] = ArmStats(
            requests=len(mine),
            units=split_units(None),
            errors=phased_sums(ex, ey),
            thumbs=phased_sums(tx, ty),
            latency_ms=sample("latency_ms"),
            ttft_ms=sample("ttft_ms"),
        )
        stage_units[arm], srm_units[arm] = split_units(current), split_units(srm)
    _, counts = reference(rows, ratings, votes)
    by_id = {r["request_id"]: r for r in rows}
    voters: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for n, v in enumerate(votes):
        a, b = by_id[v["request_id_a"]], by_id[v["request_id_b"]]
        if not (
            v["route"] == "chat"
            and a["experiment_id"] == b["experiment_id"] == "exp-1"
            and {a["arm"], b["arm"]} == set(ARMS)
        ):
            continue
        winner = {"a": a["arm"], "b": b["arm"]}.get(v["winner"])
        voter = voters[v["unit_id"] if v["unit_id"] is not None else ("vote", n)]
        voter[0] += winner == "challenger"
        voter[1] += winner is not None
    counts = VoteCounts(
        counts.challenger_wins,
        counts.champion_wins,
        counts.ties,
        counts.both_bad,
        per_voter=ratio_sums(voters),
    )
    return LookData(arms, counts, stage_units, srm_units)


def sorted_look(data: LookData) -> LookData:
    return LookData(sorted_samples(data.arms), data.votes, data.stage_units, data.srm_units)


def test_look_matches_the_python_reference_over_phases(engine: Engine) -> None:
    rows, ratings, votes = random_dataset(seed=29)
    rng = random.Random(29)
    for v in votes:  # some voters cast several votes; some votes have no voter
        v["unit_id"] = rng.choice([None, "v1", "v2", "v3", "v4"])
    store(engine, rows, ratings, votes)
    # 400 rows, one every 30 s: 200 minutes. Stage 0, paused, resumed, stage 1, halted,
    # resumed; the halt's phase and the pause's are left out.
    phases = [
        phase(0, "running", T0),
        phase(0, "paused", T0 + timedelta(minutes=30)),
        phase(0, "running", T0 + timedelta(minutes=50)),
        phase(1, "running", T0 + timedelta(minutes=90)),
        phase(1, "halted", T0 + timedelta(minutes=130)),
        phase(1, "running", T0 + timedelta(minutes=150)),
    ]
    got = look(engine, phases, 1, srm_since_phase=5)
    expected = look_reference(rows, ratings, votes, phases, stage=1, srm_since=5)
    assert sorted_look(got) == expected
    for arm in ARMS:  # the data exercise what the test compares
        errors = got.arms[arm].errors
        assert errors.phases == 4
        assert all(n > 0 for n in errors.units)
        assert errors.distinct_units < sum(errors.units)  # units span phases
        off = [(k, m) for k in range(4) for m in range(4) if k != m]
        assert any(errors.xy[k][m] > 0 for k, m in off)
        assert all(errors.yy[k][m] > 0 for k, m in off)
        assert math.inf in got.arms[arm].latency_ms
        assert 0 < got.srm_units[arm] < got.stage_units[arm] < got.arms[arm].units
    assert got.votes.per_voter is not None
    assert got.votes.per_voter.units < got.votes.challenger_wins + got.votes.champion_wins


def test_look_sums_per_phase_by_hand_and_leaves_paused_rows_out(engine: Engine) -> None:
    minute = timedelta(minutes=1)
    phases = [
        phase(0, "running", T0),
        phase(0, "paused", T0 + 10 * minute),
        phase(0, "running", T0 + 20 * minute),
        phase(1, "running", T0 + 30 * minute),
    ]
    store(
        engine,
        [
            log_row("p1", "champion", "p", "ok", at=T0 + minute),  # stratum 0
            log_row("p2", "champion", "p", "error", at=T0 + 5 * minute),  # stratum 0
            log_row("p3", "champion", "p", "error", at=T0 + 12 * minute),  # paused: out
            log_row("p4", "champion", "p", "ok", at=T0 + 25 * minute),  # stratum 1
            log_row("p5", "champion", "p", "fallback", at=T0 + 35 * minute),  # stratum 2
            log_row("q1", "champion", "q", "ok", at=T0 + 2 * minute),  # stratum 0
            log_row("q2", "champion", "q", "ok", at=T0 + 31 * minute),  # stratum 2
            log_row("q3", "champion", "q", "timeout", at=T0 + 15 * minute),  # paused: out
        ],
        [
            rating("p1", "p", "up", T0 + 40 * minute),  # rated later: the request's phase
            rating("p3", "p", "up", T0 + 40 * minute),  # a paused request: out
            rating("q2", "q", "down", T0 + 40 * minute),
        ],
    )
    data = look(engine, phases, 1)
    champion = data.arms["champion"]
    # p: x = (1, 0, 1), y = (2, 1, 1); q: x = (0, 0, 0), y = (1, 0, 1).
    assert champion.errors == PhasedSums(
        units=(2, 1, 2),
        sum_x=(1.0, 0.0, 1.0),
        sum_y=(3.0, 1.0, 2.0),
        xx=((1.0, 0.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 1.0)),
        xy=((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (2.0, 1.0, 1.0)),
        yy=((5.0, 2.0, 3.0), (2.0, 1.0, 1.0), (3.0, 1.0, 2.0)),
        distinct_units=2,
    )
    # Pooled, it is the plain per-unit computation: p x=2, y=4; q x=0, y=2.
    assert champion.errors.pooled() == RatioSums(2, 2.0, 6.0, 4.0, 20.0, 8.0)
    assert (champion.requests, champion.units) == (6, 2)
    # Thumbs: p1 up in stratum 0, q2 down in stratum 2.
    assert champion.thumbs == PhasedSums(
        units=(1, 0, 1),
        sum_x=(1.0, 0.0, 0.0),
        sum_y=(1.0, 0.0, 1.0),
        xx=((1.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
        xy=((1.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
        yy=((1.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
        distinct_units=2,
    )
    assert data.arms["challenger"] == ArmStats(
        errors=PhasedSums.empty(3), thumbs=PhasedSums.empty(3)
    )
    # The stage's latency: p5 failed (inf), q2 answered.
    assert sorted(champion.latency_ms) == [100.0, math.inf]
    assert (data.stage_units, data.srm_units) == ({"champion": 2, "challenger": 0},) * 2


def test_look_counts_forced_rows_as_requests_not_units_and_cuts_srm(engine: Engine) -> None:
    minute = timedelta(minutes=1)
    phases = [
        phase(0, "running", T0),
        phase(1, "running", T0 + 30 * minute),
        phase(1, "halted", T0 + 40 * minute),
        phase(1, "running", T0 + 50 * minute),
    ]
    store(
        engine,
        [
            log_row("a1", "challenger", "a", at=T0 + minute),  # stage 0
            log_row("b1", "challenger", "b", at=T0 + 35 * minute),  # stage 1, before the halt
            log_row("b2", "challenger", "b", at=T0 + 55 * minute, reason="override"),
            log_row("c1", "challenger", "c", at=T0 + 55 * minute),  # stage 1, after the halt
            log_row("d1", "challenger", "d", at=T0 + 55 * minute, reason="arena"),
            log_row("e1", "challenger", "e", "error", at=T0 + 36 * minute, reason="override"),
            log_row("f1", "challenger", "f", at=T0 + 45 * minute),  # halted: out
            log_row("g1", "champion", "g", at=T0 + 56 * minute, reason="unassigned"),
        ],
    )
    data = look(engine, phases, 1, srm_since_phase=3)
    challenger = data.arms["challenger"]
    assert challenger.requests == 6  # forced rows count as requests...
    assert challenger.errors.distinct_units == 5  # ...of their units (a, b, c, d, e)...
    assert challenger.errors.pooled().sum_x == 1.0  # ...and e's error counts
    assert challenger.units == 3  # ...but only a, b and c are units of the split
    assert data.stage_units == {"challenger": 2, "champion": 1}  # b and c; g
    assert data.srm_units == {"challenger": 1, "champion": 1}  # c; g
    # SRM from the stage's first phase: b as well.
    assert look(engine, phases, 1).srm_units == data.stage_units
    # Looking at stage 0 (as of then): a only.
    assert look(engine, phases, 0).stage_units == {"challenger": 1, "champion": 0}


def test_look_samples_failed_requests_as_infinitely_slow(engine: Engine) -> None:
    minute = timedelta(minutes=1)
    phases = [phase(0, "running", T0), phase(1, "running", T0 + 10 * minute)]
    at = T0 + 20 * minute
    store(
        engine,
        [
            log_row("r0", "challenger", "u", latency=10.0, at=T0),  # stage 0: not sampled
            log_row("r1", "challenger", "u", latency=20.0, at=at),
            log_row("r2", "challenger", "u", latency=30.0, ttft=3.0, at=at),
            log_row("r3", "challenger", "u", "timeout", latency=999.0, at=at),
            log_row("r4", "challenger", "u", "error", latency=5.0, ttft=1.0, at=at),
            log_row("r5", "challenger", "u", "client_disconnected", latency=1.0, ttft=1.0, at=at),
        ],
    )
    data = look(engine, phases, 1)
    challenger = data.arms["challenger"]
    assert challenger.latency_ms == (20.0, 30.0, math.inf, math.inf)  # in request-id order
    assert challenger.ttft_ms == (3.0, math.inf)  # streamed ones only
    assert len(look(engine, phases, 1, latency_sample=3).arms["challenger"].latency_ms) == 3
    assert look(engine, phases, 1, latency_sample=0).arms["challenger"].latency_ms == ()
    # A paused current stage has nothing to sample.
    paused = [*phases, phase(1, "paused", T0 + 15 * minute)]
    assert look(engine, paused, 1).arms["challenger"].latency_ms == ()


ARM_OF = {"c": "champion", "h": "challenger"}


def test_look_clusters_votes_by_voter(engine: Engine) -> None:
    store(
        engine,
        [log_row(f"{c}{i}", arm, "p") for i in (1, 2, 3) for c, arm in ARM_OF.items()],
        votes=[  # one vote per voter and pair
            a_vote("c1", "h1", "b", unit="A"),  # A: a challenger win,
            a_vote("c2", "h2", "a", unit="A"),  # a champion win
            a_vote("c3", "h3", "tie", unit="A"),  # and a tie: x=1, y=2
            a_vote("h1", "c1", "a", unit="B"),  # B: two challenger wins: x=2, y=2
            a_vote("c2", "h2", "b", unit="B"),
            a_vote("c1", "h1", "both_bad", unit="C"),  # C: nothing decisive, no voter
            a_vote("h1", "c1", "a"),  # no voter: each vote its own, x=1, y=1
            a_vote("c1", "h1", "b"),
            a_vote("c1", "h1", "a", at=T0 + timedelta(days=3)),  # x=0, y=1; votes have no phase
        ],
    )
    data = look(engine, [phase(0, "running", T0), phase(0, "paused", T0 + timedelta(hours=1))], 0)
    # Voters A, B and three lone votes: x = 1, 2, 1, 1, 0; y = 2, 2, 1, 1, 1.
    assert data.votes == VoteCounts(
        challenger_wins=5,
        champion_wins=2,
        ties=1,
        both_bad=1,
        per_voter=RatioSums(5, 5.0, 7.0, 7.0, 11.0, 8.0),
    )


def test_look_without_running_phases_gives_empty_sums(engine: Engine) -> None:
    store(
        engine,
        [log_row("c1", "champion", "p"), log_row("h1", "challenger", "p")],
        votes=[a_vote("c1", "h1", "b", unit="A")],
    )
    for phases in ([], [phase(0, "paused", T0 - timedelta(hours=1))]):
        data = look(engine, phases, 0)
        assert data.arms == {arm: ArmStats() for arm in ARMS}
        assert data.stage_units == {arm: 0 for arm in ARMS} == data.srm_units
        assert data.votes == VoteCounts(challenger_wins=1, per_voter=RatioSums(1, *[1.0] * 5))
    # Rows before the first phase belong to none.
    later = look(engine, [phase(0, "running", T0 + timedelta(seconds=1))], 0)
    assert later.arms["champion"] == ArmStats(
        errors=PhasedSums.empty(1), thumbs=PhasedSums.empty(1)
    )


def test_look_refuses_phases_out_of_time_order(engine: Engine) -> None:
    phases = [phase(0, "running", T0), phase(0, "paused", T0 - timedelta(minutes=1))]
    with pytest.raises(ValueError, match="time order"):
        look(engine, phases, 0)


# -- migration 0008: phases of the experiments that were there -------------------------------

EXPERIMENTS_0007 = sa.table(
    "experiments",
    *(sa.column(n) for n in ("id", "route", "status", "stage_index", "champion_version")),
    sa.column("challenger_version"),
    sa.column("stages", sa.JSON),
    sa.column("policy", sa.JSON),
    *(sa.column(n, sa.DateTime(timezone=True)) for n in ("stage_started_at", "created_at")),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
DECISIONS_0007 = sa.table(
    "decisions",
    *(sa.column(n) for n in ("experiment_id", "action", "stage_index", "acted", "actor")),
    sa.column("reasons", sa.JSON),
    sa.column("analysis", sa.JSON),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_upgrade_gives_experiments_the_phases_their_decisions_tell(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'old.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("fresh_postgres_url")
    )
    hour = timedelta(hours=1)
    stages = [5.0, 25.0, 50.0]

    def experiment(id_: str, status: str, stage: int, started: datetime) -> dict[str, Any]:
        return {
            "id": id_,
            "route": id_,
            "status": status,
            "stage_index": stage,
            "champion_version": "1",
            "challenger_version": "2",
            "stages": stages,
            "policy": {},
            "stage_started_at": started,
            "created_at": T0,
            "updated_at": T0 + 5 * hour,
        }

    def decision(id_: str, action: str, stage: int, at: datetime, acted: bool = True) -> Any:
        return {
            "experiment_id": id_,
            "action": action,
            "stage_index": stage,
            "acted": acted,
            "actor": "test",
            "reasons": [],
            "analysis": {},
            "created_at": at,
        }

    engine = create_db_engine(url)
    try:
        migrate(engine, "0007")
        with engine.begin() as conn:
            conn.execute(
                EXPERIMENTS_0007.insert(),
                [
                    experiment("advanced", "running", 2, T0 + 2 * hour - timedelta(seconds=1)),
                    experiment("paused", "paused", 0, T0),  # its pause decision is lost
                    experiment("halted", "halted", 1, T0 + hour),
                    experiment("promoted", "promoted", 0, T0),
                ],
            )
            conn.execute(
                DECISIONS_0007.insert(),
                [
                    decision("advanced", "advance", 0, T0 + hour),
                    decision("advanced", "continue", 1, T0 + 80 * timedelta(minutes=1)),
                    decision("advanced", "halt", 1, T0 + 85 * timedelta(minutes=1), False),
                    decision("advanced", "pause", 1, T0 + 90 * timedelta(minutes=1)),
                    decision("advanced", "resume", 1, T0 + 100 * timedelta(minutes=1)),
                    decision("advanced", "advance", 1, T0 + 2 * hour),
                    decision("halted", "advance", 0, T0 + hour),
                    decision("halted", "halt", 1, T0 + 2 * hour),
                    decision("promoted", "promote", 0, T0 + hour),
                ],
            )
        migrate(engine)
        columns = {c["name"]: c for c in sa.inspect(engine).get_columns("experiments")}
        assert columns["phases"]["nullable"] is False
        with engine.connect() as conn:
            got = dict(conn.execute(text("SELECT id, phases FROM experiments")).all())
        got = {k: json.loads(v) if isinstance(v, str) else v for k, v in got.items()}

        def p(stage: int, status: str, at: datetime) -> dict[str, Any]:
            return phase(stage, status, at, stages[stage])

        assert got == {
            "advanced": [
                p(0, "running", T0),
                p(1, "running", T0 + hour),
                p(1, "paused", T0 + 90 * timedelta(minutes=1)),
                p(1, "running", T0 + 100 * timedelta(minutes=1)),
                p(2, "running", T0 + 2 * hour - timedelta(seconds=1)),  # stage_started_at
            ],
            "paused": [p(0, "running", T0), p(0, "paused", T0 + 5 * hour)],
            "halted": [
                p(0, "running", T0),
                p(1, "running", T0 + hour),
                p(1, "halted", T0 + 2 * hour),
            ],
            "promoted": [p(0, "running", T0)],
        }
        # The phases are what aggregate_look reads.
        store(engine, [log_row("c1", "champion", "p", at=T0 + 95 * timedelta(minutes=1))])
        data = aggregate_look(
            engine,
            route="chat",
            experiment_id="exp-1",
            phases=got["advanced"],
            stage_index=2,
            srm_since_phase=0,
        )
        assert data.arms["champion"].requests == 0  # paused then
        assert data.arms["champion"].errors.phases == 4
    finally:
        engine.dispose()
