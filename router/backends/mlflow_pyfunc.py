"""Any other MLflow pyfunc that takes chat messages (a logged LangChain chain, say).

Run through its ``predict`` in a worker thread, one call at a time (a generic pyfunc
promises no thread safety); streamed to the client as one chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal

from pydantic import Field

from router.backends.base import Backend, ChatParams, Completion, Delta, SpecBase, Usage
from router.errors import BackendError


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
        p = self.with_defaults(params)
        options = {"temperature": p.temperature, "max_tokens": p.max_tokens}
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

    async def stream(self, params: ChatParams) -> AsyncIterator[Delta]:
        done = await self.complete(params)
        yield Delta(queue_wait_ms=done.queue_wait_ms)
        yield Delta(text=done.text)
        yield Delta(finish_reason=done.finish_reason, usage=done.usage)
