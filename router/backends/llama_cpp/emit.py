"""A generation's pieces as deltas: text, tool calls from ``<tool_call>`` blocks, and a
forced or ``required`` call."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from router.backends.base import Delta
from router.backends.llama_cpp.plan import Plan
from router.backends.llama_cpp.sampling import delta_logprobs
from router.backends.llama_cpp.tools import ToolCallScanner, call_id


@dataclass(slots=True)
class Run:
    """How one generation ended."""

    finish: str = "stop"
    completion_tokens: int = 0
    cancelled: bool = False


def emit_text(
    plan: Plan,
    index: int,
    pieces: Iterator[tuple[str, list[dict[str, Any]]]],
    emit: Callable[[Delta], None],
    run: Run,
) -> None:
    """Plain text; with tools ("auto"), text from the first ``<tool_call>`` on is held
    and comes out as tool calls when it parses as such (else as the text it was)."""
    want_logprobs = plan.top_logprobs is not None
    scanner = ToolCallScanner() if plan.tool_mode == "auto" else None
    held: list[dict[str, Any]] = []
    for text, entries in pieces:
        held += entries
        out = scanner.feed(text) if scanner else text
        if out:
            emit(Delta(text=out, index=index, logprobs=delta_logprobs(held, want_logprobs)))
            held = []
    if scanner is None or run.cancelled:
        return
    calls, rest = scanner.finish(plan.tools)
    if calls:
        fields = {
            "tool_calls": [
                {
                    "index": k,
                    "id": call_id(),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
                for k, (name, arguments) in enumerate(calls)
            ]
        }
        if run.finish != "length":
            run.finish = "tool_calls"
        emit(
            Delta(
                text=rest, index=index, fields=fields, logprobs=delta_logprobs(held, want_logprobs)
            )
        )
    elif rest or held:
        emit(Delta(text=rest, index=index, logprobs=delta_logprobs(held, want_logprobs)))


def emit_forced(
    plan: Plan,
    index: int,
    pieces: Iterator[tuple[str, list[dict[str, Any]]]],
    emit: Callable[[Delta], None],
) -> None:
    """The forced function's call: its name first, then its arguments as generated."""
    want_logprobs = plan.top_logprobs is not None
    head = {
        "index": 0,
        "id": call_id(),
        "type": "function",
        "function": {"name": plan.forced, "arguments": ""},
    }
    emit(Delta(index=index, fields={"tool_calls": [head]}))
    for text, entries in pieces:
        piece = {"index": 0, "function": {"arguments": text}}
        emit(
            Delta(
                index=index,
                fields={"tool_calls": [piece]},
                logprobs=delta_logprobs(entries, want_logprobs),
            )
        )


def emit_required(
    plan: Plan,
    index: int,
    pieces: Iterator[tuple[str, list[dict[str, Any]]]],
    emit: Callable[[Delta], None],
) -> None:
    """A call of one of the tools, told only once the grammar has named it."""
    texts: list[str] = []
    entries: list[dict[str, Any]] = []
    for text, more in pieces:
        texts.append(text)
        entries += more
    try:
        call = json.loads("".join(texts))
        name, arguments = call["name"], json.dumps(call["arguments"], ensure_ascii=False)
    except (ValueError, KeyError, TypeError):  # cut short by max_tokens
        name, arguments = "", "".join(texts)
    fields = {
        "tool_calls": [
            {
                "index": 0,
                "id": call_id(),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        ]
    }
    emit(
        Delta(
            index=index,
            fields=fields,
            logprobs=delta_logprobs(entries, plan.top_logprobs is not None),
        )
    )
