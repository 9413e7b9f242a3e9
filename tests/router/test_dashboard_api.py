"""``GET /v1/routes/{route}/dashboard`` (and ``.csv``) against a real router: every figure
matches what the test logged, recomputed here from the rows themselves."""

from __future__ import annotations

import asyncio
import csv
import io
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pytest
from scipy import stats
from sqlalchemy import create_engine, select

from router import dashboard as dashboard_module
from router.config import Settings
from router.dashboard import CSV_COLUMNS
from router.inference_log.crud import LOG
from tests.conftest import fake_routes

TOKEN = "dashboard-admin-token"
FAILED = ("error", "timeout", "fallback")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("fresh_postgres_url") if request.param == "postgres" else None


def traffic(http: httpx.Client, n: int, *, prefix: str = "u") -> list[str]:
    """n requests from n units (every third streamed); thumbs on most; returns request ids."""
    ids = []
    for i in range(n):
        body = {
            "model": "chat",
            "user": f"{prefix}-{i}",
            "stream": i % 3 == 0,
            "messages": [{"role": "user", "content": f"words for request {i}"}],
        }
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-request-id"])
        if i % 4 != 3:
            value = "up" if i % 3 else "down"
            feedback = {"request_id": ids[-1], "value": value, "user": f"{prefix}-{i}"}
            assert http.post("/v1/feedback", json=feedback).status_code == 200
    return ids


def logged(settings: Settings) -> list[dict[str, Any]]:
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(LOG)).mappings()]
    finally:
        engine.dispose()


def expected_arm(rows: list[dict[str, Any]], thumbs: dict[str, str], arm: str) -> dict[str, Any]:
    """The per-arm figures, computed from the rows in Python."""
    mine = [r for r in rows if r["arm"] == arm and r["status"] != "rejected"]
    ok = [r for r in mine if r["status"] == "ok"]
    latency = [r["latency_ms"] for r in ok]
    ttft = [r["ttft_ms"] for r in ok if r["stream"] and r["ttft_ms"] is not None]
    rated = [thumbs[r["request_id"]] for r in mine if r["request_id"] in thumbs]
    ups = rated.count("up")
    ci = stats.binomtest(ups, len(rated)).proportion_ci(method="wilson") if rated else None
    tokens = sum(r["completion_tokens"] for r in ok if r["completion_tokens"] is not None)
    seconds = sum(r["latency_ms"] for r in ok if r["completion_tokens"] is not None) / 1000
    errors = sum(r["status"] in FAILED for r in mine)
    return {
        "requests": len(mine),
        "errors": errors,
        "error_rate": errors / len(mine) if mine else None,
        "latency_p50_ms": float(np.percentile(latency, 50)) if latency else None,
        "latency_p95_ms": float(np.percentile(latency, 95)) if latency else None,
        "ttft_p50_ms": float(np.percentile(ttft, 50)) if ttft else None,
        "tokens_per_s": tokens / seconds if seconds else None,
        "thumbs_up": ups,
        "thumbs_down": len(rated) - ups,
        "thumbs_up_rate": ups / len(rated) if rated else None,
        "thumbs_up_ci": [ci.low, ci.high] if ci else None,
    }


def assert_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key, value in want.items():
        if isinstance(value, float | list):
            assert got[key] == pytest.approx(value, rel=1e-9), key
        else:
            assert got[key] == value, key


def test_dashboard_matches_the_logged_rows(
    make_settings: Callable[..., Settings], run_router: Callable[..., Any], database_url: str | None
) -> None:
    # Some challenger failures (fallbacks count as its errors) and token-paced answers.
    routes = fake_routes(
        challenger={"error_rate": 0.3, "seed": 3, "tokens_per_s": 2000},
        champion={"tokens_per_s": 1000},
    )
    settings = make_settings(routes=routes, database_url=database_url, allow_arm_override=True)
    with run_router(settings) as (server, _), httpx.Client(base_url=server.url) as http:
        ids = traffic(http, 40)
        thumbs = {i: ("up" if n % 3 else "down") for n, i in enumerate(ids) if n % 4 != 3}
        # Two voters, each shown a champion and a challenger answer: the challenger wins
        # one, the other is a tie.
        for voter, winner in (("voter-1", "b"), ("voter-2", "tie")):
            pair = [
                http.post(
                    "/v1/chat/completions",
                    json={
                        "model": "chat",
                        "user": voter,
                        "messages": [{"role": "user", "content": "q"}],
                    },
                    headers={"x-canary-arm": arm},
                ).headers["x-request-id"]
                for arm in ("champion", "challenger")
            ]
            vote = {"request_id_a": pair[0], "request_id_b": pair[1], "winner": winner}
            assert http.post("/v1/votes", json=vote).status_code == 200
        r = http.get("/v1/routes/chat/dashboard", params={"bucket_s": 60, "window_s": 3600})
        assert r.status_code == 200, r.text
        board = r.json()
        csv_response = http.get("/v1/routes/chat/dashboard.csv", params={"bucket_s": 60})
    rows = logged(settings)
    assert "NaN" not in r.text and "Infinity" not in r.text

    assert (board["route"], board["experiment_id"]) == ("chat", None)
    assert (board["window_s"], board["bucket_s"]) == (3600, 60)
    assert board["weights"] == {"champion": 0.5, "challenger": 0.5}
    assert any(r["status"] == "fallback" for r in rows), "no challenger failure: weak test"
    for arm, (model, version) in {
        "champion": ("fake-champion", "1"),
        "challenger": ("fake-challenger", "2"),
    }.items():
        got = board["arms"][arm]
        assert (got["model"], got["version"]) == (model, version)
        assert_close(got, expected_arm(rows, thumbs, arm))
        assert got["requests"] > 0 and got["thumbs_up"] + got["thumbs_down"] > 0

    assert board["votes"]["challenger_wins"] == 1
    assert (board["votes"]["champion_wins"], board["votes"]["ties"]) == (0, 1)
    assert board["votes"]["win_rate"] == 1.0
    ratings = board["votes"]["bradley_terry"]
    assert ratings["challenger"] > 1000 > ratings["champion"]
    assert ratings["champion"] + ratings["challenger"] == pytest.approx(2000)
    lo, hi = board["votes"]["bradley_terry_ci"]["challenger"]
    assert lo <= ratings["challenger"] <= hi

    # The timeline: every bucket of the hour for both arms; its sums are the rows'.
    timeline = board["timeline"]
    times = sorted({p["time"] for p in timeline})
    assert len(times) in (60, 61)  # the window's first bucket is partial
    assert len(timeline) == 2 * len(times)
    for arm in ("champion", "challenger"):
        mine = [r for r in rows if r["arm"] == arm]
        points = [p for p in timeline if p["arm"] == arm]
        assert sum(p["requests"] for p in points) == len(mine)
        assert sum(p["errors"] for p in points) == sum(r["status"] in FAILED for r in mine)
        assert sum(p["ups"] for p in points) == board["arms"][arm]["thumbs_up"]
        for p in points:
            start = datetime.fromisoformat(p["time"]).timestamp()
            in_bucket = [
                r["latency_ms"]
                for r in mine
                if r["status"] == "ok"
                and start <= r["created_at"].replace(tzinfo=UTC).timestamp() < start + 60
            ]
            for q in (50, 95):
                want = float(np.percentile(in_bucket, q)) if in_bucket else None
                got = p[f"latency_p{q}_ms"]
                assert got == (pytest.approx(want) if want is not None else None), (q, p)
            if p["rated"]:
                assert p["thumbs_up_rate"] == pytest.approx(p["ups"] / p["rated"])
                assert p["ci_low"] <= p["thumbs_up_rate"] <= p["ci_high"]
            else:
                assert p["thumbs_up_rate"] is p["ci_low"] is p["ci_high"] is None

    # The CSV: the same figures, one table.
    assert csv_response.status_code == 200
    assert csv_response.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv_response.headers["content-disposition"]
    assert 'filename="chat-dashboard-' in csv_response.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(csv_response.text)))
    assert tuple(table[0]) == CSV_COLUMNS
    summary = {row["arm"]: row for row in table if row["section"] == "arm"}
    assert set(summary) == {"champion", "challenger"}
    for arm, row in summary.items():
        want = board["arms"][arm]
        assert int(row["requests"]) == want["requests"]
        assert int(row["errors"]) == want["errors"]
        assert float(row["latency_p50_ms"]) == pytest.approx(want["latency_p50_ms"])
        assert float(row["thumbs_up_rate"]) == pytest.approx(want["thumbs_up_rate"])
        assert float(row["ci_low"]) == pytest.approx(want["thumbs_up_ci"][0])
        assert float(row["bradley_terry"]) == pytest.approx(board["votes"]["bradley_terry"][arm])
    assert int(summary["challenger"]["votes_won"]) == 1
    points = [row for row in table if row["section"] == "timeline"]
    assert len(points) == len(timeline)
    assert sum(int(p["requests"]) for p in points) == sum(p["requests"] for p in timeline)
    assert any(p["latency_p50_ms"] == "" for p in points)  # empty buckets: empty cells


def test_empty_route_has_no_figures_and_no_nan(
    make_settings: Callable[..., Settings], run_router: Callable[..., Any]
) -> None:
    with run_router(make_settings()) as (server, _):
        r = httpx.get(f"{server.url}/v1/routes/chat/dashboard", params={"window_s": 600})
    assert r.status_code == 200, r.text
    board = r.json()
    for arm in ("champion", "challenger"):
        got = board["arms"][arm]
        assert (got["requests"], got["errors"], got["thumbs_up"]) == (0, 0, 0)
        for key in ("error_rate", "latency_p50_ms", "ttft_p50_ms", "tokens_per_s"):
            assert got[key] is None, key
        assert got["thumbs_up_rate"] is None and got["thumbs_up_ci"] is None
    assert board["votes"]["win_rate"] is None
    assert board["votes"]["bradley_terry"] == {"champion": None, "challenger": None}
    assert board["votes"]["bradley_terry_ci"] == {"champion": None, "challenger": None}
    assert {p["requests"] for p in board["timeline"]} == {0}
    assert len(board["timeline"]) in (20, 22)  # 10 or 11 one-minute buckets, two arms


def test_scope_is_the_live_experiment(
    make_settings: Callable[..., Settings], run_router: Callable[..., Any]
) -> None:
    settings = make_settings(admin_token=TOKEN)
    with run_router(settings) as (server, _), httpx.Client(base_url=server.url) as http:
        before = traffic(http, 6, prefix="before")
        r = http.post(
            "/v1/experiments",
            json={"route": "chat", "stages": [50]},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 201, r.text
        experiment_id = r.json()["id"]
        during = traffic(http, 8, prefix="during")
        board = http.get("/v1/routes/chat/dashboard").json()
    assert board["experiment_id"] == experiment_id
    assert board["weights"] == {"champion": 0.5, "challenger": 0.5}
    rows = {r["request_id"]: r for r in logged(settings)}
    assert {rows[i]["experiment_id"] for i in during} == {experiment_id}
    assert {rows[i]["experiment_id"] for i in before} == {None}
    counted = sum(board["arms"][arm]["requests"] for arm in ("champion", "challenger"))
    assert counted == len(during)  # the rows before the experiment are out of scope
    assert sum(p["requests"] for p in board["timeline"]) == len(during)


def test_route_without_challenger_has_a_null_arm(
    make_settings: Callable[..., Settings], run_router: Callable[..., Any]
) -> None:
    routes = fake_routes()
    routes["chat"].challenger = None
    with run_router(make_settings(routes=routes)) as (server, _):
        r = httpx.get(f"{server.url}/v1/routes/chat/dashboard")
    assert r.status_code == 200, r.text
    board = r.json()
    assert board["arms"]["challenger"] is None
    assert board["weights"] == {"champion": 1.0, "challenger": 0.0}
    assert {p["arm"] for p in board["timeline"]} == {"champion"}


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/v1/routes/nope/dashboard", {}, 404, "model_not_found"),
        ("/v1/routes/nope/dashboard.csv", {}, 404, "model_not_found"),
        ("/v1/routes/chat/dashboard", {"bucket_s": 0}, 400, "invalid_request"),
        ("/v1/routes/chat/dashboard", {"window_s": "an hour"}, 400, "invalid_request"),
        ("/v1/routes/chat/dashboard", {"window_s": 10**9}, 400, "invalid_request"),
        ("/v1/routes/chat/dashboard", {"bucket_s": 1, "window_s": 86_400}, 400, "too_many_buckets"),
        ("/v1/routes/chat/dashboard.csv", {"bucket_s": -5}, 400, "invalid_request"),
    ],
    ids=["unknown", "unknown-csv", "bucket-0", "window-text", "window-huge", "buckets", "csv-bad"],
)
def test_bad_dashboard_requests_are_4xx(
    router: Any, path: str, params: dict[str, Any], status: int, code: str
) -> None:
    server, _ = router
    r = httpx.get(f"{server.url}{path}", params=params)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert error["message"]


def test_numbers_are_finite_or_null(router: Any) -> None:
    """One request, one thumb: every number in the JSON is a finite float or None."""
    server, _ = router
    with httpx.Client(base_url=server.url) as http:
        [request_id] = traffic(http, 1)
        board = http.get("/v1/routes/chat/dashboard").json()

    def numbers(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [n for v in value.values() for n in numbers(v)]
        if isinstance(value, list):
            return [n for v in value for n in numbers(v)]
        return [value] if isinstance(value, int | float) else []

    found = numbers(board)
    assert found and all(math.isfinite(n) for n in found)
    assert request_id


def test_requests_for_one_dashboard_at_once_share_one_build(
    router: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI asks for the JSON and the CSV of a refresh together: one build serves both
    (the same figures in each); a later request builds afresh."""
    server, _ = router
    builds = []
    real_build = dashboard_module.build

    def slow_build(*args: Any, **kwargs: Any) -> Any:
        builds.append(threading.get_ident())
        time.sleep(0.5)  # long enough for the other requests to arrive meanwhile
        return real_build(*args, **kwargs)

    monkeypatch.setattr(dashboard_module, "build", slow_build)
    with httpx.Client(base_url=server.url) as http:
        traffic(http, 2)

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url) as client:
            return await asyncio.gather(
                client.get("/v1/routes/chat/dashboard"),
                client.get("/v1/routes/chat/dashboard.csv"),
                client.get("/v1/routes/chat/dashboard"),
                client.get("/v1/routes/chat/dashboard", params={"window_s": 600}),
            )

    board, csv_response, again, other_window = asyncio.run(together())
    assert [r.status_code for r in (board, csv_response, again, other_window)] == [200] * 4
    assert len(builds) == 2  # one per distinct dashboard, not one per request
    assert board.json() == again.json()
    # The CSV's per-arm rows are stamped with the time of the build the JSON came from.
    arm_rows = [r for r in csv.DictReader(io.StringIO(csv_response.text)) if r["section"] == "arm"]
    stamps = {datetime.fromisoformat(r["time"]) for r in arm_rows}
    assert stamps == {datetime.fromisoformat(board.json()["generated_at"])}
    assert other_window.json()["window_s"] == 600
    httpx.get(f"{server.url}/v1/routes/chat/dashboard")
    assert len(builds) == 3
