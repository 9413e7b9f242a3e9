"""The promotion report: its data from the database, and its MLflow run once it has ended.

:func:`report_data` is what ``GET /v1/experiments/{id}/report.json`` returns and
``experiments.report.render_html`` draws: the analysis (with the stored sequential
history), the thumbs-up timeline, traffic per phase, the decision history and, for an
ended experiment, the decision that ended it. :func:`publish` renders it and logs it to
MLflow through ``registry.reports``, then records the run id on the experiment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from experiments.analysis import Analysis
from experiments.report import render_html, report_input
from router.evaluation import store
from router.evaluation.aggregate import stage_traffic, timeline
from router.evaluation.models import ENDED_BY, LIVE
from router.inference_log.models import utcnow

if TYPE_CHECKING:
    from registry.reports import ReportRun
    from registry.store import Registry

__all__ = ["phases_of", "publish", "report_data", "run_metrics", "run_params"]


def phases_of(exp: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The phases the experiment went through: ``{index, stage, status, challenger_percent,
    started_at, ended_at}``. A phase ends when the next starts; an ended experiment's last
    phase when it ended, a live one's is open (None)."""
    phases = exp["phases"]
    ended = None if exp["status"] in LIVE else store.aware(exp["updated_at"])
    starts = [store.aware(p["started_at"]) for p in phases]
    return [
        {
            "index": k,
            "stage": int(p["stage"]),
            "status": p["status"],
            "challenger_percent": float(p["challenger_percent"]),
            "started_at": starts[k],
            "ended_at": starts[k + 1] if k + 1 < len(starts) else ended,
        }
        for k, p in enumerate(phases)
    ]


def report_data(engine: Engine, exp: dict[str, Any], analysis: Analysis) -> dict[str, Any]:
    """``experiments.report.render_html``'s input for ``exp`` with its current ``analysis``."""
    decisions = store.list_decisions(engine, experiment_id=exp["id"])
    ended = store.aware(exp["updated_at"]) if exp["status"] not in LIVE else utcnow()
    span_s = max((ended - store.aware(exp["created_at"])).total_seconds(), 1.0)
    buckets = timeline(
        engine,
        route=exp["route"],
        experiment_id=exp["id"],
        since=None,
        bucket_s=max(60.0, span_s / 60),  # about 60 points whatever the length
    )
    phases = phases_of(exp)
    counts = stage_traffic(
        engine,
        route=exp["route"],
        experiment_id=exp["id"],
        starts=[p["started_at"] for p in phases],
    )
    final = None
    if exp["status"] in ENDED_BY:
        acted = [d for d in decisions if d["acted"] and d["action"] == ENDED_BY[exp["status"]]]
        if acted:
            final = {
                "action": acted[-1]["action"],
                "reasons": acted[-1]["reasons"],
                "actor": acted[-1]["actor"],
                "time": _iso(acted[-1]["created_at"]),
            }
    return report_input(
        analysis,
        title=f"Canary report: {exp['route']}",
        route=exp["route"],
        experiment_id=exp["id"],
        champion_version=exp["champion_version"],
        challenger_version=exp["challenger_version"],
        status=exp["status"],
        stage=exp["stage_index"],
        generated_at=utcnow().isoformat(),
        report_run_id=exp.get("report_run_id"),
        final_decision=final,
        timeline=[
            {"time": _iso(b["start"]), "arm": b["arm"], "ups": b["ups"], "rated": b["rated"]}
            for b in buckets
        ],
        traffic=[
            {
                "phase": p["index"] + 1,
                "stage": p["stage"] + 1,
                "status": p["status"],
                "challenger_percent": p["challenger_percent"],
                "started_at": _iso(p["started_at"]),
                "ended_at": _iso(p["ended_at"]) if p["ended_at"] else None,
                "requests": c["requests"],
                "units": c["units"],
            }
            for p, c in zip(phases, counts, strict=True)
        ],
        policy=exp["policy"],
        decisions=[
            {
                "time": _iso(d["created_at"]),
                "action": d["action"],
                "acted": d["acted"],
                "actor": d["actor"],
                "reasons": d["reasons"],
            }
            for d in decisions
        ],
    )


def run_params(exp: Mapping[str, Any]) -> dict[str, Any]:
    """The report run's params: route, experiment, stages, policy fields, both versions."""
    return {
        "route": exp["route"],
        "experiment_id": exp["id"],
        "stages": ",".join(f"{float(s):g}" for s in exp["stages"]),
        "final_stage": int(exp["stage_index"]) + 1,
        "status": exp["status"],
        "champion_version": exp["champion_version"],
        "challenger_version": exp["challenger_version"],
        "started_at": _iso(exp["created_at"]),
        "ended_at": _iso(exp["updated_at"]),
        **{f"policy.{k}": _param(v) for k, v in exp["policy"].items()},
    }


def run_metrics(analysis: Mapping[str, Any]) -> dict[str, float]:
    """Every number of an analysis (``Analysis.to_dict``) as a flat MLflow metric.

    Keys follow the JSON: ``arms.challenger.requests``, ``thumbs_up_rate.p_value``,
    ``thumbs_up_rate.p_better``, ``latency.p95_ratio``, ``votes.win_rate``,
    ``votes.bradley_terry.challenger``, ``srm.p_value``; a confidence interval becomes
    ``.ci_low`` / ``.ci_high``. None and non-finite values are left out.
    """
    out: dict[str, float] = {}
    _flatten("arms", analysis.get("arms") or {}, out)
    for key, value in (analysis.get("metrics") or {}).items():
        _flatten(key, value, out)
    _flatten("srm", analysis.get("srm") or {}, out)
    return out


def publish(
    engine: Engine, registry: Registry, exp: dict[str, Any], report: dict[str, Any]
) -> ReportRun:
    """Log the ended experiment's ``report`` to MLflow and record the run id. Blocking."""
    from registry.reports import log_report  # MLflow loads only where a registry is used

    run = log_report(
        registry,
        route=exp["route"],
        experiment_id=exp["id"],
        champion_version=exp["champion_version"],
        challenger_version=exp["challenger_version"],
        decision=ENDED_BY[exp["status"]],
        params=run_params(exp),
        metrics=run_metrics(report["analysis"]),
        html=render_html(report),
        data=report,
    )
    store.set_report_run(engine, experiment_id=exp["id"], run_id=run.run_id)
    return run


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}", inner, out)
    elif isinstance(value, list | tuple) and len(value) == 2 and prefix.endswith(".ci"):
        _flatten(f"{prefix}_low", value[0], out)
        _flatten(f"{prefix}_high", value[1], out)
    elif isinstance(value, int | float) and math.isfinite(value):
        out[prefix] = float(value)


def _param(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _iso(moment: datetime) -> str:
    return store.aware(moment).isoformat()
