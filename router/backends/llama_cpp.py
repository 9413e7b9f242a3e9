"""GGUF models run in-process by llama.cpp (llama-cpp-python).

``Llama`` is not thread-safe, so each backend owns one worker thread: requests queue for
it (the wait is measured), tokens cross back to the event loop with
``call_soon_threadsafe``, and a cancelled request stops generation at its next token.

OpenAI's chat-completions fields and what llama.cpp does with them (anything else is
refused with a 400 ``unsupported_parameter`` naming the field and the model):

- ``tools``/``tool_choice``/``parallel_tool_calls``: the functions are described in the
  system message (Hermes/Qwen style: ``<tool_call>{"name", "arguments"}</tool_call>``),
  earlier calls and tool results are written into the conversation the same way, and the
  model's ``<tool_call>`` blocks come back as ``tool_calls``. A forced function (or
  ``"required"``) is generated under a grammar made from its ``parameters`` schema, so
  its arguments are valid JSON for it. ``parallel_tool_calls: false``: one call at most.
- ``response_format``: ``json_object`` and ``json_schema`` (its ``schema``) become a
  grammar; a schema llama.cpp cannot turn into one is a 400.
- ``logprobs``/``top_logprobs`` (0 to 20): only for a model loaded with
  ``logits_all: true`` (it keeps n_ctx x vocabulary logits); else a 400 saying so.
- ``presence_penalty``, ``frequency_penalty``, ``logit_bias`` (token ids), ``seed``:
  llama.cpp's sampler. ``seed`` with ``n`` > 1: choice i uses seed + i.
- ``n``: llama.cpp decodes one sequence, so the choices are generated one after the
  other; streamed, ``n`` > 1 is refused.
- ``top_k``, ``min_p``, ``repeat_penalty`` (``extra_body``): llama.cpp's own samplers.
- ``metadata``, ``store``, ``user``, ``safety_identifier``, ``prompt_cache_key``,
  ``stream_options``: they do not change the answer; accepted, not passed on.
- ``functions``/``function_call`` (deprecated by OpenAI): refused, use tools.

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
import contextlib
import inspect
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import Field

from router.backends.base import (
    Backend,
    ChatParams,
    Completion,
    Delta,
    Message,
    SpecBase,
    Usage,
    refuse,
    text_content,
)
from router.errors import BackendError, ContextLengthExceeded, InvalidRequest

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar

# Without a template to render (a whole chat handler), OpenAI's count: a few tokens of
# framing per message. llama.cpp checks the exact prompt again when it generates.
_TOKENS_PER_MESSAGE = 4

#: The most choices one request may ask for (``n``), as OpenAI allows.
MAX_CHOICES = 128
MAX_TOP_LOGPROBS = 20

#: Fields that do not change the answer: accepted, not passed on.
_INFORMATIONAL = frozenset(
    {"metadata", "store", "user", "safety_identifier", "prompt_cache_key", "stream_options"}
)

#: Fields a whole chat handler must name to be given them.
_HANDLER_FIELDS = frozenset(
    {
        "seed",
        "logit_bias",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "top_k",
        "min_p",
        "logprobs",
        "response_format",
        "tools",
        "tool_choice",
    }
)

_TOOL_OPEN, _TOOL_CLOSE = "<tool_call>", "</tool_call>"

ToolMode = Literal["none", "auto", "required", "forced"]


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
    logits_all: bool = Field(
        default=False,
        description="Keep the logits of every position, which requests' logprobs need; "
        "costs n_ctx x vocabulary floats of memory and some prompt speed.",
    )


@dataclass(slots=True)
class _Plan:
    """A request in llama.cpp's terms, checked on the event loop before it queues."""

    messages: list[Message]
    n: int
    max_tokens: int | None
    explicit_max_tokens: int | None
    stop: list[str]
    seed: int | None
    sampling: dict[str, Any]
    grammar: LlamaGrammar | None = None
    #: ``response_format`` as llama-cpp-python's chat handlers take it.
    response_format: dict[str, Any] | None = None
    #: None: no logprobs; else how many alternatives per token.
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_mode: ToolMode = "none"
    #: The function a forced call names.
    forced: str | None = None
    #: The grammar of a forced call's arguments, or of a whole ``required`` call.
    tool_grammar: LlamaGrammar | None = None
    parallel_tool_calls: bool = True
    #: ``tools``/``tool_choice`` as the client sent them (for whole chat handlers).
    raw_tools: Any = None
    raw_tool_choice: Any = None


@dataclass(slots=True)
class _Run:
    """How one generation ended."""

    finish: str = "stop"
    completion_tokens: int = 0
    cancelled: bool = False


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
        self._formatter = _chat_formatter(self._llm)
        handler = _chat_handler(self._llm)
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
            _chat_handler(llm)
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
    def _plan(self, params: ChatParams) -> _Plan:
        """Map every option to llama.cpp, or refuse it (400) naming it and the model."""
        model = self.spec.name
        p = self.with_defaults(params)
        options = {k: v for k, v in p.options.items() if k not in _INFORMATIONAL}
        take = options.pop
        plan = _Plan(
            messages=p.messages,
            n=_choices_wanted(take("n", None)),
            max_tokens=p.max_tokens,
            explicit_max_tokens=params.max_tokens,
            stop=list(p.stop or []),
            seed=p.seed,
            sampling={
                "temperature": p.temperature,
                "top_p": p.top_p,
                "repeat_penalty": self.spec.repeat_penalty,
            },
        )
        for name, low, high in (
            ("presence_penalty", -2.0, 2.0),
            ("frequency_penalty", -2.0, 2.0),
            ("repeat_penalty", 0.0, None),
            ("min_p", 0.0, 1.0),
        ):
            if (value := take(name, None)) is not None:
                plan.sampling[name] = _number(name, value, low, high)
        if (top_k := take("top_k", None)) is not None:
            plan.sampling["top_k"] = int(_number("top_k", top_k, 0, None, integer=True))
        if (bias := take("logit_bias", None)) is not None:
            plan.sampling["logit_bias"] = _logit_bias(bias, self.llm.n_vocab())

        logprobs, top = take("logprobs", None), take("top_logprobs", None)
        if logprobs:
            if not self.spec.logits_all:
                refuse(
                    model,
                    ["logprobs"],
                    "load it with logits_all: true (its spec or registered parameters) "
                    "to get token logprobs",
                )
            plan.top_logprobs = int(
                _number("top_logprobs", 0 if top is None else top, 0, MAX_TOP_LOGPROBS, True)
            )
        elif top:
            raise InvalidRequest("top_logprobs needs logprobs set to true.", param="top_logprobs")

        if "functions" in options or "function_call" in options:
            refuse(
                model,
                [k for k in ("functions", "function_call") if k in options],
                "deprecated by OpenAI; send tools and tool_choice",
            )
        self._plan_tools(
            plan, take("tools", None), take("tool_choice", None), take("parallel_tool_calls", None)
        )
        self._plan_response_format(plan, take("response_format", None))
        refuse(model, sorted(options))

        if self._formatter is not None:
            plan.messages = _template_messages(
                p.messages,
                model=model,
                tools=plan.tools if plan.tool_mode != "none" else [],
                parallel=plan.parallel_tool_calls,
            )
        else:
            sent = {k for k, v in p.options.items() if v not in (None, False, [])}
            if p.seed is not None:
                sent.add("seed")
            refuse(
                model,
                sorted((sent & _HANDLER_FIELDS) - self._handler_takes),
                f"its chat_format {self.spec.chat_format!r} does not take it",
            )
            plan.messages = [
                {
                    **m,
                    "content": text_content(
                        m.get("content"), model=model, param=f"messages.{i}.content"
                    ),
                }
                if isinstance(m.get("content"), list)
                else m
                for i, m in enumerate(p.messages)
            ]
        return plan

    def _plan_tools(self, plan: _Plan, tools: Any, choice: Any, parallel: Any) -> None:
        model = self.spec.name
        plan.raw_tools, plan.raw_tool_choice = tools, choice
        if tools is not None and not isinstance(tools, list):
            raise InvalidRequest("tools must be a list.", param="tools")
        functions: list[dict[str, Any]] = []
        for j, tool in enumerate(tools or []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                refuse(model, ["tools"], f"only function tools; tools.{j} is {kind!r}")
            function = tool.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise InvalidRequest(
                    f"tools.{j}.function needs a name.", param=f"tools.{j}.function"
                )
            functions.append(function)
        if parallel is not None:
            if not isinstance(parallel, bool):
                raise InvalidRequest(
                    "parallel_tool_calls must be true or false.", param="parallel_tool_calls"
                )
            plan.parallel_tool_calls = parallel
        if choice not in (None, "none", "auto") and not functions:
            raise InvalidRequest(
                "tool_choice is only allowed when tools are given.", param="tool_choice"
            )
        if not functions:
            return
        plan.tools = functions
        names = [f["name"] for f in functions]
        if choice is None or choice in ("auto", "none"):
            plan.tool_mode = choice or "auto"
        elif choice == "required":
            plan.tool_mode = "required"
        elif (
            isinstance(choice, dict)
            and choice.get("type") == "function"
            and isinstance(choice.get("function"), dict)
        ):
            name = choice["function"].get("name")
            if name not in names:
                raise InvalidRequest(
                    f"tool_choice names {name!r}, which is not one of the tools.",
                    param="tool_choice",
                )
            plan.tool_mode, plan.forced = "forced", name
        else:
            refuse(model, ["tool_choice"], f"{choice!r} is not none, auto, required or a function")
        if plan.tool_mode == "required" and len(functions) == 1:
            plan.tool_mode, plan.forced = "forced", names[0]
        if self._formatter is None:
            return  # the chat handler builds its own grammars
        if plan.tool_mode == "forced":
            j = names.index(cast(str, plan.forced))
            plan.tool_grammar = _grammar(
                _parameters(functions[j]), param=f"tools.{j}.function.parameters"
            )
        elif plan.tool_mode == "required":
            whole = {
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {"name": {"const": f["name"]}, "arguments": _parameters(f)},
                        "required": ["name", "arguments"],
                    }
                    for f in functions
                ]
            }
            plan.tool_grammar = _grammar(whole, param="tools")

    def _plan_response_format(self, plan: _Plan, response_format: Any) -> None:
        if response_format is None:
            return
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "text":
            return
        if kind == "json_object":
            from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

            plan.grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
            plan.response_format = {"type": "json_object"}
        elif kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if schema is None:
                raise InvalidRequest(
                    "response_format.json_schema needs a schema.",
                    param="response_format.json_schema",
                )
            plan.grammar = _grammar(schema, param="response_format.json_schema.schema")
            plan.response_format = {"type": "json_object", "schema": schema}
        else:
            refuse(self.spec.name, ["response_format"], f"type {kind!r}")
        if plan.tool_mode == "auto":
            refuse(
                self.spec.name,
                ["response_format"],
                "with tools the model chooses between text and a tool call, so its text "
                "cannot be held to JSON; force a function or set tool_choice to none",
            )

    # -- prompt ------------------------------------------------------------------------
    def _render(self, plan: _Plan, prefix: str = "") -> tuple[list[int], list[str], Any]:
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
            plan = _Plan(
                messages=_template_messages(messages, model=self.spec.name, tools=[]),
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
                    _plain(m.get("content")).encode(),
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
        plan: _Plan,
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
            prefix = f'{_TOOL_OPEN}\n{{"name": {json.dumps(plan.forced)}, "arguments": '
        elif plan.tool_mode == "required":
            prefix = f"{_TOOL_OPEN}\n"
        # Checked here, not on the event loop: rendering and tokenizing cost the loop.
        tokens, template_stops, stopping = self._render(plan, prefix)
        self._check_fits(len(tokens), plan.explicit_max_tokens)
        usage = Usage(prompt_tokens=len(tokens))
        for index in range(plan.n):
            seed = _seed(plan.seed, index)
            run = _Run()
            if plan.tool_mode in ("forced", "required"):
                # A user's stop string must not cut a call's JSON short.
                pieces = self._sample(
                    tokens, plan, plan.tool_grammar, template_stops, stopping, seed, cancelled, run
                )
                if plan.tool_mode == "forced":
                    self._emit_forced(plan, index, pieces, emit)
                else:
                    self._emit_required(plan, index, pieces, emit)
                if run.finish != "length":
                    run.finish = "tool_calls"
            else:
                stops = [*template_stops, *plan.stop]
                if plan.tool_mode == "auto" and not plan.parallel_tool_calls:
                    stops.append(_TOOL_CLOSE)  # ends the answer after its first call
                pieces = self._sample(
                    tokens, plan, plan.grammar, stops, stopping, seed, cancelled, run
                )
                self._emit_text(plan, index, pieces, emit, run)
            if run.cancelled or cancelled.is_set():
                return
            usage.completion_tokens += run.completion_tokens
            last = index == plan.n - 1
            emit(Delta(index=index, finish_reason=run.finish, usage=usage if last else None))

    def _sample(
        self,
        tokens: list[int],
        plan: _Plan,
        grammar: LlamaGrammar | None,
        stop: list[str],
        stopping: Any,
        seed: int | None,
        cancelled: threading.Event,
        run: _Run,
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
                entries = _logprob_entries(choice.get("logprobs"), plan.top_logprobs)
                if choice["text"] or entries:
                    yield choice["text"], entries
                run.finish = choice.get("finish_reason") or run.finish
        finally:
            chunks.close()  # type: ignore[attr-defined]
        # Every sampled token is evaluated except the last one when the length ran out.
        run.completion_tokens = llm.n_tokens - len(tokens) + (1 if run.finish == "length" else 0)

    def _emit_text(
        self,
        plan: _Plan,
        index: int,
        pieces: Iterator[tuple[str, list[dict[str, Any]]]],
        emit: Callable[[Delta], None],
        run: _Run,
    ) -> None:
        """Plain text; with tools ("auto"), text from the first ``<tool_call>`` on is held
        and comes out as tool calls when it parses as such (else as the text it was)."""
        want_logprobs = plan.top_logprobs is not None
        scanner = _ToolCallScanner() if plan.tool_mode == "auto" else None
        held: list[dict[str, Any]] = []
        for text, entries in pieces:
            held += entries
            out = scanner.feed(text) if scanner else text
            if out:
                emit(Delta(text=out, index=index, logprobs=_lp(held, want_logprobs)))
                held = []
        if scanner is None or run.cancelled:
            return
        calls, rest = scanner.finish(plan.tools)
        if calls:
            fields = {
                "tool_calls": [
                    {
                        "index": k,
                        "id": _call_id(),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                    for k, (name, arguments) in enumerate(calls)
                ]
            }
            if run.finish != "length":
                run.finish = "tool_calls"
            emit(Delta(text=rest, index=index, fields=fields, logprobs=_lp(held, want_logprobs)))
        elif rest or held:
            emit(Delta(text=rest, index=index, logprobs=_lp(held, want_logprobs)))

    def _emit_forced(
        self,
        plan: _Plan,
        index: int,
        pieces: Iterator[tuple[str, list[dict[str, Any]]]],
        emit: Callable[[Delta], None],
    ) -> None:
        """The forced function's call: its name first, then its arguments as generated."""
        want_logprobs = plan.top_logprobs is not None
        head = {
            "index": 0,
            "id": _call_id(),
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
                    logprobs=_lp(entries, want_logprobs),
                )
            )

    def _emit_required(
        self,
        plan: _Plan,
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
                    "id": _call_id(),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ]
        }
        emit(
            Delta(index=index, fields=fields, logprobs=_lp(entries, plan.top_logprobs is not None))
        )

    def _generate_with_handler(
        self, plan: _Plan, cancelled: threading.Event, emit: Callable[[Delta], None]
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
            seed = _seed(plan.seed, index)
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
                    calls = _relayed_calls(delta.get("tool_calls"), started)
                    entries = (choice.get("logprobs") or {}).get("content") or []
                    if delta.get("content") or calls or entries:
                        emit(
                            Delta(
                                text=delta.get("content") or "",
                                index=index,
                                fields={"tool_calls": calls} if calls else None,
                                logprobs=_lp(entries, want_logprobs),
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
    async def _deltas(self, plan: _Plan) -> AsyncIterator[Delta]:
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
        choices: dict[int, _Choice] = {}
        usage, wait_ms = Usage(), 0.0
        async for delta in self._deltas(plan):
            if delta.queue_wait_ms is not None:
                wait_ms = delta.queue_wait_ms
            choices.setdefault(delta.index, _Choice()).add(delta)
            if delta.usage is not None:
                usage = delta.usage
        ordered = [choices.get(i, _Choice()) for i in range(plan.n)]
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


@dataclass(slots=True)
class _Choice:
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


class _ToolCallScanner:
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
        at = text.find(_TOOL_OPEN)
        if at >= 0:
            self.calls, self.held = text[at:], ""
            return text[:at]
        keep = next(
            (k for k in range(len(_TOOL_OPEN) - 1, 0, -1) if text.endswith(_TOOL_OPEN[:k])), 0
        )
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self, tools: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], str]:
        """The calls made (name, arguments JSON) and the text left to show; no calls when
        the tail is not well-formed calls of the tools (then it is all text)."""
        if self.calls is None:
            return [], self.held
        parsed = _parse_tool_calls(self.calls, {t["name"] for t in tools})
        if parsed is None:
            return [], self.calls
        calls, rest = parsed
        return calls, rest.strip()


def _parse_tool_calls(text: str, names: set[str]) -> tuple[list[tuple[str, str]], str] | None:
    calls: list[tuple[str, str]] = []
    rest: list[str] = []
    position = 0
    while (start := text.find(_TOOL_OPEN, position)) >= 0:
        rest.append(text[position:start])
        end = text.find(_TOOL_CLOSE, start)
        body = text[start + len(_TOOL_OPEN) : end if end >= 0 else len(text)]
        position = end + len(_TOOL_CLOSE) if end >= 0 else len(text)
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


# -- messages --------------------------------------------------------------------------
def _tools_prompt(tools: list[dict[str, Any]], *, parallel: bool) -> str:
    """The tools described to the model, as Hermes- and Qwen-style models are trained."""
    signatures = "\n".join(
        json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in tools
    )
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{signatures}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments "
        "within <tool_call></tool_call> XML tags:\n"
        f'{_TOOL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n'
        f"{_TOOL_CLOSE}" + ("" if parallel else "\nCall at most one function.")
    )


def _tool_call_text(call: Any) -> str:
    function = (call.get("function") if isinstance(call, dict) else None) or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments)
    body = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
    return f"{_TOOL_OPEN}\n{body}\n{_TOOL_CLOSE}"


def _template_messages(
    messages: list[Message],
    *,
    model: str,
    tools: list[dict[str, Any]],
    parallel: bool = True,
) -> list[Message]:
    """OpenAI messages as text turns any chat template renders: content parts joined
    (images refused), an assistant's tool calls written as ``<tool_call>`` blocks, tool
    results (one user turn for consecutive ones) as ``<tool_response>`` blocks, and the
    tools described in the system message."""
    out: list[Message] = []
    results = False  # the last turn holds tool results
    for i, m in enumerate(messages):
        role = m.get("role")
        content = text_content(m.get("content"), model=model, param=f"messages.{i}.content")
        if role in ("tool", "function"):
            block = f"<tool_response>\n{content}\n</tool_response>"
            if results:
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
            results = True
            continue
        results = False
        if role == "developer":
            role = "system"
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(_tool_call_text(c) for c in m["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        turn: Message = {"role": role, "content": content}
        if isinstance(m.get("name"), str):
            turn["name"] = m["name"]
        out.append(turn)
    if tools:
        described = _tools_prompt(tools, parallel=parallel)
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{described}"
        else:
            out.insert(0, {"role": "system", "content": described})
    return out


# -- helpers ---------------------------------------------------------------------------
def _chat_handler(llm: Llama) -> Any:
    """The handler ``create_chat_completion`` would use (llama-cpp-python's choice)."""
    from llama_cpp import llama_chat_format

    return (
        llm.chat_handler
        or llm._chat_handlers.get(cast(str, llm.chat_format))
        or llama_chat_format.get_chat_completion_handler(cast(str, llm.chat_format))
    )


def _chat_formatter(llm: Llama) -> Callable[..., Any] | None:
    """The template inside the chat handler (the GGUF's Jinja template or a named format
    such as "chatml"); None for a handler that is more than a template."""
    handler = _chat_handler(llm)
    names = getattr(getattr(handler, "__code__", None), "co_freevars", ())
    cells = getattr(handler, "__closure__", None) or ()
    found = dict(zip(names, (c.cell_contents for c in cells), strict=False))
    formatter = found.get("chat_formatter")
    return formatter if callable(formatter) else None


def _grammar(schema: Any, *, param: str) -> LlamaGrammar:
    from llama_cpp.llama_grammar import LlamaGrammar

    try:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as exc:
        raise InvalidRequest(
            f"{param} cannot be turned into a llama.cpp grammar: {exc}", param=param
        ) from exc


def _parameters(function: dict[str, Any]) -> Any:
    return function.get("parameters") or {"type": "object", "properties": {}}


def _choices_wanted(n: Any) -> int:
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        raise InvalidRequest(f"n must be an integer from 1 to {MAX_CHOICES}.", param="n")
    return n


def _number(
    name: str, value: Any, low: float | None, high: float | None, integer: bool = False
) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        raise InvalidRequest(f"{name} must be a number.", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidRequest(f"{name} must be from {low} to {high}.", param=name)
    return float(value)


def _logit_bias(bias: Any, n_vocab: int) -> dict[int, float]:
    """OpenAI's ``{"token id": bias}`` as llama.cpp's ``{token id: bias}``."""
    if not isinstance(bias, dict):
        raise InvalidRequest("logit_bias must map token ids to biases.", param="logit_bias")
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            token = -1
        if not 0 <= token < n_vocab:
            raise InvalidRequest(
                f"logit_bias key {key!r} is not a token id of this model (0 to {n_vocab - 1}).",
                param="logit_bias",
            )
        out[token] = _number("logit_bias", value, -100, 100)
    return out


def _logprob_entries(logprobs: Any, top: int | None) -> list[dict[str, Any]]:
    """llama.cpp's completion logprobs as OpenAI's chat ``logprobs.content`` entries."""
    if not logprobs or top is None:
        return []

    def entry(token: str, logprob: Any) -> dict[str, Any]:
        return {"token": token, "logprob": float(logprob), "bytes": list(token.encode())}

    return [
        {
            **entry(token, logprob),
            "top_logprobs": [
                entry(t, lp) for t, lp in sorted(alts.items(), key=lambda kv: -kv[1])[:top]
            ],
        }
        for token, logprob, alts in zip(
            logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=False
        )
    ]


def _lp(entries: list[dict[str, Any]], wanted: bool) -> dict[str, Any] | None:
    return {"content": entries} if wanted else None


def _relayed_calls(pieces: Any, started: set[int]) -> list[dict[str, Any]]:
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
                    "id": piece.get("id") or _call_id(),
                    "type": "function",
                    "function": {
                        "name": function.get("name", ""),
                        "arguments": function.get("arguments", ""),
                    },
                }
            )
    return out


def _seed(seed: int | None, index: int) -> int | None:
    """Choice ``index``'s llama.cpp seed: a uint32 other than 0xFFFFFFFF (which llama.cpp
    reads as "random"); OpenAI's seeds are 64-bit."""
    return None if seed is None else (seed + index) % 0xFFFFFFFF


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def _translate(exc: Exception) -> Exception:
    """llama-cpp-python signals a too-long prompt with ValueError; anything else is ours."""
    if isinstance(exc, ValueError) and "context" in str(exc):
        return ContextLengthExceeded(str(exc))
    if isinstance(exc, ValueError | RuntimeError | OSError):
        return BackendError(f"llama.cpp failed: {exc}")
    return exc
