"""The evaluator: aggregates an experiment in SQL, runs the policy, records and acts.

Acting means new stage weights (advance), an alias swap in the registry (promote), or
challenger weight 0 and ``@challenger`` removed (rollback); ``halt`` stops traffic to the
challenger and alerts. Manual mode (``policy.auto`` false) only recommends. Experiment
state lives in the database; every router process applies it to its routes on each tick
(``sync_routes``), so replicas agree, and one process at a time acts
(``store.transition``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from experiments.analysis import Analysis, analyse
from experiments.policy import Policy
from experiments.report import report_input
from router.assignment import BUCKETS
from router.errors import Conflict, InvalidRequest, NotFound
from router.evaluation import store
from router.evaluation.aggregate import aggregate, timeline, units_since
from router.evaluation.models import HALTED, LIVE, PAUSED, PROMOTED, ROLLED_BACK, RUNNING
from router.evaluation.webhook import Webhook
from router.inference_log.models import utcnow
from router.routes_table import RouteTable

if TYPE_CHECKING:
    from registry.store import Registry

log = logging.getLogger(__name__)

#: Final status an acted decision leaves the experiment in.
_ENDS = {"promote": PROMOTED, "rollback": ROLLED_BACK, "halt": HALTED}


class Evaluator:
    def __init__(
        self,
        *,
        engine: Engine,
        routes: RouteTable,
        registry: Registry | None = None,
        webhook: Webhook | None = None,
    ) -> None:
        self._engine = engine
        self._routes = routes
        self._registry = registry
        self._webhook = webhook

    # -- experiments ----------------------------------------------------------------------
    async def start(
        self, *, route: str, stages: list[float] | None, policy: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Start a canary on ``route`` at its first stage (409 if one is live)."""
        r = self._routes.get(route)
        if r.challenger is None:
            raise InvalidRequest(f"Route {route!r} has no challenger to experiment with.")
        p = Policy.from_dict({**(policy or {}), **({"stages": stages} if stages else {})})
        row = await asyncio.to_thread(
            store.create_experiment,
            self._engine,
            route=route,
            stages=list(p.stages),
            policy=p.to_dict(),
            champion_version=r.champion.version,
            challenger_version=r.challenger.version,
        )
        if row is None:
            raise Conflict(f"An experiment is already running on route {route!r}.")
        await self.sync_routes()
        return row

    async def evaluate(self, experiment_id: str, *, actor: str) -> dict[str, Any]:
        """Analyse now and record the decision; act on it when the policy is automatic."""
        decision = await asyncio.to_thread(self._evaluate, experiment_id, actor)
        await self._decided(experiment_id, decision)
        return decision

    async def force(self, experiment_id: str, action: str, *, actor: str) -> dict[str, Any]:
        """An operator's action: promote, rollback, pause or resume."""
        decision = await asyncio.to_thread(self._force, experiment_id, action, actor)
        await self._decided(experiment_id, decision)
        return decision

    async def _decided(self, experiment_id: str, decision: dict[str, Any]) -> None:
        await self.sync_routes()
        if self._webhook is not None:
            exp = await asyncio.to_thread(
                store.get_experiment, self._engine, experiment_id=experiment_id
            )
            if exp is not None:
                await self._webhook.send(exp, decision)

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
            weight = exp["stages"][exp["stage_index"]] if exp["status"] == RUNNING else 0.0
            route.experiment_id = route.salt = exp["id"]  # a fresh split per experiment
            route.challenger_bps = round(weight * BUCKETS / 100)

    # -- in a worker thread -------------------------------------------------------------
    def analysis(
        self, exp: dict[str, Any], history: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The experiment's analysis as JSON, with the sequential state for the next look."""
        result = self._analyse(exp, history)
        return {**result.to_dict(), "sequential_state": result.sequential_state()}

    def report(self, exp: dict[str, Any]) -> dict[str, Any]:
        """``experiments.report.render_html``'s input: analysis, timeline and decisions."""
        analysis = self._analyse(exp, None)
        ended = _aware(exp["updated_at"]) if exp["status"] not in LIVE else utcnow()
        span_s = max((ended - _aware(exp["created_at"])).total_seconds(), 1.0)
        buckets = timeline(
            self._engine,
            route=exp["route"],
            experiment_id=exp["id"],
            since=None,
            bucket_s=max(60.0, span_s / 60),  # about 60 points whatever the length
        )
        decisions = store.list_decisions(self._engine, experiment_id=exp["id"])
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
            timeline=[
                {
                    "time": b["start"].isoformat(),
                    "arm": b["arm"],
                    "ups": b["ups"],
                    "rated": b["rated"],
                }
                for b in buckets
            ],
            policy=exp["policy"],
            decisions=[
                {
                    "time": d["created_at"].isoformat(),
                    "action": d["action"],
                    "reasons": d["reasons"],
                }
                for d in decisions
            ],
        )

    def _analyse(self, exp: dict[str, Any], history: dict[str, Any] | None) -> Analysis:
        """The experiment's analysis now (SQL aggregates, then the statistics); no action.

        ``history`` is the sequential state of the last evaluation: the always-valid
        p-values keep their running minimum across looks. SRM and the per-stage minimums
        count units since the current stage began (earlier stages had other weights).
        """
        route, exp_id = exp["route"], exp["id"]
        arms, votes = aggregate(self._engine, route=route, experiment_id=exp_id)
        if exp["stage_index"] == 0:  # the first stage is the whole experiment so far
            stage_units = {arm: stats.units for arm, stats in arms.items()}
        else:
            stage_units = units_since(
                self._engine, route=route, experiment_id=exp_id, since=exp["stage_started_at"]
            )
        weight = exp["stages"][exp["stage_index"]] / 100
        return analyse(
            arms["champion"],
            arms["challenger"],
            votes,
            {"champion": 1 - weight, "challenger": weight},
            Policy.from_dict(exp["policy"]),
            exp["stage_index"],
            (history or {}).get("sequential_state"),
            stage_units=stage_units,
        )

    def _evaluate(self, experiment_id: str, actor: str) -> dict[str, Any]:
        with store.transition(self._engine, experiment_id=experiment_id) as (conn, exp):
            exp = self._live(exp, experiment_id)
            result = self.analysis(exp, store.latest_analysis(conn, experiment_id=exp["id"]))
            action, reasons = result["decision"]["action"], result["decision"]["reasons"]
            auto = Policy.from_dict(exp["policy"]).auto
            acted = auto and exp["status"] == RUNNING and action != "continue"
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

    def _force(self, experiment_id: str, action: str, actor: str) -> dict[str, Any]:
        with store.transition(self._engine, experiment_id=experiment_id) as (conn, exp):
            exp = self._live(exp, experiment_id)
            if action in ("pause", "resume"):
                status = PAUSED if action == "pause" else RUNNING
                store.update_experiment(conn, experiment_id=exp["id"], status=status)
            else:
                self._apply(conn, exp, action, actor, f"{action} by {actor}")
            return store.record_decision(
                conn,
                experiment_id=exp["id"],
                action=action,
                reasons=[f"manual {action} by {actor}"],
                analysis={},
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
        if action == "advance":
            last = len(exp["stages"]) - 1
            store.update_experiment(
                conn,
                experiment_id=exp["id"],
                stage_index=min(exp["stage_index"] + 1, last),
                stage_started_at=utcnow(),
            )
            return
        if action not in _ENDS:
            raise InvalidRequest(f"Unknown action {action!r}.")
        if self._registry is not None and action in ("promote", "rollback"):
            move = self._registry.promote if action == "promote" else self._registry.rollback
            move(exp["route"], actor=actor, reason=reason, decision_id=exp["id"])
        store.update_experiment(conn, experiment_id=exp["id"], status=_ENDS[action])


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes for UTC columns; Postgres aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
