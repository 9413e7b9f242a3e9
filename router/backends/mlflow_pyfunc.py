"""Any other MLflow pyfunc that takes chat messages (a logged LangChain chain, say).

Run through its ``predict`` in a worker thread, one call at a time (a generic pyfunc
promises no thread safety); streamed to the client as one chunk. It takes text messages
and sampling parameters only: content parts are joined into text, and tools, tool
messages, images and every other option (``response_format``, ``logprobs``, ``n``, ...)
are refused with a 400 naming the field, never dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any, Literal

from pydantic import Field

from router.backends.base import (
    Backend,
    ChatParams,
    Completion,
    Delta,
    SpecBase,
    Usage,
    refuse,
    text_content,
)
from router.errors import BackendError

#: Message fields of tool use, which a chat pyfunc has no way to take.
_TOOL_KEYS = ("tool_calls", "tool_call_id", "function_call")


class PyfuncSpec(SpecBase):
    """An MLflow model URI, e.g. ``models:/chat/4``."""

    backend: Literal["pyfunc"] = "pyfunc"
    model_uri: str = Field(description="models:/<name>/<version> or any MLflow model URI")
    tracking_uri: str | None = None
    registry_uri: str | None = None


class PyfuncBackend(Backend):
    spec: PyfuncSpec

    def __init__(self, spec: PyfuncSpec) -> None:
        self.spec = spec
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pyfunc-{spec.name}")
        self._predict: Callable[[list[dict[str, str]], dict[str, Any]], str] | None = None

    async def start(self) -> None:
        from registry.flavours import load_chat_pyfunc  # imports mlflow: only when needed

        loop = asyncio.get_running_loop()
        try:
            self._predict = await loop.run_in_executor(
                self._executor,
                partial(
                    load_chat_pyfunc,
                    self.spec.model_uri,
                    tracking_uri=self.spec.tracking_uri,
                    registry_uri=self.spec.registry_uri,
                ),
            )
        except Exception as exc:
            raise BackendError(f"could not load {self.spec.model_uri}: {exc}") from exc

    async def aclose(self) -> None:
        self._predict = None
        self._executor.shutdown(wait=False)

    async def check(self) -> None:
        if self._predict is None:
            raise BackendError(f"model {self.spec.model_uri} is not loaded")

    async def complete(self, params: ChatParams) -> Completion:
        predict = self._predict
        if predict is None:
            raise BackendError(f"model {self.spec.model_uri} is not loaded")
        p = self.with_defaults(replace(params, messages=self._messages(params)))
        options: dict[str, Any] = {"temperature": p.temperature, "max_tokens": p.max_tokens}
        # Sent only when the client set them: a pyfunc that does not declare them drops them.
        if params.top_p is not None:
            options["top_p"] = params.top_p
        if p.stop:
            options["stop"] = p.stop
        if p.seed is not None:
            options["seed"] = p.seed
        submitted = time.perf_counter()
        waited: list[float] = []

        def run() -> str:
            waited.append((time.perf_counter() - submitted) * 1000)
            return predict(p.messages, options)

        try:
            text = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except Exception as exc:
            raise BackendError(f"{self.spec.model_uri} failed: {exc}") from exc
        # A generic pyfunc reports no tokens: whitespace words are the honest stand-in.
        usage = Usage(sum(len(m["content"].split()) for m in p.messages), len(text.split()))
        return Completion(text, "stop", usage, queue_wait_ms=waited[0] if waited else 0.0)

    def _messages(self, params: ChatParams) -> list[dict[str, Any]]:
        """The messages as role and text; 400 for options, tools and non-text parts."""
        model = self.spec.name
        why = "an MLflow chat pyfunc takes text messages and sampling parameters only"
        refuse(model, params.options, why)
        out: list[dict[str, Any]] = []
        for i, m in enumerate(params.messages):
            refuse(model, [f"messages.{i}.{k}" for k in _TOOL_KEYS if m.get(k)], why)
            if m.get("role") in ("tool", "function"):
                refuse(model, [f"messages.{i}.role"], why)
            message = {
                "role": m["role"],
                "content": text_content(
                    m.get("content"), model=model, param=f"messages.{i}.content"
                ),
            }
            if isinstance(m.get("name"), str):
                message["name"] = m["name"]
            out.append(message)
        return out

    async def stream(self, params: ChatParams) -> AsyncIterator[Delta]:
        done = await self.complete(params)
        yield Delta(queue_wait_ms=done.queue_wait_ms)
        yield Delta(text=done.text)
        yield Delta(finish_reason=done.finish_reason, usage=done.usage)
