"""The evaluator's SQL aggregation, checked against a Python reference on SQLite and Postgres."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from experiments.stats import ArmStats, RatioSums, VoteCounts
from router.evaluation.aggregate import (
    ARMS,
    FAILED,
    SPLIT,
    aggregate,
    aggregate_stage,
    stage_traffic,
    timeline,
)
from router.inference_log.crud import FEEDBACK, LOG, VOTES
from router.inference_log.db import create_db_engine, insert, migrate

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
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
    a: str, b: str, winner: str, *, at: datetime = T0, route: str = "chat"
) -> dict[str, Any]:
    return {
        "created_at": at,
        "route": route,
        "request_id_a": a,
        "request_id_b": b,
        "winner": winner,
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
            errors=ratio_sums(errors),
            thumbs=ratio_sums(thumbs),
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
            assert expected[arm].errors.sum_x > 0
            assert expected[arm].thumbs.sum_x > 0
            assert expected[arm].errors.units > expected[arm].thumbs.units > 0
            assert expected[arm].ttft_ms
            # Some units came only through forced arms: they are no units of the split.
            assert 0 < expected[arm].units < expected[arm].errors.units
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
    assert arms["champion"].errors == RatioSums(2, 3.0, 5.0, 5.0, 13.0, 8.0)
    assert arms["challenger"].errors == RatioSums(1, 0.0, 2.0, 0.0, 4.0, 0.0)
    assert arms["champion"].thumbs == RatioSums() == arms["challenger"].thumbs


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
    assert arms["champion"].thumbs == RatioSums(1, 1.0, 2.0, 1.0, 4.0, 2.0)


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
    assert arms["champion"].thumbs == RatioSums(1, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert arms["champion"].latency_ms == (100.0,)
    assert arms["challenger"] == ArmStats()
    outside, _ = aggregate(engine, route="chat", experiment_id=None)
    assert outside["champion"].requests == 1
    assert outside["champion"].thumbs.sum_x == 1.0


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
    assert arms == {"champion": ArmStats(), "challenger": ArmStats()}
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
    arms, votes, stage = aggregate_stage(engine, route="chat", experiment_id="exp-1")
    assert (arms["champion"].requests, arms["champion"].units) == (3, 2)  # p and r
    assert (arms["challenger"].requests, arms["challenger"].units) == (2, 0)
    assert arms["challenger"].errors == RatioSums(1, 1.0, 2.0, 1.0, 4.0, 2.0)
    assert arms["challenger"].thumbs.sum_x == 1.0
    assert votes == VoteCounts(challenger_wins=1)
    assert stage == {"champion": 2, "challenger": 0}


def test_stage_units_come_out_of_the_same_scan(engine: Engine) -> None:
    rows, ratings, votes = random_dataset(seed=13)
    store(engine, rows, ratings, votes)
    stage_start = T0 + timedelta(hours=1, minutes=40)
    arms, _, stage = aggregate_stage(
        engine, route="chat", experiment_id="exp-1", stage_since=stage_start
    )
    expected = {
        arm: len(
            {
                r["unit_id"]
                for r in rows
                if counted(r, "chat", "exp-1", stage_start)
                and r["arm"] == arm
                and r["assignment_reason"] in SPLIT
            }
        )
        for arm in ARMS
    }
    assert stage == expected
    for arm in ARMS:  # the stage is part of the experiment, and not all of it
        assert 0 < stage[arm] < arms[arm].units
    whole, _, first = aggregate_stage(engine, route="chat", experiment_id="exp-1")
    assert first == {arm: whole[arm].units for arm in ARMS}
    assert sorted_samples(whole) == sorted_samples(arms)


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
    stage_start = T0 + timedelta(hours=1)
    arms, _, stage = aggregate_stage(
        engine, route="chat", experiment_id="exp-1", stage_since=stage_start
    )
    expected, _ = reference(rows, ratings, votes)
    assert sorted_samples(arms) == expected
    # The totals (a whole experiment) and the log scan (any window) agree.
    scanned, _, scanned_stage = aggregate_stage(
        engine,
        route="chat",
        experiment_id="exp-1",
        since=T0 - timedelta(days=1),
        stage_since=stage_start,
    )
    assert sorted_samples(scanned) == sorted_samples(arms)
    assert scanned_stage == stage


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
