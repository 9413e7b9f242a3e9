"""Decision notifications: Slack-compatible JSON (a ``text`` field) POSTed to a URL."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import httpx

log = logging.getLogger(__name__)


def message(experiment: dict[str, Any], decision: dict[str, Any]) -> dict[str, Any]:
    """Slack's incoming-webhook body, with the decision attached for other receivers."""
    verb = "acted" if decision["acted"] else "recommends"
    reasons = "\n".join(f"• {r}" for r in decision["reasons"]) or "• (no reasons given)"
    text = (
        f"canary {experiment['route']} ({experiment['id']}, challenger v"
        f"{experiment['challenger_version']} vs champion v{experiment['champion_version']}): "
        f"*{decision['action']}* ({verb}, by {decision['actor']})\n{reasons}"
    )
    public = {
        k: v.isoformat() if isinstance(v, datetime) else v
        for k, v in decision.items()
        if k != "analysis"
    }
    return {"text": text, "experiment_id": experiment["id"], "decision": public}


class Webhook:
    """POSTs every decision; a receiver that is down is logged, never fatal."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.url = url
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def send(self, experiment: dict[str, Any], decision: dict[str, Any]) -> None:
        try:
            response = await self._client.post(self.url, json=message(experiment, decision))
            response.raise_for_status()
        except Exception as exc:  # a notification must never undo or block a decision
            log.warning("decision webhook failed", extra={"url": self.url, "error": repr(exc)})

    async def aclose(self) -> None:
        await self._client.aclose()
