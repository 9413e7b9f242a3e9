"""What the client receives besides the stream's text: the response JSON, its headers and
the ``chat.completion.chunk`` events, in OpenAI's shapes."""

from __future__ import annotations

import time
from typing import Any

import orjson

from router.backends import Completion
from router.errors import CanaryError
from router.inference_log.record import RequestRecord


class ChunkWriter:
    """Serialises ``chat.completion.chunk`` events for one stream."""

    def __init__(self, record: RequestRecord) -> None:
        self._base = {
            "id": record.request_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": record.route,
        }

    def event(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        index: int = 0,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
        if logprobs is not None:
            choice["logprobs"] = logprobs
        return sse(orjson.dumps({**self._base, "choices": [choice]}))

    def usage(self, record: RequestRecord) -> bytes:
        body = {**self._base, "choices": [], "usage": usage(record)}
        return sse(orjson.dumps(body))


def sse(data: bytes) -> bytes:
    """One server-sent event."""
    return b"data: " + data + b"\n\n"


def error_event(error: CanaryError) -> bytes:
    """A failure after the headers went out: one last event in OpenAI's error shape."""
    return sse(orjson.dumps(error.body()))


DONE = sse(b"[DONE]")


def usage(record: RequestRecord) -> dict[str, int]:
    prompt, completion = record.prompt_tokens or 0, record.completion_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_json(record: RequestRecord, result: Completion) -> bytes:
    """A whole ``chat.completion`` body."""
    return orjson.dumps(
        {
            "id": record.request_id,
            "object": "chat.completion",
            "created": int(record.created_at.timestamp()),
            "model": record.route,
            # The engine's own choices when it said more than one plain text.
            "choices": result.choices
            or [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": usage(record),
        }
    )


def headers(record: RequestRecord) -> dict[str, str]:
    """``x-request-id`` and the arm and version that answered."""
    return {
        "x-request-id": record.request_id,
        "x-canary-arm": record.served_arm or record.arm or "",
        "x-canary-model-version": record.served_model_version or record.model_version or "",
    }
