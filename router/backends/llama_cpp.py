"""GGUF models run in-process by llama.cpp (llama-cpp-python).

``Llama`` is not thread-safe, so each backend owns one worker thread: requests queue for
it (the wait is measured), tokens cross back to the event loop with
``call_soon_threadsafe``, and a cancelled request stops generation at its next token.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import Field

from router.backends.base import Backend, ChatParams, Completion, Delta, SpecBase, Usage
from router.errors import BackendError, ContextLengthExceeded

if TYPE_CHECKING:
    from llama_cpp import Llama

# OpenAI counts a few tokens of chat-template framing per message; so do we, to refuse a
# prompt (plus an explicit max_tokens) that cannot fit with OpenAI's message. llama.cpp
# checks the exact prompt again when it generates.
_TOKENS_PER_MESSAGE = 4


class LlamaCppSpec(SpecBase):
    """What an Ollama Modelfile carries: the weights, the template and default sampling."""

    backend: Literal["llama_cpp"] = "llama_cpp"
    gguf: str = Field(description="Path to a .gguf file, or bundled:<name> (see registry).")
    n_ctx: int = Field(default=2048, ge=16)
    n_threads: int | None = Field(default=None, ge=1, description="None: every core.")
    n_batch: int = Field(default=512, ge=1)
    n_gpu_layers: int = Field(default=0, ge=-1, description="-1 offloads every layer.")
    chat_format: str | None = Field(default=None, description="None: the GGUF's own template.")
    repeat_penalty: float = Field(default=1.0, ge=0)
    seed: int | None = None


class LlamaCppBackend(Backend):
    """One ``Llama`` instance, one worker thread, one request at a time."""

    spec: LlamaCppSpec

    def __init__(self, spec: LlamaCppSpec, *, model_path: str) -> None:
        self.spec = spec
        self.model_path = model_path
        self.context_length = spec.n_ctx
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{spec.name}")
        self._llm: Llama | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._llm = await loop.run_in_executor(self._executor, self._load)

    def _load(self) -> Llama:
        from llama_cpp import Llama  # heavy import, only when a GGUF arm exists

        kwargs: dict[str, Any] = {
            "model_path": self.model_path,
            "n_ctx": self.spec.n_ctx,
            "n_batch": self.spec.n_batch,
            "n_gpu_layers": self.spec.n_gpu_layers,
            "chat_format": self.spec.chat_format,
            "verbose": False,
        }
        # llama-cpp-python's own default is half the cores; a dedicated router wants all.
        kwargs["n_threads"] = self.spec.n_threads or os.cpu_count() or 1
        if self.spec.seed is not None:
            kwargs["seed"] = self.spec.seed
        try:
            return Llama(**kwargs)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"llama.cpp could not load {self.model_path}: {exc}") from exc

    async def aclose(self) -> None:
        llm, self._llm = self._llm, None
        loop = asyncio.get_running_loop()
        if llm is not None:
            # Closed on the worker, after any request still running there.
            await loop.run_in_executor(self._executor, llm.close)
        self._executor.shutdown(wait=False)

    async def check(self) -> None:
        # Loaded is all there is to know: the model is in this process, and a probe on
        # the worker would queue behind the generation running there.
        self.llm  # noqa: B018 - raises when not loaded

    @property
    def llm(self) -> Llama:
        if self._llm is None:
            raise BackendError(f"model {self.spec.name!r} is not loaded")
        return self._llm

    # -- requests ----------------------------------------------------------------------
    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        llm = self.llm
        return sum(
            len(llm.tokenize(m["content"].encode(), add_bos=False, special=True))
            + _TOKENS_PER_MESSAGE
            for m in messages
        )

    def _check_fits(self, messages: list[dict[str, str]], max_tokens: int | None) -> None:
        """Refuse a prompt (plus an explicit max_tokens) that cannot fit, with the counts."""
        prompt = self.count_prompt_tokens(messages)
        wanted = prompt + (max_tokens or 0)
        if prompt >= self.spec.n_ctx or wanted > self.spec.n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.spec.n_ctx} tokens. However, "
                f"you requested {wanted} tokens ({prompt} in the messages, "
                f"{max_tokens or 0} in the completion). Please reduce the length of the messages "
                "or the completion."
            )

    def _kwargs(self, params: ChatParams) -> dict[str, Any]:
        p = self.with_defaults(params)
        kwargs: dict[str, Any] = {
            "messages": p.messages,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "repeat_penalty": self.spec.repeat_penalty,
            "stop": p.stop or [],
            "stream": True,
        }
        if p.seed is not None:
            kwargs["seed"] = p.seed
        return kwargs

    def _generate(
        self,
        params: ChatParams,
        submitted: float,
        cancelled: threading.Event,
        emit: Callable[[Delta], None],
    ) -> None:
        """Worker-thread body: one generation, streamed through ``emit``.

        Both ``complete`` and ``stream`` use it, so a cancelled request stops at its next
        token either way (closing llama-cpp-python's generator ends the decode loop).
        """
        emit(Delta(queue_wait_ms=(time.perf_counter() - submitted) * 1000))
        if cancelled.is_set():
            return
        kwargs = self._kwargs(params)
        # Checked here, not on the event loop: tokenizing costs the loop ~0.3 ms a request.
        self._check_fits(kwargs["messages"], params.max_tokens)
        llm = self.llm
        chunks = cast(Iterator[Any], llm.create_chat_completion(**kwargs))
        prompt_tokens, finish = None, "stop"
        try:
            for chunk in chunks:
                if prompt_tokens is None:
                    # The first chunk comes right after the prompt is evaluated, before the
                    # first sampled token is: the context holds exactly the prompt.
                    prompt_tokens = llm.n_tokens
                if cancelled.is_set():
                    return
                choice = chunk["choices"][0]
                if text := choice["delta"].get("content"):
                    emit(Delta(text=text))
                finish = choice.get("finish_reason") or finish
        finally:
            chunks.close()  # type: ignore[attr-defined]
        prompt_tokens = prompt_tokens or llm.n_tokens
        # Every sampled token is evaluated except the last one when the length ran out.
        completion = llm.n_tokens - prompt_tokens + (1 if finish == "length" else 0)
        emit(Delta(finish_reason=finish, usage=Usage(prompt_tokens, completion)))

    async def stream(self, params: ChatParams) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | Exception | None] = asyncio.Queue()
        put = queue.put_nowait
        cancelled = threading.Event()

        def emit(delta: Delta) -> None:
            loop.call_soon_threadsafe(put, delta)

        def job(submitted: float) -> None:
            try:
                self._generate(params, submitted, cancelled, emit)
            except Exception as exc:  # handed over to the awaiting coroutine
                loop.call_soon_threadsafe(put, _translate(exc))
            finally:
                loop.call_soon_threadsafe(put, None)

        self.llm  # noqa: B018 - fail here, not in the worker, when the model is not loaded
        loop.run_in_executor(self._executor, job, time.perf_counter())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancelled.set()  # no-op when finished; otherwise frees the model at once

    async def complete(self, params: ChatParams) -> Completion:
        parts: list[str] = []
        finish, usage, wait_ms = "stop", Usage(), 0.0
        async for delta in self.stream(params):
            parts.append(delta.text)
            if delta.queue_wait_ms is not None:
                wait_ms = delta.queue_wait_ms
            if delta.finish_reason:
                finish, usage = delta.finish_reason, delta.usage or usage
        return Completion("".join(parts), finish, usage, queue_wait_ms=wait_ms)


def _translate(exc: Exception) -> Exception:
    """llama-cpp-python signals a too-long prompt with ValueError; anything else is ours."""
    if isinstance(exc, ValueError) and "context" in str(exc):
        return ContextLengthExceeded(str(exc))
    if isinstance(exc, ValueError | RuntimeError | OSError):
        return BackendError(f"llama.cpp failed: {exc}")
    return exc
