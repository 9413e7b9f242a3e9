"""Experiments end to end: the evaluator reads the log, decides, and moves MLflow aliases."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from registry.store import Registry
from router.backends import FakeSpec
from router.backends.fake_server import create_fake_openai_app
from router.config import Settings
from router.registry_source import RegistryArmSource
from tests.servers import free_port, serve
from tests.servers import mlflow_server as run_mlflow_server

TOKEN = "test-admin-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
# The fake engines answer in a millisecond or two, so their latency ratio is noise: a
# p95 bound of 1.5 would block decisions at random. These tests are about thumbs.
POLICY = {
    "auto": True,
    "min_units": 40,
    "min_rated_units": 40,
    # The split is salted by the random experiment id: 240 units leave an arm under 100
    # units about once in a hundred runs. Every test sends at least 80 per arm.
    "min_guardrail_units": 60,
    "max_latency_p95_ratio": 100.0,
    "max_ttft_p95_ratio": 100.0,
}


@pytest.fixture
def engines() -> Iterator[tuple[str, str]]:
    with (
        serve(create_fake_openai_app(FakeSpec(name="champ", text="champion answer"))) as a,
        serve(create_fake_openai_app(FakeSpec(name="chall", text="challenger answer"))) as b,
    ):
        yield f"{a.url}/v1", f"{b.url}/v1"


def register_pair(registry: Registry, engines: tuple[str, str]) -> tuple[str, str]:
    """Route ``chat``: version 1 @champion on the first engine, 2 @challenger on the second."""
    v1 = registry.register_endpoint(
        "chat", base_url=engines[0], remote_model="m", params={}, alias="champion"
    )
    v2 = registry.register_endpoint(
        "chat", base_url=engines[1], remote_model="m", params={}, alias="challenger"
    )
    return v1, v2


@pytest.fixture
def versions(registry: Registry, engines: tuple[str, str]) -> tuple[str, str]:
    return register_pair(registry, engines)


def _running(
    registry: Registry, make_settings: Callable[..., Settings], run_router: Any, **settings: Any
) -> Any:
    source = RegistryArmSource(registry, challenger_weight=10)
    cfg = make_settings(
        routes={}, admin_token=TOKEN, registry_poll_s=0.2, evaluation_interval_s=3600, **settings
    )
    return run_router(cfg, arm_source=source)


def _traffic(
    http: httpx.Client,
    n: int,
    up_share: dict[str, float],
    *,
    route: str = "chat",
    prefix: str = "unit",
) -> dict[str, int]:
    """n units, one request and one thumb each; an arm's thumbs are up ``up_share`` of the time."""
    seen = {"champion": 0, "challenger": 0}
    for i in range(n):
        r = http.post(
            "/v1/chat/completions",
            json={
                "model": route,
                "user": f"{prefix}-{i}",
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert r.status_code == 200, r.text
        arm = r.headers["x-canary-arm"]
        up = (seen[arm] % 10) < up_share[arm] * 10
        seen[arm] += 1
        thumb = http.post(
            "/v1/feedback",
            json={
                "request_id": r.json()["id"],
                "value": "up" if up else "down",
                "user": f"{prefix}-{i}",  # the unit the request was made for
            },
        )
        assert thumb.status_code == 200
    return seen


def _start(http: httpx.Client, route: str = "chat", **body: Any) -> dict[str, Any]:
    """Start an experiment on ``route`` (one 50% stage, the test policy unless overridden)."""
    r = http.post(
        "/v1/experiments",
        json={"route": route, "stages": [50], "policy": POLICY, **body},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _evaluate(http: httpx.Client, exp: dict[str, Any]) -> dict[str, Any]:
    r = http.post(f"/v1/experiments/{exp['id']}/evaluate", headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _report_run(http: httpx.Client, exp: dict[str, Any], timeout: float = 120) -> str:
    """The report's MLflow run id, once the evaluator has logged it in the background."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        detail = http.get(f"/v1/experiments/{exp['id']}").json()
        if detail["report_run_id"]:
            assert detail["report_uri"] == f"runs:/{detail['report_run_id']}/report.html"
            return str(detail["report_run_id"])
        time.sleep(0.2)
    raise AssertionError(f"no report run for {exp['id']} after {timeout} s")


def _check_report_run(
    registry: Registry, exp: dict[str, Any], run_id: str, decision: str, tmp: Path
) -> dict[str, Any]:
    """The run's tags, params and metrics, the version's link to it; its report.json."""
    run = registry.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["canary.route"], tags["canary.experiment_id"]) == (exp["route"], exp["id"])
    assert tags["canary.champion_version"] == exp["champion_version"]
    assert tags["canary.challenger_version"] == exp["challenger_version"]
    assert tags["canary.decision"] == decision
    params = run.data.params
    assert (params["route"], params["experiment_id"]) == (exp["route"], exp["id"])
    assert params["challenger_version"] == exp["challenger_version"]
    assert params["policy.min_units"] == "40" and params["policy.auto"] in ("True", "False")
    metrics = run.data.metrics
    for key in (
        "arms.champion.requests",
        "arms.challenger.requests",
        "error_rate.champion",
        "thumbs_up_rate.challenger",
        "thumbs_up_rate.difference",
        "thumbs_up_rate.p_value",
        "thumbs_up_rate.p_better",
        "srm.p_value",
    ):
        assert key in metrics, key
    assert {a.path for a in registry.client.list_artifacts(run_id)} == {
        "report.html",
        "report.json",
    }
    version = registry.client.get_model_version(exp["route"], exp["challenger_version"])
    assert version.tags["canary.report_run_id"] == run_id
    assert version.tags["canary.report_uri"] == f"runs:/{run_id}/report.html"
    page = mlflow.artifacts.download_artifacts(
        artifact_uri=f"runs:/{run_id}/report.html",
        dst_path=str(tmp),
        tracking_uri=registry.tracking_uri,
    )
    assert "data:image/png;base64," in Path(page).read_text()
    data = mlflow.artifacts.download_artifacts(
        artifact_uri=f"runs:/{run_id}/report.json",
        dst_path=str(tmp),
        tracking_uri=registry.tracking_uri,
    )
    report: dict[str, Any] = json.loads(Path(data).read_text())
    assert report["final_decision"]["action"] == decision
    assert (
        metrics["arms.challenger.requests"] == report["analysis"]["arms"]["challenger"]["requests"]
    )
    return report


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_better_challenger_is_promoted_and_aliases_move(
    database: str,
    registry: Registry,
    versions: tuple[str, str],
    make_settings: Callable[..., Settings],
    run_router: Any,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    url = request.getfixturevalue("postgres_url") if database == "postgres" else None
    v1, v2 = versions
    with (
        _running(registry, make_settings, run_router, database_url=url) as (server, _),
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        exp = _start(http)
        assert (exp["champion_version"], exp["challenger_version"], exp["status"]) == (
            v1,
            v2,
            "running",
        )
        assert exp["weights"] == {"champion": 0.5, "challenger": 0.5}
        assert (
            http.post("/v1/experiments", json={"route": "chat"}, headers=ADMIN).status_code == 409
        )

        seen = _traffic(http, 240, {"champion": 0.3, "challenger": 0.9})
        assert min(seen.values()) > 80  # the experiment's 50/50 split is live

        detail = http.get(f"/v1/experiments/{exp['id']}").json()
        analysis = detail["analysis"]
        assert (
            analysis["arms"]["challenger"]["thumbs_up"] > analysis["arms"]["champion"]["thumbs_up"]
        )
        rate = analysis["metrics"]["thumbs_up_rate"]
        assert rate["difference"] > 0.4 and rate["p_value"] < 0.001
        assert analysis["srm"]["mismatch"] is False

        decision = _evaluate(http, exp)
        assert (decision["action"], decision["acted"]) == ("promote", True), decision["reasons"]
        assert http.get(f"/v1/experiments/{exp['id']}").json()["status"] == "promoted"
        # The report lands in MLflow as a run, linked from the promoted version.
        run_id = _report_run(http, exp)
    report = _check_report_run(registry, exp, run_id, "promote", tmp_path)
    assert report["analysis"]["decision"]["action"] == "promote"
    champion = registry.resolve("chat", "champion")
    previous = registry.resolve("chat", "previous")
    assert champion is not None and champion.version == v2
    assert previous is not None and previous.version == v1
    assert registry.resolve("chat", "challenger") is None
    tags = registry.client.get_model_version("chat", v2).tags
    assert tags["canary.decision_id"] == exp["id"]


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local Slack-style webhook receiver; its URL and what it received."""
    received: list[dict[str, Any]] = []

    async def hook(request: Request) -> JSONResponse:
        received.append(await request.json())
        return JSONResponse({"ok": True})

    with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as server:
        yield f"{server.url}/hook", received


def test_worse_challenger_is_rolled_back_with_webhook_and_report(
    registry: Registry,
    versions: tuple[str, str],
    make_settings: Callable[..., Settings],
    run_router: Any,
    receiver: tuple[str, list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    v1, v2 = versions
    hook_url, received = receiver
    with (
        _running(registry, make_settings, run_router, webhook_url=hook_url) as (server, app),
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        exp = _start(http)
        seen = _traffic(http, 240, {"champion": 0.9, "challenger": 0.2})
        decision = _evaluate(http, exp)
        assert (decision["action"], decision["acted"]) == ("rollback", True)
        assert app.state.routes.get("chat").challenger_bps == 0  # no more traffic to it
        history = http.get(f"/v1/experiments/{exp['id']}/decisions").json()
        assert [d["action"] for d in history] == ["start", "rollback"]
        report = http.get(f"/v1/experiments/{exp['id']}/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        assert "data:image/png;base64," in report.text and "rollback" in report.text
        assert "Traffic per stage" in report.text
        data = http.get(f"/v1/experiments/{exp['id']}/report.json").json()
        assert data["analysis"]["decision"]["action"] == "rollback"
        assert data["final_decision"]["action"] == "rollback"
        assert {b["arm"] for b in data["timeline"]} == {"champion", "challenger"}
        (stage,) = data["traffic"]  # one stage: 50%, every unit one request
        assert (stage["stage"], stage["challenger_percent"]) == (1, 50.0)
        assert stage["started_at"] < stage["ended_at"] <= data["decisions"][-1]["time"]
        assert stage["units"] == stage["requests"] == seen
        run_id = _report_run(http, exp)
    _check_report_run(registry, exp, run_id, "rollback", tmp_path)
    assert len(received) == 1
    assert "rollback" in received[0]["text"] and exp["id"] in received[0]["text"]
    assert received[0]["decision"]["acted"] is True
    assert registry.resolve("chat", "challenger") is None
    assert registry.resolve("chat", "champion").version == v1  # type: ignore[union-attr]
    assert registry.client.get_model_version("chat", v2).tags["canary.status"] == "rejected"


def test_manual_policy_only_recommends_and_admin_is_required(
    registry: Registry,
    versions: tuple[str, str],
    make_settings: Callable[..., Settings],
    run_router: Any,
) -> None:
    with (
        _running(registry, make_settings, run_router) as (server, _),
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        body = {"route": "chat", "stages": [50], "policy": {**POLICY, "auto": False}}
        assert http.post("/v1/experiments", json=body).status_code == 401
        assert (
            http.post(
                "/v1/experiments", json=body, headers={"authorization": "Bearer x"}
            ).status_code
            == 403
        )
        assert (
            http.post("/v1/experiments", json={"route": "nope"}, headers=ADMIN).status_code == 404
        )
        bad = http.post("/v1/experiments", json={"route": "chat", "stages": [0]}, headers=ADMIN)
        assert bad.status_code == 400
        exp = _start(http, policy=body["policy"])
        _traffic(http, 240, {"champion": 0.3, "challenger": 0.9})
        decision = _evaluate(http, exp)
        assert (decision["action"], decision["acted"]) == ("promote", False)
        assert http.get(f"/v1/experiments/{exp['id']}").json()["status"] == "running"
        paused = http.post(f"/v1/experiments/{exp['id']}/pause", headers=ADMIN)
        assert paused.status_code == 200
        assert http.get(f"/v1/experiments/{exp['id']}").json()["weights"]["challenger"] == 0
        assert http.post(f"/v1/experiments/{exp['id']}/rollback", headers=ADMIN).status_code == 200
        ended = http.post(f"/v1/experiments/{exp['id']}/resume", headers=ADMIN)
        assert ended.status_code == 409
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(http.get("/metrics").text)
            for s in family.samples
        }
    assert registry.resolve("chat", "challenger") is None

    def decisions(action: str, acted: str) -> float:
        labels = (("acted", acted), ("action", action), ("route", "chat"))
        return samples.get(("canary_decisions_total", labels), 0.0)

    # The recommendation, then the operator's pause and rollback, each counted once.
    assert decisions("promote", "false") == 1
    assert decisions("pause", "true") == decisions("rollback", "true") == 1
    assert decisions("promote", "true") == 0
    looks = samples[("canary_evaluation_duration_seconds_count", (("route", "chat"),))]
    assert looks == 1
    assert samples[("canary_evaluation_duration_seconds_sum", (("route", "chat"),))] > 0


def test_stages_advance_and_an_srm_halts(
    registry: Registry,
    versions: tuple[str, str],
    make_settings: Callable[..., Settings],
    run_router: Any,
) -> None:
    with (
        _running(registry, make_settings, run_router, allow_arm_override=True) as (server, app),
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        exp = _start(http, stages=[50, 75])
        first = _traffic(http, 240, {"champion": 0.3, "challenger": 0.9})
        decision = _evaluate(http, exp)
        assert (decision["action"], decision["acted"]) == ("advance", True), decision["reasons"]
        now = http.get(f"/v1/experiments/{exp['id']}").json()
        assert (now["stage"], now["weights"]["challenger"]) == (2, 0.75)
        assert app.state.routes.get("chat").challenger_bps == 7_500

        # Forced arms (X-Canary-Arm; arena battles likewise) are no units of the split:
        # 150 of them all on the champion neither break the 25/75 split nor fill the stage.
        for i in range(150):
            r = http.post(
                "/v1/chat/completions",
                json={
                    "model": "chat",
                    "user": f"forced-{i}",
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers={"x-canary-arm": "champion"},
            )
            assert r.status_code == 200
        waiting = _evaluate(http, exp)
        assert (waiting["action"], waiting["acted"]) == ("continue", False), waiting["reasons"]
        assert waiting["analysis"]["srm"]["mismatch"] is False

        # A replica whose split is wrong (set by hand here) does break it: halt.
        put = http.put("/v1/routes/chat/weights", json={"challenger": 0}, headers=ADMIN)
        assert put.status_code == 200
        _traffic(http, 150, {"champion": 0.5, "challenger": 0.5}, prefix="stage2")
        halted = _evaluate(http, exp)
        assert (halted["action"], halted["acted"]) == ("halt", True), halted["reasons"]
        assert any("ratio" in r.lower() for r in halted["reasons"])
        assert http.get(f"/v1/experiments/{exp['id']}").json()["status"] == "halted"
        assert app.state.routes.get("chat").challenger_bps == 0

        # Traffic per phase in the report: stage 2 counts the forced requests, not their
        # units; the halt started a phase of its own, with no challenger traffic.
        data = http.get(f"/v1/experiments/{exp['id']}/report.json").json()
        one, two, stopped = data["traffic"]
        assert (one["stage"], one["challenger_percent"], one["status"]) == (1, 50.0, "running")
        assert (two["stage"], two["challenger_percent"], two["status"]) == (2, 75.0, "running")
        assert (stopped["stage"], stopped["status"]) == (2, "halted")
        assert one["units"] == one["requests"] == first
        assert two["requests"] == {"champion": 300, "challenger": 0}
        assert two["units"] == {"champion": 150, "challenger": 0}
        assert one["ended_at"] == two["started_at"]
        page = http.get(f"/v1/experiments/{exp['id']}/report").text
        assert "mismatch" in page
    champion = registry.resolve("chat", "champion")
    assert champion is not None and champion.version == versions[0]  # never promoted


def test_two_evaluators_at_once_act_once(
    registry: Registry,
    versions: tuple[str, str],
    make_settings: Callable[..., Settings],
    run_router: Any,
    postgres_url: str,
) -> None:
    with (
        _running(registry, make_settings, run_router, database_url=postgres_url) as (one, _),
        _running(registry, make_settings, run_router, database_url=postgres_url) as (two, _),
        httpx.Client(base_url=one.url, timeout=30) as http,
    ):
        exp = _start(http)
        _traffic(http, 240, {"champion": 0.3, "challenger": 0.9})
        with ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(
                    lambda url: httpx.post(
                        f"{url}/v1/experiments/{exp['id']}/evaluate", headers=ADMIN, timeout=60
                    ),
                    [one.url, two.url],
                )
            )
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 409], [a.text for a in answers]
        acted = [a.json() for a in answers if a.status_code == 200]
        assert acted[0]["action"] == "promote" and acted[0]["acted"] is True
        history = http.get(f"/v1/experiments/{exp['id']}/decisions").json()
        assert [d["action"] for d in history] == ["start", "promote"]
    assert registry.resolve("chat", "champion").version == versions[1]  # type: ignore[union-attr]


def test_experiment_cli(
    registry: Registry,
    versions: tuple[str, str],
    make_settings: Callable[..., Settings],
    run_router: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from router.cli import main

    def canary(*argv: str) -> int:
        with pytest.raises(SystemExit) as done:
            main(list(argv))
        return int(done.value.code or 0)

    with _running(registry, make_settings, run_router) as (server, _):
        url = ["--router", server.url]
        assert canary("experiment", "start", "chat", "--stages", "5,50", *url) == 2
        assert "HTTP 401" in capsys.readouterr().err
        assert (
            canary(
                "experiment",
                "start",
                "chat",
                "--stages",
                "5,50",
                "--no-auto",
                "--token",
                TOKEN,
                *url,
            )
            == 0
        )
        started = json.loads(capsys.readouterr().out)
        assert (started["stages"], started["policy"]["auto"]) == ([5.0, 50.0], False)
        assert canary("experiment", "status", started["id"], *url) == 0
        assert json.loads(capsys.readouterr().out)["status"] == "running"
        out = tmp_path / "report.html"
        assert canary("experiment", "report", started["id"], "--out", str(out), *url) == 0
        assert "<html" in out.read_text().lower()
        assert canary("experiment", "rollback", started["id"], "--token", TOKEN, *url) == 0
    assert canary("experiment", "status", "--router", "http://127.0.0.1:9") == 2
    assert "unreachable" in capsys.readouterr().err


def test_get_and_report_use_the_stored_sequential_history(
    registry: Registry,
    versions: tuple[str, str],
    make_settings: Callable[..., Settings],
    run_router: Any,
) -> None:
    with (
        _running(registry, make_settings, run_router) as (server, app),
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        exp = _start(http, policy={**POLICY, "auto": False})
        _traffic(http, 240, {"champion": 0.9, "challenger": 0.3})
        looked = _evaluate(http, exp)["analysis"]["metrics"]["thumbs_up_rate"]
        assert looked["p_worse"] < 0.05
        # Then the challenger turns good: on the data alone the evidence of harm weakens.
        _traffic(http, 240, {"champion": 0.3, "challenger": 0.9}, prefix="later")
        row = http.get(f"/v1/experiments/{exp['id']}").json()
        alone = app.state.evaluator.analysis(row)["metrics"]["thumbs_up_rate"]
        assert alone["p_worse"] > looked["p_worse"]
        # The always-valid p of harm keeps the running minimum of the evaluator's looks.
        now = row["analysis"]["metrics"]["thumbs_up_rate"]
        assert now["p_worse"] == looked["p_worse"]
        assert now["p_value"] == alone["p_value"]  # the fixed-horizon one is fresh
        assert now["p_better"] == alone["p_better"]  # "better" is this look's alone
        report = http.get(f"/v1/experiments/{exp['id']}/report.json").json()
        thumbs = report["analysis"]["metrics"]["thumbs_up_rate"]
        assert thumbs["p_worse"] == looked["p_worse"]
        # A pause is a look too: the history carries over it.
        assert http.post(f"/v1/experiments/{exp['id']}/pause", headers=ADMIN).status_code == 200
        again = http.get(f"/v1/experiments/{exp['id']}").json()["analysis"]
        assert again["metrics"]["thumbs_up_rate"]["p_worse"] == looked["p_worse"]


def test_report_run_on_a_real_mlflow_server(
    mlflow_server: str,
    engines: tuple[str, str],
    make_settings: Callable[..., Settings],
    run_router: Any,
    tmp_path: Path,
) -> None:
    remote = Registry(mlflow_server, cache_dir=tmp_path / "cache")
    route = f"chat-{uuid.uuid4().hex[:8]}"  # the server is shared by the session
    for engine, alias in zip(engines, ("champion", "challenger"), strict=True):
        remote.register_endpoint(route, base_url=engine, remote_model="m", params={}, alias=alias)
    with (
        _running(remote, make_settings, run_router) as (server, _),
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        exp = _start(http, route=route, policy={**POLICY, "auto": False})
        _traffic(http, 120, {"champion": 0.5, "challenger": 0.5}, route=route)
        r = http.post(f"/v1/experiments/{exp['id']}/rollback", headers=ADMIN)
        assert r.status_code == 200
        run_id = _report_run(http, exp)
    report = _check_report_run(remote, exp, run_id, "rollback", tmp_path)
    assert report["final_decision"]["actor"] == "api"
    # A manual rollback records the analysis the person overrode.
    assert report["decisions"][-1]["action"] == "rollback"
    assert remote.client.get_model_version(route, exp["challenger_version"]).tags[
        "canary.status"
    ] == ("rejected")


def test_a_report_that_fails_to_log_keeps_the_decision_and_is_retried(
    registry: Registry,
    versions: tuple[str, str],
    make_settings: Callable[..., Settings],
    run_router: Any,
    tmp_path: Path,
    fast_http_failures: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, v2 = versions
    # Runs go to a tracking server that is down; the model registry itself works.
    port = free_port()
    split = Registry(
        f"http://127.0.0.1:{port}", registry.registry_uri, cache_dir=tmp_path / "cache"
    )
    with (
        _running(split, make_settings, run_router) as (server, _),
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        exp = _start(http, policy={**POLICY, "auto": False})
        _traffic(http, 120, {"champion": 0.5, "challenger": 0.5})
        promoted = http.post(
            f"/v1/experiments/{exp['id']}/promote", json={"force": True}, headers=ADMIN
        )
        assert promoted.status_code == 200
        assert registry.resolve("chat", "champion").version == v2  # type: ignore[union-attr]

        def failures() -> float:
            text = http.get("/metrics").text
            line = next(x for x in text.splitlines() if x.startswith("canary_report_log_fail"))
            return float(line.split()[-1])

        deadline = time.monotonic() + 60
        while failures() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert failures() >= 1  # logged and counted ...
        detail = http.get(f"/v1/experiments/{exp['id']}").json()
        assert (detail["status"], detail["report_run_id"]) == ("promoted", None)  # ... kept
        still_down = http.post(f"/v1/experiments/{exp['id']}/report", headers=ADMIN)
        assert still_down.status_code == 502
        error = still_down.json()["error"]
        assert error["code"] == "registry_error" and f":{port}" in error["message"]

        with run_mlflow_server(tmp_path / "tracking", port=port):
            # Back to patient HTTP: a server that just started answers slowly at first.
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
            retried = http.post(f"/v1/experiments/{exp['id']}/report", headers=ADMIN)
            assert retried.status_code == 200, retried.text
            run_id = retried.json()["report_run_id"]
            assert _report_run(http, exp) == run_id
            assert split.client.get_run(run_id).data.tags["canary.decision"] == "promote"
            again = http.post(f"/v1/experiments/{exp['id']}/report", headers=ADMIN)
            assert again.json()["report_run_id"] == run_id  # logged once
    version = registry.client.get_model_version("chat", v2)
    assert version.tags["canary.report_run_id"] == run_id


def test_static_routes_skip_mlflow(make_settings: Callable[..., Settings], run_router: Any) -> None:
    with (
        run_router(make_settings(admin_token=TOKEN, evaluation_interval_s=3600)) as (server, app),
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        exp = _start(http, policy={**POLICY, "auto": False})
        live = http.post(f"/v1/experiments/{exp['id']}/report", headers=ADMIN)
        assert live.status_code == 409
        _traffic(http, 60, {"champion": 0.5, "challenger": 0.5})
        assert http.post(f"/v1/experiments/{exp['id']}/rollback", headers=ADMIN).status_code == 200
        detail = http.get(f"/v1/experiments/{exp['id']}").json()
        assert (detail["status"], detail["report_run_id"], detail["report_uri"]) == (
            "rolled_back",
            None,
            None,
        )
        refused = http.post(f"/v1/experiments/{exp['id']}/report", headers=ADMIN)
        assert refused.status_code == 400 and "registry" in refused.json()["error"]["message"]
        assert http.post("/v1/experiments/nope/report", headers=ADMIN).status_code == 404
        assert http.post(f"/v1/experiments/{exp['id']}/report").status_code == 401
        assert http.get(f"/v1/experiments/{exp['id']}/report").status_code == 200
        assert not app.state.evaluator.logs_reports
