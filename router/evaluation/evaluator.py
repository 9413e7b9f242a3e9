"""The evaluator: aggregates an experiment in SQL, runs the policy, records and acts.

Acting means new stage weights (advance), an alias swap in the registry (promote),
challenger weight 0 and ``@challenger`` removed (rollback), or challenger weight 0 with the
registry untouched (inconclusive: the experiment ran out of units or days). ``halt`` stops
traffic to the challenger and alerts, in manual mode too; a halted experiment stays live
until an admin resumes it (after investigating) or rolls it back. Otherwise manual mode
(``policy.auto`` false) only recommends, and an admin acts by hand.

Every traffic change (start, advance, pause, resume, halt) appends a **phase** to the
experiment (``store.new_phase``): the statistics count only rows of running phases,
stratified by phase, so a pause or a stage change cannot bias them (``analysis.look``).

Experiment state lives in the database; every router process applies it to its routes on
each tick (``sync_routes``), so replicas agree, and one process at a time acts
(``store.transition``).

An experiment that ends leaves its promotion report in MLflow (``registry.reports``): it
is logged in the background, after the decision is committed, so a registry that is down
never undoes or delays a decision; a report that failed to log is retried on later ticks
(with backoff) or on ``publish_report``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine

from experiments.analysis import Analysis, Look, analyse
from experiments.policy import Policy
from router.assignment import BUCKETS
from router.errors import CanaryError, Conflict, InvalidRequest, NotFound
from router.evaluation import reporting, store
from router.evaluation.models import (
    ENDED_BY,
    HALTED,
    INCONCLUSIVE,
    LIVE,
    PAUSED,
    ROLLED_BACK,
    RUNNING,
)
from router.evaluation.phases import aggregate_look
from router.evaluation.webhook import Webhook
from router.inference_log.models import utcnow
from router.routes_table import RouteTable

if TYPE_CHECKING:
    from registry.store import Registry
    from router.metrics import Metrics

log = logging.getLogger(__name__)

#: Final status an acted decision leaves the experiment in.
_ENDS = {action: status for status, action in ENDED_BY.items()}
#: A version that ended so may not be tried again without ``force`` (a fresh alpha each
#: time is how one restarts until it wins).
_REJECTED = (ROLLED_BACK, INCONCLUSIVE)
#: Operator actions: what each needs the experiment's status to be.
ACTIONS_FROM = {
    "promote": (RUNNING, PAUSED),
    "rollback": LIVE,
    "advance": (RUNNING, PAUSED),
    "pause": (RUNNING,),
    "resume": (PAUSED, HALTED),
}
#: Retry a report that failed to log after this many seconds, doubling up to the maximum.
_RETRY_S, _MAX_RETRY_S = 30.0, 3600.0
#: Reports rendered and logged at once by the retry loop (each runs SQL and matplotlib).
_MAX_PUBLISHING = 2


class Evaluator:
    def __init__(
        self,
        *,
        engine: Engine,
        routes: RouteTable,
        registry: Registry | None = None,
        webhook: Webhook | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._engine = engine
        self._routes = routes
        self._registry = registry
        self._webhook = webhook
        self._metrics = metrics
        #: Report logging in flight, and when a failed one may be retried (monotonic s).
        self._publishing: dict[str, asyncio.Task[str]] = {}
        self._retry_at: dict[str, tuple[float, float]] = {}

    # -- experiments ----------------------------------------------------------------------
    async def start(
        self,
        *,
        route: str,
        stages: list[float] | None,
        policy: dict[str, Any] | None,
        actor: str = "api",
        force: bool = False,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Start a canary on ``route`` at its first stage (409 if one is live, or when the
        challenger version was already rejected and ``force`` is not given)."""
        r = self._routes.get(route)
        if r.challenger is None:
            raise InvalidRequest(f"Route {route!r} has no challenger to experiment with.")
        p = requested_policy(policy, stages)
        version = r.challenger.version
        earlier = await asyncio.to_thread(
            store.find_experiments,
            self._engine,
            route=route,
            challenger_version=version,
            statuses=_REJECTED,
        )
        if earlier and not force:
            last = earlier[0]
            raise Conflict(
                f"Challenger version {version!r} of route {route!r} already ended "
                f"{last['status']} in experiment {last['id']!r}; a new experiment would test "
                "it again with a fresh error budget. Pass force=true (recorded) to start anyway.",
                code="version_rejected",
            )
        row = await asyncio.to_thread(
            store.create_experiment,
            self._engine,
            route=route,
            stages=list(p.stages),
            policy=p.to_dict(),
            champion_version=r.champion.version,
            challenger_version=version,
            actor=actor,
            reasons=_start_reasons(actor, earlier[0] if earlier else None, reason),
        )
        if row is None:
            raise Conflict(f"An experiment is already live on route {route!r}.")
        await self.sync_routes()
        return row

    async def evaluate(self, experiment_id: str, *, actor: str) -> dict[str, Any]:
        """Analyse now and record the decision; act on it when the policy is automatic
        (a halt acts in manual mode too)."""
        started = time.perf_counter()
        decision = await asyncio.to_thread(self._evaluate, experiment_id, actor)
        seconds = time.perf_counter() - started
        exp = await self._decided(experiment_id, decision)
        if self._metrics is not None and exp is not None:
            self._metrics.evaluation_duration.labels(exp["route"]).observe(seconds)
        return decision

    async def force(
        self,
        experiment_id: str,
        action: str,
        *,
        actor: str,
        force: bool = False,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """An operator's action: promote, rollback, advance, pause or resume.

        A promote needs the data to back it (the policy's decision now is advance or
        promote) unless ``force`` is given; ``force`` and ``reason`` are recorded.
        """
        decision = await asyncio.to_thread(self._force, experiment_id, action, actor, force, reason)
        await self._decided(experiment_id, decision)
        return decision

    async def _decided(self, experiment_id: str, decision: dict[str, Any]) -> dict[str, Any] | None:
        """Follow a stored decision up (routes, metrics, report, webhook); the experiment."""
        await self.sync_routes()
        exp = await asyncio.to_thread(
            store.get_experiment, self._engine, experiment_id=experiment_id
        )
        if exp is None:
            return None
        if self._metrics is not None:
            acted = "true" if decision["acted"] else "false"
            self._metrics.decisions.labels(exp["route"], decision["action"], acted).inc()
        if self._registry is not None and exp["status"] not in LIVE:
            self._schedule_report(experiment_id)
        if self._webhook is not None:
            await self._webhook.send(exp, decision)
        return exp

    # -- reports in MLflow ----------------------------------------------------------------
    @property
    def logs_reports(self) -> bool:
        """Whether ended experiments' reports go to MLflow (routes from a registry)."""
        return self._registry is not None

    async def publish_report(self, experiment_id: str) -> str:
        """Log the ended experiment's report to MLflow now (or wait for the logging already
        under way); the run id. Raises what the registry raised."""
        task = self._publishing.get(experiment_id) or self._schedule_report(experiment_id)
        return await asyncio.shield(task)

    async def publish_pending_reports(self) -> None:
        """Start logging every ended experiment's report that is not in MLflow yet."""
        if self._registry is None:
            return
        now = time.monotonic()
        for experiment_id in await asyncio.to_thread(store.unreported, self._engine):
            if len(self._publishing) >= _MAX_PUBLISHING:  # a backlog drains tick by tick
                return
            if self._retry_at.get(experiment_id, (0.0, 0.0))[0] <= now:
                self._schedule_report(experiment_id)

    async def aclose(self) -> None:
        """Let report logging in flight finish (briefly); what is cut off is retried later."""
        if self._publishing:
            await asyncio.wait(list(self._publishing.values()), timeout=30)

    def _schedule_report(self, experiment_id: str) -> asyncio.Task[str]:
        if (task := self._publishing.get(experiment_id)) is not None:
            return task
        task = asyncio.create_task(self._publish_logged(experiment_id))
        self._publishing[experiment_id] = task

        def done(t: asyncio.Task[str]) -> None:
            self._publishing.pop(experiment_id, None)
            if not t.cancelled():
                t.exception()  # reported in _publish_logged; marks it retrieved

        task.add_done_callback(done)
        return task

    async def _publish_logged(self, experiment_id: str) -> str:
        try:
            run_id = await asyncio.to_thread(self._publish, experiment_id)
        except CanaryError:  # nothing to log (yet), or another process is logging it
            raise
        except Exception as exc:
            # The decision stands; the report waits for the next attempt.
            delay = min(self._retry_at.get(experiment_id, (0.0, _RETRY_S / 2))[1] * 2, _MAX_RETRY_S)
            self._retry_at[experiment_id] = (time.monotonic() + delay, delay)
            if self._metrics is not None:
                self._metrics.report_log_failures.inc()
            log.warning(
                "could not log the experiment's report to MLflow; retrying later",
                extra={"experiment_id": experiment_id, "retry_in_s": delay, "error": repr(exc)},
            )
            raise
        self._retry_at.pop(experiment_id, None)
        log.info("report logged", extra={"experiment_id": experiment_id, "run_id": run_id})
        return run_id

    def _publish(self, experiment_id: str) -> str:
        if self._registry is None:
            raise InvalidRequest(
                "Reports go to the MLflow registry, and this router has none "
                "(its routes come from the settings)."
            )
        # One process at a time: the run id stored and the version's tag must agree.
        with store.try_lock(self._engine, key=f"report:{experiment_id}") as mine:
            if not mine:
                raise Conflict(f"Another process is logging the report of {experiment_id!r}.")
            exp = store.get_experiment(self._engine, experiment_id=experiment_id)
            if exp is None:
                raise NotFound(f"No experiment {experiment_id!r}.", code="experiment_not_found")
            if exp["status"] in LIVE:
                raise Conflict(f"Experiment {experiment_id!r} has not ended ({exp['status']}).")
            if exp["report_run_id"]:
                return str(exp["report_run_id"])
            return reporting.publish(self._engine, self._registry, exp, self.report(exp)).run_id

    async def run(self, interval_s: float) -> None:
        """Evaluate every running experiment whose policy is automatic, forever."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync_routes()
                for exp in await asyncio.to_thread(
                    store.list_experiments, self._engine, live_only=True
                ):
                    if exp["status"] == RUNNING and Policy.from_dict(exp["policy"]).auto:
                        await self.evaluate(exp["id"], actor="canary-evaluator")
            except Exception:
                log.exception("evaluation round failed; retrying next interval")
            try:
                await self.publish_pending_reports()
            except Exception:
                log.exception("could not list the reports to log; retrying next interval")

    async def sync_routes(self) -> None:
        """Apply the live experiments' state (id, salt, stage weight) to this process."""
        live = await asyncio.to_thread(store.list_experiments, self._engine, live_only=True)
        by_route = {e["route"]: e for e in live}
        for route in self._routes:
            exp = by_route.get(route.name)
            if exp is None:
                if route.experiment_id is not None:  # ended here or in another process
                    route.experiment_id, route.challenger_bps = None, 0
                continue
            route.experiment_id = route.salt = exp["id"]  # a fresh split per experiment
            route.challenger_bps = round(store.challenger_percent(exp) * BUCKETS / 100)

    # -- in a worker thread -------------------------------------------------------------
    def analysis(
        self, exp: dict[str, Any], history: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The experiment's analysis as JSON, with the sequential state for the next look."""
        result = self._analyse(exp, history)
        return {**result.to_dict(), "sequential_state": result.sequential_state()}

    def current_analysis(self, exp: dict[str, Any]) -> dict[str, Any]:
        """``analysis`` with the sequential history the last evaluation stored: the
        always-valid p-values the evaluator would decide on now."""
        return self.analysis(exp, store.latest_analysis(self._engine, experiment_id=exp["id"]))

    def report(self, exp: dict[str, Any]) -> dict[str, Any]:
        """``experiments.report.render_html``'s input: analysis (with the stored sequential
        history), timeline, traffic per stage and decisions (``reporting.report_data``)."""
        history = store.latest_analysis(self._engine, experiment_id=exp["id"])
        return reporting.report_data(self._engine, exp, self._analyse(exp, history))

    def _analyse(self, exp: dict[str, Any], history: dict[str, Any] | None) -> Analysis:
        """The experiment's analysis now (SQL aggregates, then the statistics); no action.

        ``history`` is the sequential state of the last evaluation: the always-valid
        p-values keep their running minimum across looks. Only rows of running phases
        count; the SRM window is the current stage's running phases since the last halt.
        """
        phases = exp["phases"]
        stage = exp["stage_index"]
        halts = [k for k, ph in enumerate(phases) if ph["status"] == HALTED]
        srm_since = halts[-1] + 1 if halts else 0
        data = aggregate_look(
            self._engine,
            route=exp["route"],
            experiment_id=exp["id"],
            phases=phases,
            stage_index=stage,
            srm_since_phase=srm_since,
        )
        percent = exp["stages"][stage]
        elapsed = utcnow() - store.aware(exp["created_at"])
        look = Look(
            stage_index=stage,
            weights={"champion": 100.0 - percent, "challenger": percent},
            stage_units=data.stage_units,
            srm_units=data.srm_units,
            srm_window=f"stage {stage} from phase {srm_since}",
            elapsed_days=elapsed.total_seconds() / 86400,
        )
        return analyse(
            data.arms["champion"],
            data.arms["challenger"],
            data.votes,
            Policy.from_dict(exp["policy"]),
            look,
            (history or {}).get("sequential_state"),
        )

    def _evaluate(self, experiment_id: str, actor: str) -> dict[str, Any]:
        with store.transition(self._engine, experiment_id=experiment_id) as (conn, exp):
            exp = self._live(exp, experiment_id)
            result = self.analysis(exp, store.latest_analysis(conn, experiment_id=exp["id"]))
            action, reasons = result["decision"]["action"], result["decision"]["reasons"]
            auto = Policy.from_dict(exp["policy"]).auto
            # A halt protects the data whoever decides: it acts in manual mode too.
            acted = exp["status"] == RUNNING and action != "continue" and (auto or action == "halt")
            if acted:
                self._apply(conn, exp, action, actor, "; ".join(reasons))
            return store.record_decision(
                conn,
                experiment_id=exp["id"],
                action=action,
                reasons=reasons,
                analysis=result,
                stage_index=exp["stage_index"],
                acted=acted,
                actor=actor,
            )

    def _force(
        self, experiment_id: str, action: str, actor: str, force: bool, reason: str | None
    ) -> dict[str, Any]:
        with store.transition(self._engine, experiment_id=experiment_id) as (conn, exp):
            exp = self._live(exp, experiment_id)
            allowed = ACTIONS_FROM.get(action)
            if allowed is None:
                raise InvalidRequest(f"Unknown action {action!r}.")
            if exp["status"] not in allowed:
                raise Conflict(
                    f"Cannot {action} experiment {experiment_id!r}: it is {exp['status']} "
                    f"({action} needs {' or '.join(allowed)})."
                )
            reasons = [f"manual {action} by {actor}"]
            # What the data said when a person acted: the report shows it.
            history = store.latest_analysis(conn, experiment_id=exp["id"])
            analysis = self.analysis(exp, history)
            said = analysis["decision"]
            if action == "promote" and said["action"] not in ("advance", "promote"):
                if not force:
                    raise Conflict(
                        "The data do not show the challenger better yet (the policy says "
                        f"{said['action']}: {'; '.join(said['reasons'])}). "
                        "Pass force=true (recorded) to promote anyway.",
                        code="promotion_not_supported_by_data",
                    )
                reasons.append(f"forced against the policy's {said['action']}")
            if action == "advance" and exp["stage_index"] >= len(exp["stages"]) - 1:
                raise Conflict(
                    f"Experiment {experiment_id!r} is at its last stage: promote or roll back."
                )
            if reason:
                reasons.append(f"reason: {reason}")
            self._apply(conn, exp, action, actor, "; ".join(reasons))
            return store.record_decision(
                conn,
                experiment_id=exp["id"],
                action=action,
                reasons=reasons,
                analysis=analysis,
                stage_index=exp["stage_index"],
                acted=True,
                actor=actor,
            )

    def _live(self, exp: dict[str, Any] | None, experiment_id: str) -> dict[str, Any]:
        if exp is None:
            raise NotFound(f"No experiment {experiment_id!r}.", code="experiment_not_found")
        if exp["status"] not in LIVE:
            raise Conflict(f"Experiment {experiment_id!r} has ended ({exp['status']}).")
        return exp

    def _apply(self, conn: Any, exp: dict[str, Any], action: str, actor: str, reason: str) -> None:
        """Carry out ``action``: a new phase for a traffic change, or the end."""
        stage = exp["stage_index"]
        if action == "advance":
            stage = min(stage + 1, len(exp["stages"]) - 1)
        status = {"pause": PAUSED, "resume": RUNNING, "halt": HALTED}.get(action, exp["status"])
        if action in ("advance", "pause", "resume", "halt"):
            if action == "advance" and exp["status"] == PAUSED:
                status = PAUSED  # the next stage starts paused; resume starts it
            store.new_phase(conn, exp, stage_index=stage, status=status)
            return
        if action not in _ENDS:
            raise InvalidRequest(f"Unknown action {action!r}.")
        if self._registry is not None and action in ("promote", "rollback"):
            move = self._registry.promote if action == "promote" else self._registry.rollback
            move(exp["route"], actor=actor, reason=reason, decision_id=exp["id"])
        store.update_experiment(conn, experiment_id=exp["id"], status=_ENDS[action])


def _start_reasons(actor: str, rejected: dict[str, Any] | None, reason: str | None) -> list[str]:
    """Why an experiment started: who, the earlier end it overrode (forced), the reason."""
    reasons = [f"started by {actor}"]
    if rejected is not None:
        reasons.append(
            f"forced: version {rejected['challenger_version']!r} ended {rejected['status']} "
            f"in {rejected['id']!r}"
        )
    if reason:
        reasons.append(f"reason: {reason}")
    return reasons


_POLICY = TypeAdapter(Policy)


def requested_policy(policy: dict[str, Any] | None, stages: list[float] | None) -> Policy:
    """The policy a client asked for, or a 400 naming the bad field and the valid ones."""
    data = {**(policy or {}), **({"stages": stages} if stages else {})}
    valid = [f.name for f in fields(Policy)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise InvalidRequest(
            f"Unknown policy field {unknown[0]!r}; valid fields: {', '.join(valid)}.",
            code="invalid_policy",
            param=f"policy.{unknown[0]}",
        )
    try:
        return _POLICY.validate_python(data)  # field types, then Policy's own checks
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(
            f"Invalid policy{f' field {field!r}' if field else ''}: {message}.",
            code="invalid_policy",
            param=f"policy.{field}" if field else "policy",
        ) from None
