"""Tool calls in the model's text: the ``<tool_call>`` tag, a scanner that holds it back
from a stream, the parser that turns its blocks into calls, and calls in OpenAI's shape."""

from __future__ import annotations

import json
import uuid
from typing import Any

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


class ToolCallScanner:
    """Splits streamed text into what may be shown at once and a tail from the first
    ``<tool_call>`` on; holds back text that may be the start of that tag."""

    def __init__(self) -> None:
        self.held = ""
        self.calls: str | None = None

    def feed(self, text: str) -> str:
        if self.calls is not None:
            self.calls += text
            return ""
        text = self.held + text
        at = text.find(TOOL_OPEN)
        if at >= 0:
            self.calls, self.held = text[at:], ""
            return text[:at]
        keep = next(
            (k for k in range(len(TOOL_OPEN) - 1, 0, -1) if text.endswith(TOOL_OPEN[:k])), 0
        )
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self, tools: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], str]:
        """The calls made (name, arguments JSON) and the text left to show; no calls when
        the tail is not well-formed calls of the tools (then it is all text)."""
        if self.calls is None:
            return [], self.held
        parsed = parse_tool_calls(self.calls, {t["name"] for t in tools})
        if parsed is None:
            return [], self.calls
        calls, rest = parsed
        return calls, rest.strip()


def parse_tool_calls(text: str, names: set[str]) -> tuple[list[tuple[str, str]], str] | None:
    calls: list[tuple[str, str]] = []
    rest: list[str] = []
    position = 0
    while (start := text.find(TOOL_OPEN, position)) >= 0:
        rest.append(text[position:start])
        end = text.find(TOOL_CLOSE, start)
        body = text[start + len(TOOL_OPEN) : end if end >= 0 else len(text)]
        position = end + len(TOOL_CLOSE) if end >= 0 else len(text)
        try:
            call = json.loads(body)
        except ValueError:
            return None
        if not isinstance(call, dict) or call.get("name") not in names:
            return None
        arguments = call.get("arguments", call.get("parameters", {}))
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append((call["name"], arguments))
    rest.append(text[position:])
    return calls, "".join(rest)


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def relayed_calls(pieces: Any, started: set[int]) -> list[dict[str, Any]]:
    """A chat handler's tool-call pieces as OpenAI streams them: id, type and name in a
    call's first piece only (llama-cpp-python repeats them in every one)."""
    out = []
    for k, piece in enumerate(pieces or []):
        index = piece.get("index", k)
        function = piece.get("function") or {}
        if index in started:
            out.append({"index": index, "function": {"arguments": function.get("arguments", "")}})
        else:
            started.add(index)
            out.append(
                {
                    "index": index,
                    "id": piece.get("id") or call_id(),
                    "type": "function",
                    "function": {
                        "name": function.get("name", ""),
                        "arguments": function.get("arguments", ""),
                    },
                }
            )
    return out
