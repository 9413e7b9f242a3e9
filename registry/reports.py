"""Promotion reports as MLflow runs, linked from the model version they judged.

When a canary ends (promote, rollback or halt), its report becomes a run in the MLflow
experiment ``canary-reports``: params (route, experiment, stages, policy, versions),
metrics (the final analysis), artifacts ``report.html`` and ``report.json``, and the tags
``canary.route``, ``canary.experiment_id``, ``canary.champion_version``,
``canary.challenger_version`` and ``canary.decision``. The challenger version (the one
promoted or rejected) then gets ``canary.report_run_id`` and ``canary.report_uri``
(``runs:/<run id>/report.html``, what ``mlflow.artifacts.download_artifacts`` takes).

Everything here takes plain values: the router decides what to log, this module only
knows MLflow. Idempotent: a finished run already logged for the experiment (found by its
``canary.experiment_id`` tag) is reused, so a retry after a failure midway logs no
second run.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric, Param, RunStatus

from registry.errors import NotRegistered, RegistryUnavailable
from registry.store import Registry

__all__ = ["REPORTS_EXPERIMENT", "ReportRun", "find_report_run", "log_report"]

#: The MLflow experiment that holds one run per ended canary.
REPORTS_EXPERIMENT = "canary-reports"
REPORT_HTML, REPORT_JSON = "report.html", "report.json"
TAG_EXPERIMENT = "canary.experiment_id"
#: Version tags that link a model version to its report run.
TAG_REPORT_RUN, TAG_REPORT_URI = "canary.report_run_id", "canary.report_uri"
_BATCH = 100  # MLflow's limit of params (and tags) per log_batch call


@dataclass(frozen=True, slots=True)
class ReportRun:
    """A report's run: its id, the report's URI, and whether the version links to it."""

    run_id: str
    report_uri: str
    #: False when the version no longer exists in the registry (the run is still logged).
    version_tagged: bool


def report_uri(run_id: str) -> str:
    """``runs:/<run id>/report.html``."""
    return f"runs:/{run_id}/{REPORT_HTML}"


def find_report_run(registry: Registry, experiment_id: str) -> str | None:
    """The id of the finished report run of canary ``experiment_id``, if one was logged."""
    with _tracking(registry):
        return _finished_run(registry, registry._experiment_id(REPORTS_EXPERIMENT), experiment_id)


def log_report(
    registry: Registry,
    *,
    route: str,
    experiment_id: str,
    champion_version: str,
    challenger_version: str,
    decision: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    html: str,
    data: Mapping[str, Any],
) -> ReportRun:
    """Log the report of an ended canary as a run and link it from the challenger version.

    ``params`` are stringified; ``metrics`` that are None or not finite are left out;
    ``html`` and ``data`` become ``report.html`` and ``report.json``. Blocks on MLflow:
    call it from a worker thread. Raises the registry's errors (``RegistryUnavailable``
    when MLflow cannot be reached); nothing is linked until the run is complete.
    """
    if "'" in experiment_id:  # it goes into a search filter below
        raise ValueError(f"experiment id {experiment_id!r} contains a quote")
    with _tracking(registry):
        mlflow_experiment = registry._experiment_id(REPORTS_EXPERIMENT)
        run_id = _finished_run(registry, mlflow_experiment, experiment_id)
        if run_id is None:
            tags = {
                "canary.route": route,
                TAG_EXPERIMENT: experiment_id,
                "canary.champion_version": champion_version,
                "canary.challenger_version": challenger_version,
                "canary.decision": decision,
            }
            run_id = _log_run(
                registry,
                mlflow_experiment,
                run_name=f"{route} {decision} ({experiment_id})",
                tags=tags,
                params=params,
                metrics=metrics,
                html=html,
                data=data,
            )
    uri = report_uri(run_id)
    with registry._calling():
        try:
            registry._version(route, challenger_version)
        except NotRegistered:  # deleted since: the run is all there is to keep
            return ReportRun(run_id, uri, version_tagged=False)
        registry._tag(route, challenger_version, {TAG_REPORT_RUN: run_id, TAG_REPORT_URI: uri})
    return ReportRun(run_id, uri, version_tagged=True)


@contextmanager
def _tracking(registry: Registry) -> Iterator[None]:
    """``registry._calling`` for runs: a failure names the tracking URI, which can differ
    from the registry's (``MLFLOW_REGISTRY_URI``)."""
    try:
        with registry._calling():
            yield
    except RegistryUnavailable as exc:
        if exc.uri == registry.tracking_uri:
            raise
        raise RegistryUnavailable(registry.tracking_uri, exc.detail) from exc


def _finished_run(registry: Registry, mlflow_experiment: str, experiment_id: str) -> str | None:
    runs = registry.client.search_runs(
        [mlflow_experiment],
        filter_string=(
            f"tags.`{TAG_EXPERIMENT}` = '{experiment_id}' and attributes.status = 'FINISHED'"
        ),
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return str(runs[0].info.run_id) if runs else None


def _log_run(
    registry: Registry,
    mlflow_experiment: str,
    *,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    html: str,
    data: Mapping[str, Any],
) -> str:
    """One complete run; marked FAILED (and so never reused) if any part fails."""
    client = registry.client
    # The note is what MLflow's UI shows on the run's page.
    run_tags = {**tags, "mlflow.note.content": _note(tags)}
    run = client.create_run(mlflow_experiment, run_name=run_name, tags=run_tags)
    run_id = str(run.info.run_id)
    try:
        now = int(time.time() * 1000)
        values = [
            Metric(key, float(v), now, 0)
            for key, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        strings = [Param(key, str(v)) for key, v in params.items() if v is not None]
        for i in range(0, max(len(values), len(strings), 1), _BATCH):
            client.log_batch(run_id, metrics=values[i : i + _BATCH], params=strings[i : i + _BATCH])
        client.log_text(run_id, html, REPORT_HTML)
        client.log_text(run_id, json.dumps(data, indent=2, default=str), REPORT_JSON)
    except BaseException:
        with contextlib.suppress(Exception):  # MLflow may be the thing that failed
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id


def _note(tags: Mapping[str, str]) -> str:
    return (
        f"Canary report of route `{tags['canary.route']}` ({tags[TAG_EXPERIMENT]}): "
        f"challenger v{tags['canary.challenger_version']} against champion "
        f"v{tags['canary.champion_version']}, decision **{tags['canary.decision']}**. "
        f"See the artifact `{REPORT_HTML}`."
    )
