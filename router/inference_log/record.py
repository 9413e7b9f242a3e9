"""The inference row of one request, filled in as the request goes."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from router.errors import CanaryError

#: Row ``status`` values.
OK, ERROR, TIMEOUT, FALLBACK, DISCONNECTED, REJECTED, SHUTDOWN = (
    "ok",
    "error",
    "timeout",
    "fallback",
    "client_disconnected",
    "rejected",
    "shutdown",  # cut at the end of the shutdown grace period
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(slots=True)
class RequestRecord:
    """Mutable while the request runs; ``row()`` turns it into an ``inference_log`` row."""

    request_id: str
    created_at: datetime
    route: str
    stream: bool
    messages: list[dict[str, Any]] | None
    started: float = field(default_factory=time.perf_counter)
    experiment_id: str | None = None
    arm: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    served_arm: str | None = None
    served_model_version: str | None = None
    shadow_of: str | None = None
    unit_id: str | None = None
    unit_source: str | None = None
    key_id: str | None = None
    assignment_reason: str | None = None
    bucket: int | None = None
    response_text: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    status: str = OK
    http_status: int = 200
    error_type: str | None = None
    error_message: str | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    queue_wait_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    finished: bool = False  # set once the row is handed to the writer

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def mark_first_token(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = self.elapsed_ms()

    def fail(self, exc: BaseException, status: str | None = None) -> None:
        """Record what went wrong; ``status`` defaults from the exception."""
        if isinstance(exc, CanaryError):
            self.http_status = exc.status_code
            self.error_type = exc.code or exc.type
            self.error_message = exc.message
            default = (
                TIMEOUT if exc.type == "timeout" else (REJECTED if exc.status_code < 500 else ERROR)
            )
        else:
            self.http_status = 500
            self.error_type = type(exc).__name__
            self.error_message = str(exc) or repr(exc)
            default = ERROR
        self.status = status or default

    def row(self, *, store_prompts: bool) -> dict[str, Any]:
        """The ``inference_log`` row; without ``store_prompts`` only lengths and hashes."""
        if not self.latency_ms:
            self.latency_ms = self.elapsed_ms()
        prompt = orjson.dumps(self.messages) if self.messages is not None else b""
        response = (self.response_text or "").encode()
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "route": self.route,
            "experiment_id": self.experiment_id,
            "arm": self.arm,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "served_arm": self.served_arm,
            "served_model_version": self.served_model_version,
            "shadow_of": self.shadow_of,
            "unit_id": self.unit_id,
            "unit_source": self.unit_source,
            "key_id": self.key_id,
            "assignment_reason": self.assignment_reason,
            "bucket": self.bucket,
            "stream": self.stream,
            "prompt_messages": self.messages if store_prompts else None,
            "prompt_chars": sum(len(str(m.get("content", ""))) for m in self.messages or []),
            "prompt_sha256": _sha256(prompt) if prompt else None,
            "response_text": self.response_text if store_prompts else None,
            "response_chars": len(self.response_text or ""),
            "response_sha256": _sha256(response) if self.response_text is not None else None,
            "tool_calls": self.tool_calls if store_prompts else None,
            "finish_reason": self.finish_reason,
            "status": self.status,
            "http_status": self.http_status,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "queue_wait_ms": self.queue_wait_ms,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }
