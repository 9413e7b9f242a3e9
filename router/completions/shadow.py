"""Shadow calls: the challenger also answers a champion request, unseen, in the background.

Each logs its own row (arm ``shadow``, ``shadow_of`` = the client's request). They are
never awaited on the request path; a bounded pool skips them under load (counted).
"""

from __future__ import annotations

import asyncio

from router.backends import ChatParams
from router.completions.drain import Drain, answer_within
from router.completions.ledger import Ledger
from router.inference_log.record import RequestRecord
from router.metrics import Metrics
from router.routes_table import Arm, Route


class Shadows:
    """Starts shadow calls and keeps their tasks until ``close``."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        metrics: Metrics,
        max_concurrency: int,
        drain: Drain,
        timeout_s: float,
    ) -> None:
        self._ledger = ledger
        self._metrics = metrics
        self._drain, self._timeout_s = drain, timeout_s
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self, route: Route, challenger: Arm, params: ChatParams, parent: RequestRecord
    ) -> None:
        """Shadow ``parent`` on ``challenger`` unless the pool is full."""
        if self._slots.locked():
            self._metrics.shadow_skipped.labels(route.name).inc()
            return
        task = asyncio.create_task(self._shadow(route, challenger, params, parent))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Wait for shadow calls still running, so their rows are logged too."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _shadow(
        self, route: Route, challenger: Arm, params: ChatParams, parent: RequestRecord
    ) -> None:
        async with self._slots:
            record = self._ledger.open(route.name, stream=False, messages=parent.messages)
            record.shadow_of = parent.request_id
            record.experiment_id = route.experiment_id
            record.arm = record.served_arm = "shadow"
            record.model_name, record.model_version = challenger.model, challenger.version
            record.served_model_version = challenger.version
            record.unit_id, record.assignment_reason = parent.unit_id, parent.assignment_reason
            record.unit_source, record.key_id = parent.unit_source, parent.key_id
            self._ledger.hold(record, challenger)
            try:
                result = await answer_within(
                    self._drain, self._timeout_s, challenger.backend.complete(params)
                )
                self._ledger.succeed(record, None, result)
            except Exception as exc:
                self._ledger.fail(record, exc)
            finally:
                self._ledger.finish(record)
