"""A deterministic fake model for tests, benchmarks and simulations. Never a default.

Besides plain text it answers the way an OpenAI engine does when asked to: a tool call
(``tools``), JSON (``response_format``), several choices (``n``), token logprobs
(``logprobs``/``top_logprobs``); and it fails mid-stream on demand
(``fail_after_chunks``). Other options are accepted and ignored, unless named in
``unsupported_options`` (then refused with a 400, as an engine without them would).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from router.backends.base import (
    Backend,
    ChatParams,
    Completion,
    Delta,
    SpecBase,
    Usage,
    choices_wanted,
    refuse,
    text_content,
)
from router.errors import BackendError, ContextLengthExceeded, InvalidRequest


class FakeSpec(SpecBase):
    """A fake model: answers with the prompt (``echo``) or with ``text``, on a fixed schedule."""

    backend: Literal["fake"] = "fake"
    mode: Literal["echo", "canned"] = "canned"
    text: str = "This is a canned answer from the fake backend."
    latency_ms: float = Field(default=0.0, ge=0, description="Delay before the first token.")
    tokens_per_s: float | None = Field(default=None, gt=0, description="None: all at once.")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Share of calls that fail.")
    seed: int = 0
    context_length: int = 4096
    tool_arguments: dict[str, Any] | None = Field(
        default=None,
        description="The arguments of the fake's tool calls; None: the least object the "
        "called tool's parameters schema accepts (required properties only).",
    )
    fail_after_chunks: int | None = Field(
        default=None,
        ge=0,
        description="Streams send this many pieces, then fail (BackendError) before "
        "finishing, however long the answer; None: never. Whole answers are unaffected.",
    )
    stream_failure: Literal["error_event", "truncate", "disconnect"] = Field(
        default="error_event",
        description="How the HTTP fake (fake_server) fails at fail_after_chunks: "
        "'error_event' sends data: {\"error\": ...} (then [DONE], as vLLM does); "
        "'truncate' ends the response cleanly without a finish_reason or [DONE]; "
        "'disconnect' drops the connection in the middle of the body.",
    )
    unsupported_options: list[str] = Field(
        default_factory=list,
        description="Request options refused with 400 unsupported_parameter when sent "
        "(e.g. ['tools']), as by an engine that lacks them.",
    )


@dataclass(slots=True)
class _Choice:
    """One planned choice: content pieces, or a tool call whose arguments are ``pieces``."""

    pieces: list[str]
    finish: str
    tool_call: dict[str, Any] | None = None
    logprobs: list[dict[str, Any]] | None = None

    @property
    def text(self) -> str:
        return "" if self.tool_call else "".join(self.pieces)

    def openai(self, index: int) -> dict[str, Any]:
        """The choice as OpenAI's ``chat.completion`` has it."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_call:
            message["content"] = None
            message["tool_calls"] = [self.tool_call]
        return {
            "index": index,
            "message": message,
            "logprobs": {"content": self.logprobs} if self.logprobs is not None else None,
            "finish_reason": self.finish,
        }

    def deltas(self, index: int) -> list[Delta]:
        """The choice's stream pieces, before its finish: a tool call's name first, then its
        arguments in two or more pieces (as OpenAI streams them)."""
        if self.tool_call:
            function = self.tool_call["function"]
            head = {**self.tool_call, "index": 0, "function": {**function, "arguments": ""}}
            return [
                Delta(index=index, fields={"tool_calls": [head]}),
                *(
                    Delta(
                        index=index,
                        fields={"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                    )
                    for piece in self.pieces
                ),
            ]
        entries = self.logprobs
        return [
            Delta(
                text=piece,
                index=index,
                logprobs={"content": [entries[i]]} if entries is not None else None,
            )
            for i, piece in enumerate(self.pieces)
        ]


class FakeBackend(Backend):
    """Words are tokens. Failures follow a seeded sequence, so a run repeats exactly."""

    spec: FakeSpec

    def __init__(self, spec: FakeSpec) -> None:
        self.spec = spec
        self.context_length = spec.context_length
        self._rng = random.Random(spec.seed)
        self.calls = 0
        self.tool_calls = 0

    async def check(self) -> None:
        # Only a fake told to fail every call is down; drawing from the seeded sequence
        # here would shift which requests fail.
        if self.spec.error_rate >= 1:
            raise BackendError(f"fake backend {self.spec.name!r} fails every call (error_rate)")

    def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        return sum(len(_plain_text(m.get("content")).split()) + 1 for m in messages)

    def _answer(self, params: ChatParams) -> tuple[list[_Choice], Usage]:
        self.calls += 1
        if self._rng.random() < self.spec.error_rate:
            raise BackendError(f"fake backend {self.spec.name!r} failed (error_rate)")
        options = params.options
        refuse(
            self.spec.name,
            [name for name in self.spec.unsupported_options if name in options],
            "the fake engine is told not to support it",
        )
        # Text only: a part of another kind is refused (400), as by a text-only engine.
        texts = [
            text_content(m.get("content"), model=self.spec.name, param=f"messages.{i}.content")
            for i, m in enumerate(params.messages)
        ]
        prompt_tokens = sum(len(t.split()) + 1 for t in texts)
        if prompt_tokens > self.spec.context_length:
            raise ContextLengthExceeded(
                f"prompt has {prompt_tokens} tokens; the model's context is "
                f"{self.spec.context_length}"
            )
        n = choices_wanted(options.get("n"))
        last = params.messages[-1] if params.messages else {}
        if last.get("role") == "tool":
            # After a tool's result: answer with it, so an agent loop ends.
            base = f"The tool answered: {texts[-1]}"
        elif self.spec.mode == "echo":
            users = [t for m, t in zip(params.messages, texts, strict=True) if m["role"] == "user"]
            base = users[-1] if users else ""
        else:
            base = self.spec.text
        limit = params.max_tokens or self.spec.max_tokens

        tool = None if last.get("role") == "tool" else _tool_to_call(options)
        choices: list[_Choice] = []
        for _ in range(n):
            if tool is not None:
                choices.append(self._tool_call(tool, base))
                continue
            json_text = _json_answer(options.get("response_format"), base)
            if json_text is None:
                words = base.split()
                pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
            else:
                pieces = re.findall(r"\s*\S+", json_text)
            finish = "length" if len(pieces) > limit else "stop"
            pieces = pieces[:limit]
            logprobs = None
            if options.get("logprobs"):
                logprobs = [
                    _logprob(p, i, options.get("top_logprobs")) for i, p in enumerate(pieces)
                ]
            choices.append(_Choice(pieces, finish, logprobs=logprobs))
        return choices, Usage(prompt_tokens, sum(len(c.pieces) for c in choices))

    def _tool_call(self, tool: dict[str, Any], base: str) -> _Choice:
        self.tool_calls += 1
        function = tool.get("function") or {}
        arguments = self.spec.tool_arguments
        if arguments is None:
            arguments = _least(function.get("parameters") or {"type": "object"}, base)
        text = json.dumps(arguments, ensure_ascii=False)
        pieces = re.findall(r"\s*\S+", text)
        if len(pieces) < 2:  # OpenAI streams arguments in pieces: at least two here
            half = max(1, len(text) // 2)
            pieces = [text[:half], text[half:]]
        call = {
            "id": f"call_{self.tool_calls}",
            "type": "function",
            "function": {"name": function.get("name", ""), "arguments": text},
        }
        return _Choice(pieces, "tool_calls", tool_call=call)

    async def complete(self, params: ChatParams) -> Completion:
        choices, usage = self._answer(params)
        delay = self.spec.latency_ms / 1000
        if self.spec.tokens_per_s:
            delay += usage.completion_tokens / self.spec.tokens_per_s
        if delay:
            await asyncio.sleep(delay)
        first = choices[0]
        plain = len(choices) == 1 and first.tool_call is None and first.logprobs is None
        return Completion(
            first.text,
            first.finish,
            usage,
            choices=None if plain else [c.openai(i) for i, c in enumerate(choices)],
        )

    async def stream(self, params: ChatParams) -> AsyncIterator[Delta]:
        choices, usage = self._answer(params)
        if self.spec.latency_ms:
            await asyncio.sleep(self.spec.latency_ms / 1000)
        fail_after = self.spec.fail_after_chunks
        start = time.perf_counter()
        for i, delta in enumerate(_interleaved(choices)):
            if fail_after is not None and i >= fail_after:
                break
            if self.spec.tokens_per_s:
                # Pace against the start so sleeps do not accumulate drift.
                due = start + i / self.spec.tokens_per_s - time.perf_counter()
                if due > 0:
                    await asyncio.sleep(due)
            yield delta
        if fail_after is not None:
            raise BackendError(
                f"fake backend {self.spec.name!r} failed mid-stream after {fail_after} "
                "pieces (fail_after_chunks)"
            )
        for index, choice in enumerate(choices[1:], start=1):
            yield Delta(index=index, finish_reason=choice.finish)
        yield Delta(finish_reason=choices[0].finish, usage=usage)


def _interleaved(choices: list[_Choice]) -> Iterator[Delta]:
    """The choices' pieces taken in turns, as an engine decoding them together sends them."""
    lists = [choice.deltas(i) for i, choice in enumerate(choices)]
    for position in range(max(map(len, lists), default=0)):
        for deltas in lists:
            if position < len(deltas):
                yield deltas[position]


def _plain_text(content: Any) -> str:
    """The text in a message's content, whatever its shape (for counting only)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def _tool_to_call(options: dict[str, Any]) -> dict[str, Any] | None:
    """The function tool the fake calls: the one ``tool_choice`` names, else the first;
    None without tools or with ``tool_choice`` "none"."""
    tools = [t for t in options.get("tools") or [] if isinstance(t, dict) and "function" in t]
    choice = options.get("tool_choice")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        for tool in tools:
            if tool["function"].get("name") == name:
                return tool
        raise InvalidRequest(
            f"tool_choice names {name!r}, which is not a tool.", param="tool_choice"
        )
    return tools[0]


def _json_answer(response_format: Any, text: str) -> str | None:
    """The answer as JSON when ``response_format`` asks for it: ``{"answer": text}`` for
    json_object, the least object the schema accepts for json_schema; else None."""
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return json.dumps({"answer": text}, ensure_ascii=False)
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {"type": "object"}
        return json.dumps(_least(schema, text), ensure_ascii=False)
    return None


def _least(schema: Any, text: str) -> Any:
    """A small value valid for a (simple) JSON schema: required properties only, strings
    are ``text``, numbers their minimum or 0, arrays ``minItems`` long. ``$ref`` and
    other combinators beyond the first ``anyOf``/``oneOf``/``allOf`` branch are not
    followed."""
    if not isinstance(schema, dict):
        return text
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return _least(schema[combinator][0], text)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {name: _least(properties.get(name, {}), text) for name in schema.get("required", [])}
    if kind == "array":
        return [_least(schema.get("items", {}), text) for _ in range(schema.get("minItems", 0))]
    if kind == "integer":
        return int(schema.get("minimum", 0))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return text


def _logprob(piece: str, position: int, top: Any) -> dict[str, Any]:
    """OpenAI's logprobs entry for one token; made-up but fixed numbers."""
    logprob = -round(0.1 * (1 + position % 5), 4)
    alternatives = [
        {"token": piece, "logprob": logprob, "bytes": list(piece.encode())},
        *(
            {"token": f"<alt{k}>", "logprob": logprob - k, "bytes": list(f"<alt{k}>".encode())}
            for k in range(1, max(int(top or 0), 1))
        ),
    ]
    return {
        "token": piece,
        "logprob": logprob,
        "bytes": list(piece.encode()),
        "top_logprobs": alternatives[: int(top or 0)],
    }
