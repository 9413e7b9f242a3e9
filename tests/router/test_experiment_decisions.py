"""The decision policy's defects, each reproduced through the HTTP API and fixed.

Each test drives a real router (fake engines behind a registry) the way an operator and
clients would: start, traffic with thumbs or votes, pause, resume, evaluate, act.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from registry.store import Registry
from router.assignment import BUCKETS, bucket_of
from router.backends import FakeSpec
from router.backends.fake_server import create_fake_openai_app
from router.config import Settings
from tests.router.test_experiments import (
    ADMIN,
    POLICY,
    _evaluate,
    _running,
    _start,
    _traffic,
    register_pair,
)
from tests.servers import serve


def _engines(champion: FakeSpec, challenger: FakeSpec) -> Iterator[tuple[str, str]]:
    with (
        serve(create_fake_openai_app(champion)) as a,
        serve(create_fake_openai_app(challenger)) as b,
    ):
        yield f"{a.url}/v1", f"{b.url}/v1"


@pytest.fixture
def versions(registry: Registry) -> Iterator[tuple[str, str]]:
    yield from (
        register_pair(registry, e)
        for e in _engines(FakeSpec(name="champ", text="a"), FakeSpec(name="chall", text="b"))
    )


@pytest.fixture
def router(
    registry: Registry,
    versions: tuple[str, str],
    make_settings: Callable[..., Settings],
    run_router: Any,
) -> Iterator[tuple[httpx.Client, Any]]:
    with (
        _running(registry, make_settings, run_router, allow_arm_override=True) as (server, app),
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        yield http, app


def _act(http: httpx.Client, exp: dict[str, Any], action: str, **body: Any) -> httpx.Response:
    return http.post(f"/v1/experiments/{exp['id']}/{action}", json=body or None, headers=ADMIN)


def _requests(http: httpx.Client, users: list[str]) -> dict[str, str]:
    """One request per user; each user's arm."""
    arms = {}
    for user in users:
        r = http.post(
            "/v1/chat/completions",
            json={"model": "chat", "user": user, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200, r.text
        arms[user] = r.headers["x-canary-arm"]
    return arms


def _logged(http: httpx.Client, exp: dict[str, Any], units: int) -> None:
    """Wait until the log writer has stored the split units the SRM window should hold."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        srm = http.get(f"/v1/experiments/{exp['id']}").json()["analysis"]["srm"]
        if sum(srm["observed"].values()) >= units:
            return
        time.sleep(0.1)


def test_pause_then_resume_does_not_halt(router: tuple[httpx.Client, Any]) -> None:
    """While paused every unit goes to the champion; those units must not count against
    the stage's 50/50 split once the experiment resumes."""
    http, _ = router
    exp = _start(http)
    _requests(http, [f"before-{i}" for i in range(60)])
    assert _act(http, exp, "pause", reason="investigating a dashboard").status_code == 200
    paused = _requests(http, [f"paused-{i}" for i in range(60)])
    assert set(paused.values()) == {"champion"}
    assert _act(http, exp, "resume").status_code == 200
    _requests(http, [f"after-{i}" for i in range(60)])
    _logged(http, exp, 120)
    decision = _evaluate(http, exp)
    assert decision["action"] != "halt", decision["reasons"]
    srm = decision["analysis"]["srm"]
    assert srm["mismatch"] is False
    assert sum(srm["observed"].values()) == 120  # the paused phase's units are left out
    statuses = [p["status"] for p in http.get(f"/v1/experiments/{exp['id']}").json()["phases"]]
    assert statuses == ["running", "paused", "running"]
    reasons = [d["reasons"] for d in http.get(f"/v1/experiments/{exp['id']}/decisions").json()]
    assert "reason: investigating a dashboard" in reasons[1]


def test_the_first_unit_in_a_five_percent_arm_does_not_halt(
    router: tuple[httpx.Client, Any],
) -> None:
    http, _ = router
    exp = _start(http, stages=[5, 50])
    # A user the experiment's split sends to the challenger (bucket < 5% of the buckets).
    user = next(
        f"u-{i}" for i in range(10_000) if bucket_of("chat", exp["id"], f"u-{i}") < BUCKETS // 20
    )
    assert _requests(http, [user]) == {user: "challenger"}
    _logged(http, exp, 1)
    decision = _evaluate(http, exp)
    assert decision["action"] == "continue", decision["reasons"]
    assert decision["analysis"]["srm"]["observed"] == {"champion": 0, "challenger": 1}
    assert decision["analysis"]["srm"]["mismatch"] is False
    assert http.get(f"/v1/experiments/{exp['id']}").json()["status"] == "running"


def test_an_srm_halt_is_resumable_by_an_admin(router: tuple[httpx.Client, Any]) -> None:
    http, _ = router
    exp = _start(http)
    # A replica whose split is wrong (set by hand here): every unit on the champion.
    assert (
        http.put("/v1/routes/chat/weights", json={"challenger": 0}, headers=ADMIN).status_code
        == 200
    )
    _requests(http, [f"u-{i}" for i in range(80)])
    _logged(http, exp, 80)
    halted = _evaluate(http, exp)
    assert (halted["action"], halted["acted"]) == ("halt", True), halted["reasons"]
    assert http.get(f"/v1/experiments/{exp['id']}").json()["status"] == "halted"
    assert _act(http, exp, "promote", force=True).status_code == 409  # resume or roll back
    resumed = _act(http, exp, "resume", reason="replica fixed")
    assert resumed.status_code == 200, resumed.text
    assert "reason: replica fixed" in resumed.json()["reasons"]
    # The SRM test starts afresh after the halt: the new, healthy traffic is not held
    # against the mismatch that was investigated.
    _traffic(http, 120, {"champion": 0.5, "challenger": 0.5}, prefix="fixed")
    _logged(http, exp, 120)
    after = _evaluate(http, exp)
    assert after["action"] != "halt", after["reasons"]
    assert sum(after["analysis"]["srm"]["observed"].values()) == 120


def test_later_stages_re_test(router: tuple[httpx.Client, Any]) -> None:
    """Stage 1 shows the challenger better and advances; at stage 2 it turns worse. The
    old policy carried stage 1's p-value and promoted; this one looks at stage 2's data."""
    http, _ = router
    exp = _start(http, stages=[50, 60])
    _traffic(http, 240, {"champion": 0.3, "challenger": 0.9})
    first = _evaluate(http, exp)
    assert (first["action"], first["acted"]) == ("advance", True), first["reasons"]
    _traffic(http, 480, {"champion": 0.9, "challenger": 0.3}, prefix="stage2")
    second = _evaluate(http, exp)
    assert second["action"] not in ("advance", "promote"), second["reasons"]
    thumbs = second["analysis"]["metrics"]["thumbs_up_rate"]
    assert thumbs["p_better"] > 0.05
    assert len(thumbs["phases"]) == 2  # stratified by phase


def test_votes_primary_with_much_worse_thumbs_is_not_promoted(
    router: tuple[httpx.Client, Any], registry: Registry, versions: tuple[str, str]
) -> None:
    http, _ = router
    policy = {**POLICY, "primary_metric": "votes", "min_votes": 30}
    exp = _start(http, policy=policy)
    _traffic(http, 240, {"champion": 0.7, "challenger": 0.4})
    for i in range(30):  # 29 of 30 blind votes for the challenger, one per voter
        ids = {}
        for arm in ("champion", "challenger"):
            r = http.post(
                "/v1/chat/completions",
                json={
                    "model": "chat",
                    "user": f"voter-{i}",
                    "messages": [{"role": "user", "content": "q"}],
                },
                headers={"x-canary-arm": arm},
            )
            assert r.status_code == 200
            ids[arm] = r.json()["id"]
        vote = http.post(
            "/v1/votes",
            json={
                "request_id_a": ids["champion"],
                "request_id_b": ids["challenger"],
                "winner": "b" if i else "a",
            },
        )
        assert vote.status_code == 200, vote.text
    decision = _evaluate(http, exp)
    votes = decision["analysis"]["metrics"]["votes"]
    assert (votes["challenger_wins"], votes["voters"], votes["role"]) == (29, 30, "primary")
    assert decision["action"] == "rollback", decision["reasons"]
    assert decision["reasons"][0].startswith("guardrail failed: thumbs guardrail")
    champion = registry.resolve("chat", "champion")
    assert champion is not None and champion.version == versions[0]


def test_a_rejected_version_cannot_be_restarted_without_force(
    router: tuple[httpx.Client, Any], registry: Registry, versions: tuple[str, str]
) -> None:
    http, app = router
    exp = _start(http)
    assert _act(http, exp, "rollback").status_code == 200
    # Someone points @challenger at the rejected version again; the router picks it up.
    registry.set_alias("chat", "challenger", versions[1])
    deadline = time.monotonic() + 10
    while app.state.routes.get("chat").challenger is None and time.monotonic() < deadline:
        time.sleep(0.1)
    again = http.post(
        "/v1/experiments", json={"route": "chat", "stages": [50], "policy": POLICY}, headers=ADMIN
    )
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "version_rejected"
    forced = http.post(
        "/v1/experiments",
        json={
            "route": "chat",
            "stages": [50],
            "policy": POLICY,
            "force": True,
            "reason": "fixed a bug",
        },
        headers=ADMIN,
    )
    assert forced.status_code == 201, forced.text
    start = http.get(f"/v1/experiments/{forced.json()['id']}/decisions").json()[0]
    assert start["action"] == "start"
    assert any("forced" in r for r in start["reasons"])
    assert "reason: fixed a bug" in start["reasons"]


def test_manual_promote_needs_data_or_force_and_manual_advance_works(
    router: tuple[httpx.Client, Any],
) -> None:
    http, _ = router
    exp = _start(http, stages=[20, 50], policy={**POLICY, "auto": False})
    refused = _act(http, exp, "promote")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "promotion_not_supported_by_data"
    advanced = _act(http, exp, "advance", reason="stage 1 looked fine on the dashboard")
    assert advanced.status_code == 200, advanced.text
    now = http.get(f"/v1/experiments/{exp['id']}").json()
    assert (now["stage"], now["weights"]["challenger"]) == (2, 0.5)
    assert _act(http, exp, "advance").status_code == 409  # already at the last stage
    forced = _act(http, exp, "promote", force=True, reason="the CEO said so")
    assert forced.status_code == 200, forced.text
    assert any("forced against the policy's continue" in r for r in forced.json()["reasons"])
    assert http.get(f"/v1/experiments/{exp['id']}").json()["status"] == "promoted"


def test_max_units_ends_an_experiment_inconclusive(
    router: tuple[httpx.Client, Any], registry: Registry, versions: tuple[str, str]
) -> None:
    http, _ = router
    exp = _start(http, policy={**POLICY, "max_units": 50})
    _traffic(http, 160, {"champion": 0.5, "challenger": 0.5})
    decision = _evaluate(http, exp)
    assert (decision["action"], decision["acted"]) == ("inconclusive", True), decision["reasons"]
    assert http.get(f"/v1/experiments/{exp['id']}").json()["status"] == "inconclusive"
    assert http.get(f"/v1/experiments/{exp['id']}").json()["weights"]["challenger"] == 0
    champion = registry.resolve("chat", "champion")
    assert champion is not None and champion.version == versions[0]


@pytest.fixture
def slow_versions(registry: Registry, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """Champion answers in 40 ms; the challenger in 40 ms times the test's ratio."""
    ratio = request.param
    champion = FakeSpec(name="champ", text="a", latency_ms=40.0)
    challenger = FakeSpec(name="chall", text="b", latency_ms=40.0 * ratio)
    yield from (register_pair(registry, e) for e in _engines(champion, challenger))


@pytest.mark.parametrize(
    ("slow_versions", "action"), [(1.3, "promote"), (3.0, "rollback")], indirect=["slow_versions"]
)
def test_latency_inside_its_bound_is_not_rolled_back(
    registry: Registry,
    slow_versions: tuple[str, str],
    make_settings: Callable[..., Settings],
    run_router: Any,
    action: str,
) -> None:
    """1.3x slower against a 1.5x bound: promoted on its thumbs; 3x slower: rolled back."""
    policy = {**POLICY, "max_latency_p95_ratio": 1.5}
    with (
        _running(registry, make_settings, run_router) as (server, _),
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        exp = _start(http, policy=policy)
        _traffic(http, 240, {"champion": 0.3, "challenger": 0.9})
        decision = _evaluate(http, exp)
        latency = decision["analysis"]["metrics"]["latency"]
        assert decision["action"] == action, (decision["reasons"], latency)
        if action == "promote":
            assert latency["p_above_bound"] > 0.05
        else:
            assert decision["reasons"][0].startswith("guardrail failed: latency p95")
