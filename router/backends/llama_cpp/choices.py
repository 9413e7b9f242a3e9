"""The choices of a whole (not streamed) answer, gathered from their deltas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.backends.base import Delta


@dataclass(slots=True)
class Choice:
    """One choice gathered from its deltas."""

    parts: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish: str = "stop"

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, delta: Delta) -> None:
        self.parts.append(delta.text)
        for piece in (delta.fields or {}).get("tool_calls") or []:
            call = self.calls.setdefault(
                piece["index"],
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            call["id"] = piece.get("id") or call["id"]
            function = piece.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
        if delta.logprobs:
            self.logprobs += delta.logprobs.get("content") or []
        if delta.finish_reason:
            self.finish = delta.finish_reason

    def openai(self, index: int, top_logprobs: int | None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.calls:
            message["content"] = self.text or None
            message["tool_calls"] = [self.calls[k] for k in sorted(self.calls)]
        return {
            "index": index,
            "message": message,
            "logprobs": {"content": self.logprobs} if top_logprobs is not None else None,
            "finish_reason": self.finish,
        }
