"""Promotion reports as MLflow runs: embedded sqlite store and a real ``mlflow server``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest

from registry.errors import RegistryUnavailable
from registry.reports import REPORTS_EXPERIMENT, find_report_run, log_report
from registry.store import Registry

HTML = "<!DOCTYPE html><html><body><h1>Canary report: r</h1></body></html>"
DATA = {"analysis": {"decision": {"action": "promote"}}, "traffic": [{"stage": 1}]}


def _versions(registry: Registry, route: str) -> tuple[str, str]:
    champion = registry.register_endpoint(
        route, base_url="http://127.0.0.1:9/v1", remote_model="a", params={}, alias="champion"
    )
    challenger = registry.register_endpoint(
        route, base_url="http://127.0.0.1:9/v1", remote_model="b", params={}, alias="challenger"
    )
    return champion, challenger


def _log(registry: Registry, route: str, challenger: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "route": route,
        "experiment_id": f"exp-{route}",
        "champion_version": "1",
        "challenger_version": challenger,
        "decision": "promote",
        "params": {"route": route, "stages": "5,25,50", "policy.alpha": 0.05, "skipped": None},
        "metrics": {
            "thumbs_up_rate.p_value_sequential": 0.004,
            "arms.challenger.requests": 812.0,
            "latency.p95_ratio": None,  # no sample: left out
            "votes.win_rate": float("nan"),  # left out
        },
        "html": HTML,
        "data": DATA,
        **overrides,
    }
    return log_report(registry, **values)


def _check_run(registry: Registry, route: str, challenger: str, run_id: str, tmp: Path) -> None:
    run = registry.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"route": route, "stages": "5,25,50", "policy.alpha": "0.05"}
    assert run.data.metrics == {
        "thumbs_up_rate.p_value_sequential": 0.004,
        "arms.challenger.requests": 812.0,
    }
    tags = run.data.tags
    assert tags["canary.route"] == route
    assert tags["canary.experiment_id"] == f"exp-{route}"
    assert (tags["canary.champion_version"], tags["canary.challenger_version"]) == (
        "1",
        challenger,
    )
    assert tags["canary.decision"] == "promote"
    experiment = registry.client.get_experiment(run.info.experiment_id)
    assert experiment.name == REPORTS_EXPERIMENT
    names = sorted(a.path for a in registry.client.list_artifacts(run_id))
    assert names == ["report.html", "report.json"]
    # The version links to the run by a URI MLflow itself resolves.
    version_tags = registry.client.get_model_version(route, challenger).tags
    assert version_tags["canary.report_run_id"] == run_id
    uri = version_tags["canary.report_uri"]
    assert uri == f"runs:/{run_id}/report.html"
    page = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(tmp), tracking_uri=registry.tracking_uri
    )
    assert Path(page).read_text() == HTML
    data = mlflow.artifacts.download_artifacts(
        artifact_uri=f"runs:/{run_id}/report.json",
        dst_path=str(tmp),
        tracking_uri=registry.tracking_uri,
    )
    assert json.loads(Path(data).read_text()) == DATA


def test_report_run_on_the_embedded_store(registry: Registry, tmp_path: Path) -> None:
    _, challenger = _versions(registry, "r")
    assert find_report_run(registry, "exp-r") is None
    run = _log(registry, "r", challenger)
    assert run.version_tagged and run.report_uri == f"runs:/{run.run_id}/report.html"
    _check_run(registry, "r", challenger, run.run_id, tmp_path)
    assert find_report_run(registry, "exp-r") == run.run_id
    # Artifacts stay under the registry's own artifact root, in a folder of their own.
    assert registry.artifact_root is not None
    assert list((registry.artifact_root / REPORTS_EXPERIMENT).rglob("report.html"))


def test_a_second_call_reuses_the_run(registry: Registry) -> None:
    _, challenger = _versions(registry, "r")
    first = _log(registry, "r", challenger)
    again = _log(registry, "r", challenger, html="<html>another rendering</html>")
    assert again.run_id == first.run_id
    experiment = registry.client.get_experiment_by_name(REPORTS_EXPERIMENT)
    assert experiment is not None
    runs = registry.client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]


def test_a_version_gone_from_the_registry_still_gets_its_run(registry: Registry) -> None:
    _versions(registry, "r")
    run = _log(registry, "r", "42")
    assert run.version_tagged is False
    assert registry.client.get_run(run.run_id).info.status == "FINISHED"


def test_a_quote_in_the_experiment_id_is_refused(registry: Registry) -> None:
    with pytest.raises(ValueError, match="quote"):
        _log(registry, "r", "2", experiment_id="exp-'x")


def test_report_run_on_a_real_mlflow_server(
    mlflow_server: str, tmp_path: Path, make_registry: Any
) -> None:
    remote = Registry(mlflow_server, cache_dir=tmp_path / "cache")
    _, challenger = _versions(remote, "server-report")
    run = _log(remote, "server-report", challenger)
    assert run.version_tagged
    _check_run(remote, "server-report", challenger, run.run_id, tmp_path)
    # Another client of the same server finds it.
    assert find_report_run(Registry(mlflow_server, cache_dir=tmp_path), "exp-server-report") == (
        run.run_id
    )


def test_an_unreachable_tracking_server_raises_registry_unavailable(
    registry: Registry, tmp_path: Path, fast_http_failures: None
) -> None:
    _, challenger = _versions(registry, "r")
    # Tracking (runs) on a server that is down; the model registry itself is fine.
    split = Registry("http://127.0.0.1:9", registry.registry_uri, cache_dir=tmp_path / "cache")
    with pytest.raises(RegistryUnavailable):
        _log(split, "r", challenger)
    assert "canary.report_run_id" not in registry.client.get_model_version("r", challenger).tags
