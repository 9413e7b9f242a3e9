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

import numpy as np
import numpy.typing as npt
from pydantic import Field

from router.backends.base import Backend, ChatParams, Completion, Delta, SpecBase, Usage
from router.errors import BackendError, ContextLengthExceeded

if TYPE_CHECKING:
    from llama_cpp import Llama

# OpenAI counts a few tokens of chat-template framing per message; so do we, to refuse
# prompts that cannot fit before they wait in the queue. llama.cpp checks exactly later.
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

    @property
    def llm(self) -> Llama:
        if self._llm is None:
            raise BackendError(f"model {self.spec.name!r} is not loaded")
        return self._llm

    # -- requests ----------------------------------------------------------------------
    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        # Tokenizing reads only the vocabulary, which generation never writes.
        llm = self.llm
        return sum(
            len(llm.tokenize(m["content"].encode(), add_bos=False, special=True))
            + _TOKENS_PER_MESSAGE
            for m in messages
        )

    def _check_fits(self, messages: list[dict[str, str]], max_tokens: int | None) -> None:
        """Refuse, before queueing, a prompt (plus an explicit max_tokens) that cannot fit."""
        prompt = self.count_prompt_tokens(messages)
        wanted = prompt + (max_tokens or 0)
        if prompt >= self.spec.n_ctx or wanted > self.spec.n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.spec.n_ctx} tokens. However, "
                f"you requested {wanted} tokens ({prompt} in the messages, "
                f"{max_tokens or 0} in the completion). Please reduce the length of the messages "
                "or the completion."
            )

    def _submit(self, params: ChatParams, run: Callable[[_Sampling, dict[str, Any]], Any]) -> Any:
        """Queue ``run`` on the model's worker; returns (future, sampling) for the caller."""
        explicit_max = params.max_tokens
        p = self.with_defaults(params)
        self._check_fits(p.messages, explicit_max)
        llm = self.llm
        sampling = _Sampling(llm.token_eos())
        kwargs: dict[str, Any] = {
            "messages": p.messages,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "repeat_penalty": self.spec.repeat_penalty,
            "stop": p.stop or [],
            "logits_processor": [sampling],
        }
        if p.seed is not None:
            kwargs["seed"] = p.seed
        submitted = time.perf_counter()

        def job() -> Any:
            sampling.queue_wait_ms = (time.perf_counter() - submitted) * 1000
            if sampling.cancelled.is_set():
                return None
            try:
                return run(sampling, kwargs)
            except Exception as exc:
                raise _translate(exc) from exc

        return asyncio.get_running_loop().run_in_executor(self._executor, job), sampling

    async def complete(self, params: ChatParams) -> Completion:
        def run(_sampling: _Sampling, kwargs: dict[str, Any]) -> Any:
            return self.llm.create_chat_completion(**kwargs)

        future, sampling = self._submit(params, run)
        try:
            result = await asyncio.shield(future)
        finally:
            sampling.cancelled.set()  # no-op when done; otherwise frees the model at once
        choice = result["choices"][0]
        usage = result["usage"]
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=Usage(usage["prompt_tokens"], usage["completion_tokens"]),
            queue_wait_ms=sampling.queue_wait_ms,
        )

    async def stream(self, params: ChatParams) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        put = queue.put_nowait

        def run(sampling: _Sampling, kwargs: dict[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(put, Delta(queue_wait_ms=sampling.queue_wait_ms))
                finish = "stop"
                chunks = cast(Iterator[Any], self.llm.create_chat_completion(stream=True, **kwargs))
                for chunk in chunks:
                    if sampling.cancelled.is_set():
                        return
                    choice = chunk["choices"][0]
                    if text := choice["delta"].get("content"):
                        loop.call_soon_threadsafe(put, Delta(text=text))
                    finish = choice.get("finish_reason") or finish
                usage = sampling.usage(finish)
                loop.call_soon_threadsafe(put, Delta(finish_reason=finish, usage=usage))
            except Exception as exc:  # handed over to the awaiting coroutine
                loop.call_soon_threadsafe(put, _translate(exc))
            finally:
                loop.call_soon_threadsafe(put, None)

        _future, sampling = self._submit(params, run)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            sampling.cancelled.set()


class _Sampling:
    """A llama.cpp logits processor that counts tokens exactly and stops on cancel.

    llama.cpp calls it once per sampled token with every token so far: the first call
    sees exactly the prompt, and a cancelled request is answered with end-of-sequence.
    """

    def __init__(self, eos: int) -> None:
        self.eos = eos
        self.cancelled = threading.Event()
        self.prompt_tokens = 0
        self.sampled = 0
        self.queue_wait_ms = 0.0

    def __call__(self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> Any:
        if self.sampled == 0:
            self.prompt_tokens = len(input_ids)
        self.sampled += 1
        if self.cancelled.is_set():
            scores[:] = -np.inf
            scores[self.eos] = 0.0
        return scores

    def usage(self, finish_reason: str) -> Usage:
        # On "stop" the last sample was end-of-sequence, which is not part of the answer.
        completion = self.sampled - (1 if finish_reason == "stop" and self.sampled else 0)
        return Usage(self.prompt_tokens, completion)


def _translate(exc: Exception) -> Exception:
    """llama-cpp-python signals a too-long prompt with ValueError; anything else is ours."""
    if isinstance(exc, ValueError) and "context" in str(exc):
        return ContextLengthExceeded(str(exc))
    if isinstance(exc, ValueError | RuntimeError | OSError):
        return BackendError(f"llama.cpp failed: {exc}")
    return exc
