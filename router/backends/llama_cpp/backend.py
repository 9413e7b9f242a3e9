"""The llama.cpp backend: one ``Llama`` loaded in-process and the worker thread that
generates its requests.

``Llama`` is not thread-safe, so each backend owns one worker thread: requests queue for
it (the wait is measured), tokens cross back to the event loop with
``call_soon_threadsafe``, and a cancelled request stops generation at its next token.

The prompt is rendered by the model's chat template (the GGUF's, or ``chat_format``) and
generated with ``create_completion``, so the context check counts exactly the tokens the
model sees. A ``chat_format`` that is a whole handler rather than a template
(``chatml-function-calling``, ``functionary-v2``, multimodal ones) gets the request as
``create_chat_completion`` takes it, tools included, and its answer is relayed; a field
such a handler does not name (``chatml-function-calling`` has no ``seed`` or
``logit_bias``) is refused.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

from router.backends.base import Backend, ChatParams, Completion, Delta, Usage, refuse
from router.backends.llama_cpp.chat_format import chat_formatter, chat_handler
from router.backends.llama_cpp.choices import Choice
from router.backends.llama_cpp.emit import Run, emit_forced, emit_required, emit_text
from router.backends.llama_cpp.messages import plain_text, template_messages
from router.backends.llama_cpp.plan import Plan, make_plan
from router.backends.llama_cpp.sampling import choice_seed, delta_logprobs, logprob_entries
from router.backends.llama_cpp.spec import LlamaCppSpec
from router.backends.llama_cpp.tools import TOOL_CLOSE, TOOL_OPEN, relayed_calls
from router.errors import BackendError, ContextLengthExceeded, InvalidRequest

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar

# Without a template to render (a whole chat handler), OpenAI's count: a few tokens of
# framing per message. llama.cpp checks the exact prompt again when it generates.
_TOKENS_PER_MESSAGE = 4


class LlamaCppBackend(Backend):
    """One ``Llama`` instance, one worker thread, one request at a time."""

    spec: LlamaCppSpec

    def __init__(self, spec: LlamaCppSpec, *, model_path: str) -> None:
        self.spec = spec
        self.model_path = model_path
        self.context_length = spec.n_ctx
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{spec.name}")
        self._llm: Llama | None = None
        #: The chat template as a function of the messages; None for a whole handler.
        self._formatter: Callable[..., Any] | None = None
        #: The parameters a whole handler names (it swallows others in ``**kwargs``).
        self._handler_takes: frozenset[str] = frozenset()

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._llm = await loop.run_in_executor(self._executor, self._load)
        self._formatter = chat_formatter(self._llm)
        handler = chat_handler(self._llm)
        self._handler_takes = frozenset(inspect.signature(handler).parameters)

    def _load(self) -> Llama:
        from llama_cpp import Llama  # heavy import, only when a GGUF arm exists

        kwargs: dict[str, Any] = {
            "model_path": self.model_path,
            "n_ctx": self.spec.n_ctx,
            "n_batch": self.spec.n_batch,
            "n_gpu_layers": self.spec.n_gpu_layers,
            "chat_format": self.spec.chat_format,
            "logits_all": self.spec.logits_all,
            "verbose": False,
        }
        # llama-cpp-python's own default is half the cores; a dedicated router wants all.
        kwargs["n_threads"] = self.spec.n_threads or os.cpu_count() or 1
        if self.spec.seed is not None:
            kwargs["seed"] = self.spec.seed
        try:
            llm = Llama(**kwargs)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        try:
            chat_handler(llm)
        except Exception as exc:
            llm.close()
            raise BackendError(f"unknown chat_format {self.spec.chat_format!r}: {exc}") from exc
        return llm

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

    # -- requests: OpenAI's fields in llama.cpp's terms --------------------------------
    def _plan(self, params: ChatParams) -> Plan:
        """Map every option to llama.cpp (see ``plan``), or refuse it (400) naming it and
        the model."""
        return make_plan(
            params,
            self.with_defaults(params),
            spec=self.spec,
            n_vocab=lambda: self.llm.n_vocab(),
            templated=self._formatter is not None,
            handler_takes=self._handler_takes,
        )

    # -- prompt ------------------------------------------------------------------------
    def _render(self, plan: Plan, prefix: str = "") -> tuple[list[int], list[str], Any]:
        """The prompt's tokens as the chat template renders them (``prefix`` opens the
        answer), the template's stop strings and its stopping criteria."""
        assert self._formatter is not None
        try:
            result = self._formatter(messages=plan.messages)
        except Exception as exc:  # the template refuses these messages (raise_exception)
            raise InvalidRequest(
                f"Model {self.spec.name!r}'s chat template cannot render these messages: {exc}",
                code="invalid_messages",
                param="messages",
            ) from exc
        text = result.prompt + prefix
        tokens = self.llm.tokenize(
            text.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = result.stop
        stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        return tokens, stops, result.stopping_criteria

    def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        """The tokens ``messages`` take as the model's template renders them."""
        if self._formatter is not None:
            plan = Plan(
                messages=template_messages(messages, model=self.spec.name, tools=[]),
                n=1,
                max_tokens=None,
                explicit_max_tokens=None,
                stop=[],
                seed=None,
                sampling={},
            )
            return len(self._render(plan)[0])
        llm = self.llm
        return sum(
            len(
                llm.tokenize(
                    plain_text(m.get("content")).encode(),
                    add_bos=False,
                    special=True,
                )
            )
            + _TOKENS_PER_MESSAGE
            for m in messages
        )

    def _check_fits(self, prompt: int, max_tokens: int | None) -> None:
        """Refuse a prompt (plus an explicit max_tokens) that cannot fit, with the counts."""
        wanted = prompt + (max_tokens or 0)
        if prompt >= self.spec.n_ctx or wanted > self.spec.n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.spec.n_ctx} tokens. However, "
                f"you requested {wanted} tokens ({prompt} in the messages, "
                f"{max_tokens or 0} in the completion). Please reduce the length of the messages "
                "or the completion."
            )

    # -- generation (worker thread) ----------------------------------------------------
    def _generate(
        self,
        plan: Plan,
        submitted: float,
        cancelled: threading.Event,
        emit: Callable[[Delta], None],
    ) -> None:
        """Worker-thread body: the request's choices, streamed through ``emit``.

        Both ``complete`` and ``stream`` use it, so a cancelled request stops at its next
        token either way (closing llama-cpp-python's generator ends the decode loop).
        """
        emit(Delta(queue_wait_ms=(time.perf_counter() - submitted) * 1000))
        if cancelled.is_set():
            return
        if self._formatter is None:
            self._generate_with_handler(plan, cancelled, emit)
            return
        prefix = ""
        if plan.tool_mode == "forced":
            prefix = f'{TOOL_OPEN}\n{{"name": {json.dumps(plan.forced)}, "arguments": '
        elif plan.tool_mode == "required":
            prefix = f"{TOOL_OPEN}\n"
        # Checked here, not on the event loop: rendering and tokenizing cost the loop.
        tokens, template_stops, stopping = self._render(plan, prefix)
        self._check_fits(len(tokens), plan.explicit_max_tokens)
        usage = Usage(prompt_tokens=len(tokens))
        for index in range(plan.n):
            seed = choice_seed(plan.seed, index)
            run = Run()
            if plan.tool_mode in ("forced", "required"):
                # A user's stop string must not cut a call's JSON short.
                pieces = self._sample(
                    tokens, plan, plan.tool_grammar, template_stops, stopping, seed, cancelled, run
                )
                if plan.tool_mode == "forced":
                    emit_forced(plan, index, pieces, emit)
                else:
                    emit_required(plan, index, pieces, emit)
                if run.finish != "length":
                    run.finish = "tool_calls"
            else:
                stops = [*template_stops, *plan.stop]
                if plan.tool_mode == "auto" and not plan.parallel_tool_calls:
                    stops.append(TOOL_CLOSE)  # ends the answer after its first call
                pieces = self._sample(
                    tokens, plan, plan.grammar, stops, stopping, seed, cancelled, run
                )
                emit_text(plan, index, pieces, emit, run)
            if run.cancelled or cancelled.is_set():
                return
            usage.completion_tokens += run.completion_tokens
            last = index == plan.n - 1
            emit(Delta(index=index, finish_reason=run.finish, usage=usage if last else None))

    def _sample(
        self,
        tokens: list[int],
        plan: Plan,
        grammar: LlamaGrammar | None,
        stop: list[str],
        stopping: Any,
        seed: int | None,
        cancelled: threading.Event,
        run: Run,
    ) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """One generation's (text, logprobs entries) pieces; ``run`` says how it ended."""
        llm = self.llm
        chunks = cast(
            Iterator[Any],
            llm.create_completion(
                prompt=tokens,
                max_tokens=plan.max_tokens,
                stop=stop,
                stopping_criteria=stopping,
                grammar=grammar,
                seed=seed,
                logprobs=plan.top_logprobs,
                stream=True,
                **plan.sampling,
            ),
        )
        try:
            for chunk in chunks:
                if cancelled.is_set():
                    run.cancelled = True
                    return
                choice = chunk["choices"][0]
                entries = logprob_entries(choice.get("logprobs"), plan.top_logprobs)
                if choice["text"] or entries:
                    yield choice["text"], entries
                run.finish = choice.get("finish_reason") or run.finish
        finally:
            chunks.close()  # type: ignore[attr-defined]
        # Every sampled token is evaluated except the last one when the length ran out.
        run.completion_tokens = llm.n_tokens - len(tokens) + (1 if run.finish == "length" else 0)

    def _generate_with_handler(
        self, plan: Plan, cancelled: threading.Event, emit: Callable[[Delta], None]
    ) -> None:
        """A whole chat handler (no template to render): the request as
        ``create_chat_completion`` takes it; its chunks relayed."""
        llm = self.llm
        self._check_fits(self.count_prompt_tokens(plan.messages), plan.explicit_max_tokens)
        kwargs: dict[str, Any] = {
            "messages": plan.messages,
            "max_tokens": plan.max_tokens,
            "stop": plan.stop,
            "response_format": plan.response_format,
            "tools": plan.raw_tools,
            "tool_choice": plan.raw_tool_choice,
            "logprobs": plan.top_logprobs is not None,
            "top_logprobs": plan.top_logprobs,
            "stream": True,
            **plan.sampling,
        }
        want_logprobs = plan.top_logprobs is not None
        usage = Usage()
        for index in range(plan.n):
            seed = choice_seed(plan.seed, index)
            chunks = cast(Iterator[Any], llm.create_chat_completion(**kwargs, seed=seed))
            prompt_tokens: int | None = None
            finish, started = "stop", set[int]()
            try:
                for chunk in chunks:
                    if prompt_tokens is None:
                        # The first chunk comes right after the prompt is evaluated, before
                        # the first sampled token is: the context holds exactly the prompt.
                        prompt_tokens = llm.n_tokens
                    if cancelled.is_set():
                        return
                    choice = chunk["choices"][0]
                    delta = choice.get("delta") or {}
                    calls = relayed_calls(delta.get("tool_calls"), started)
                    entries = (choice.get("logprobs") or {}).get("content") or []
                    if delta.get("content") or calls or entries:
                        emit(
                            Delta(
                                text=delta.get("content") or "",
                                index=index,
                                fields={"tool_calls": calls} if calls else None,
                                logprobs=delta_logprobs(entries, want_logprobs),
                            )
                        )
                    finish = choice.get("finish_reason") or finish
            finally:
                chunks.close()  # type: ignore[attr-defined]
            prompt_tokens = prompt_tokens or llm.n_tokens
            usage.prompt_tokens = prompt_tokens
            usage.completion_tokens += (
                llm.n_tokens - prompt_tokens + (1 if finish == "length" else 0)
            )
            last = index == plan.n - 1
            emit(Delta(index=index, finish_reason=finish, usage=usage if last else None))

    # -- the event loop side -----------------------------------------------------------
    async def _deltas(self, plan: Plan) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | Exception | None] = asyncio.Queue()
        put = queue.put_nowait
        cancelled = threading.Event()

        def emit(delta: Delta) -> None:
            loop.call_soon_threadsafe(put, delta)

        def job(submitted: float) -> None:
            try:
                self._generate(plan, submitted, cancelled, emit)
            except Exception as exc:  # handed over to the awaiting coroutine
                loop.call_soon_threadsafe(put, _translate(exc))
            finally:
                loop.call_soon_threadsafe(put, None)

        loop.run_in_executor(self._executor, job, time.perf_counter())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancelled.set()  # no-op when finished; otherwise frees the model at once

    async def stream(self, params: ChatParams) -> AsyncIterator[Delta]:
        self.llm  # noqa: B018 - fail here, not in the worker, when the model is not loaded
        plan = self._plan(params)
        if plan.n > 1:
            refuse(
                self.spec.name,
                ["n"],
                "llama.cpp generates choices one after another; ask for n > 1 without stream",
            )
        async for delta in self._deltas(plan):
            yield delta

    async def complete(self, params: ChatParams) -> Completion:
        self.llm  # noqa: B018
        plan = self._plan(params)
        choices: dict[int, Choice] = {}
        usage, wait_ms = Usage(), 0.0
        async for delta in self._deltas(plan):
            if delta.queue_wait_ms is not None:
                wait_ms = delta.queue_wait_ms
            choices.setdefault(delta.index, Choice()).add(delta)
            if delta.usage is not None:
                usage = delta.usage
        ordered = [choices.get(i, Choice()) for i in range(plan.n)]
        first = ordered[0]
        plain = plan.n == 1 and not first.calls and plan.top_logprobs is None
        return Completion(
            first.text,
            first.finish,
            usage,
            queue_wait_ms=wait_ms,
            choices=None
            if plain
            else [c.openai(i, plan.top_logprobs) for i, c in enumerate(ordered)],
        )


def _translate(exc: Exception) -> Exception:
    """llama-cpp-python signals a too-long prompt with ValueError; anything else is ours."""
    if isinstance(exc, ValueError) and "context" in str(exc):
        return ContextLengthExceeded(str(exc))
    if isinstance(exc, ValueError | RuntimeError | OSError):
        return BackendError(f"llama.cpp failed: {exc}")
    return exc
