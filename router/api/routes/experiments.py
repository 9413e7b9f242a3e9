"""Canary experiments: start, inspect, evaluate, and act on them (mutations are admin)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from experiments.report import render_html
from router.api.deps import AdminDep, ClientDep, EngineDep, WriterDep
from router.api.json_body import JSONRoute
from router.errors import BackendError, CanaryError, Conflict, InvalidRequest, NotFound
from router.evaluation import store
from router.evaluation.evaluator import Evaluator
from router.evaluation.models import LIVE
from router.schemas import ExperimentActionIn, ExperimentIn

router = APIRouter(tags=["experiments"], route_class=JSONRoute)


async def _evaluator(request: Request) -> Evaluator:
    return request.app.state.evaluator


EvaluatorDep = Annotated[Evaluator, Depends(_evaluator)]


async def _experiment(
    experiment_id: str, engine: EngineDep, principal: ClientDep
) -> dict[str, Any]:
    exp = await run_in_threadpool(store.get_experiment, engine, experiment_id=experiment_id)
    if exp is None:
        raise NotFound(f"No experiment {experiment_id!r}.", code="experiment_not_found")
    principal.require_route(exp["route"])
    return exp


ExperimentDep = Annotated[dict[str, Any], Depends(_experiment)]


def _public(exp: dict[str, Any]) -> dict[str, Any]:
    weight = store.challenger_percent(exp) / 100
    run_id = exp.get("report_run_id")
    return {
        **exp,
        "stage": exp["stage_index"] + 1,
        "weights": {"champion": 1 - weight, "challenger": weight},
        # The report's MLflow run, once the ended experiment's report is logged there.
        "report_uri": f"runs:/{run_id}/report.html" if run_id else None,
    }


@router.post("/v1/experiments", status_code=201, dependencies=[AdminDep], name="experiment.start")
async def start_experiment(
    body: ExperimentIn, request: Request, evaluator: EvaluatorDep
) -> dict[str, Any]:
    """Start a canary on a route: 409 if one is live there, or if this challenger version
    was rolled back or ended inconclusive before (unless ``force``); 400 without a challenger."""
    request.state.audit_target = body.route
    exp = await evaluator.start(
        route=body.route,
        stages=body.stages,
        policy=body.policy,
        force=body.force,
        reason=body.reason,
    )
    return _public(exp)


@router.get("/v1/experiments")
async def list_experiments(engine: EngineDep, principal: ClientDep) -> list[dict[str, Any]]:
    """Every experiment on the routes the caller may use, newest first."""
    rows = await run_in_threadpool(store.list_experiments, engine)
    allowed = principal.key.routes if principal.key is not None else None
    return [_public(e) for e in rows if allowed is None or e["route"] in allowed]


@router.get("/v1/experiments/{experiment_id}")
async def get_experiment(exp: ExperimentDep, evaluator: EvaluatorDep) -> dict[str, Any]:
    """The experiment with a fresh analysis and the decision the policy would take now
    (always-valid p-values carry the running minimum of the evaluations so far)."""
    analysis = await run_in_threadpool(evaluator.current_analysis, exp)
    return {**_public(exp), "analysis": analysis}


@router.get("/v1/experiments/{experiment_id}/report.json")
async def report_json(exp: ExperimentDep, evaluator: EvaluatorDep) -> dict[str, Any]:
    """The promotion report's data: analysis, timeline, policy and decisions."""
    return await run_in_threadpool(evaluator.report, exp)


@router.get("/v1/experiments/{experiment_id}/report", response_class=HTMLResponse)
async def report_html(exp: ExperimentDep, evaluator: EvaluatorDep) -> HTMLResponse:
    """The promotion report as one self-contained HTML page (plots embedded)."""
    data = await run_in_threadpool(evaluator.report, exp)
    return HTMLResponse(await run_in_threadpool(render_html, data))


@router.get("/v1/experiments/{experiment_id}/decisions")
async def list_decisions(exp: ExperimentDep, engine: EngineDep) -> list[dict[str, Any]]:
    """Every decision taken on the experiment, oldest first, with its analysis."""
    return await run_in_threadpool(store.list_decisions, engine, experiment_id=exp["id"])


@router.post(
    "/v1/experiments/{experiment_id}/report", dependencies=[AdminDep], name="experiment.report"
)
async def publish_report(
    experiment_id: str, exp: ExperimentDep, evaluator: EvaluatorDep
) -> dict[str, Any]:
    """Log the ended experiment's report to MLflow now, if it is not there yet (the
    evaluator does it on its own when an experiment ends, and retries failures)."""
    if exp["status"] in LIVE:
        raise Conflict(f"Experiment {experiment_id!r} has not ended ({exp['status']}).")
    if not evaluator.logs_reports:
        raise InvalidRequest(
            "No MLflow registry to log the report to: this router's routes come from its "
            "settings. The report is at GET /v1/experiments/{id}/report."
        )
    try:
        run_id = await evaluator.publish_report(experiment_id)
    except CanaryError:
        raise
    except Exception as exc:
        raise BackendError(
            f"Could not log the report to MLflow: {exc}", code="registry_error"
        ) from exc
    return {
        "experiment_id": experiment_id,
        "report_run_id": run_id,
        "report_uri": f"runs:/{run_id}/report.html",
    }


@router.post(
    "/v1/experiments/{experiment_id}/evaluate", dependencies=[AdminDep], name="experiment.evaluate"
)
async def evaluate(
    experiment_id: str, evaluator: EvaluatorDep, writer: WriterDep
) -> dict[str, Any]:
    """Evaluate now; in auto mode the decision is acted on, in manual mode recommended."""
    await writer.flush()  # "now" includes every request this router has answered
    return await evaluator.evaluate(experiment_id, actor="api")


@router.post("/v1/experiments/{experiment_id}/{action}", dependencies=[AdminDep], name="experiment")
async def act(
    experiment_id: str,
    action: Literal["promote", "rollback", "advance", "pause", "resume"],
    evaluator: EvaluatorDep,
    body: ExperimentActionIn | None = None,
) -> dict[str, Any]:
    """An admin's action, recorded with its reason. Promote (alias swap; 409 unless the
    data back it or ``force``), roll back, advance to the next stage, pause, or resume (a
    paused experiment, or a halted one after investigating its sample ratio mismatch)."""
    body = body or ExperimentActionIn()
    return await evaluator.force(
        experiment_id, action, actor="api", force=body.force, reason=body.reason
    )
