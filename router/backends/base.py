"""The one interface every model backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from router.errors import InvalidRequest


class SpecBase(BaseModel):
    """Settings every backend shares: identity and Modelfile-like defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Model name recorded in the inference log.")
    version: str = Field(default="static", description="Model version recorded in the log.")
    system_prompt: str | None = None
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    stop: list[str] = Field(default_factory=list, description="Stop sequences, always applied.")


Message = dict[str, Any]


@dataclass(slots=True)
class ChatParams:
    """One chat request as a backend sees it (already validated).

    ``messages`` are OpenAI's messages as the client sent them: ``content`` a string, a
    list of parts or null, and ``name``, ``tool_calls``, ``tool_call_id`` where given.
    ``options`` holds every other chat-completions field the client sent, unchanged
    (``tools``, ``tool_choice``, ``response_format``, ``logprobs``, ``n``, penalties,
    ``logit_bias``, ``metadata``, and fields OpenAI does not define, as ``extra_body``
    sends them): a backend passes on what it can and refuses the rest with a 400
    (``refuse``), never silently.
    """

    messages: list[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class Completion:
    """A whole answer: the first choice's text and finish reason, and, when the engine
    answered with more than one plain text (tool calls, a refusal, logprobs, several
    choices), ``choices`` in OpenAI's shape (``{"index", "message", "finish_reason",
    "logprobs"?}``), which the client then receives as they are."""

    text: str
    finish_reason: str
    usage: Usage
    queue_wait_ms: float = 0.0
    choices: list[dict[str, Any]] | None = None

    @property
    def tool_calls(self) -> list[dict[str, Any]] | None:
        """The first choice's tool calls, if it made any."""
        if not self.choices:
            return None
        return self.choices[0].get("message", {}).get("tool_calls") or None


@dataclass(slots=True)
class Delta:
    """One piece of a streamed answer; the last one carries ``usage``.

    ``index`` is the choice it belongs to (``n`` > 1); ``finish_reason`` ends that choice.
    ``fields`` are the rest of OpenAI's ``delta`` besides ``content`` (``tool_calls``
    pieces with their own indices, ``refusal``), ``logprobs`` the choice's logprobs of
    this piece; both are relayed to the client unchanged.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    queue_wait_ms: float | None = None
    index: int = 0
    fields: dict[str, Any] | None = None
    logprobs: dict[str, Any] | None = None


#: OpenAI's range for ``n``.
MAX_CHOICES = 128


def choices_wanted(n: Any) -> int:
    """How many choices ``n`` asks for (None: one); 400 outside OpenAI's 1..128."""
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        raise InvalidRequest(f"n must be an integer from 1 to {MAX_CHOICES}.", param="n")
    return n


def refuse(model: str, names: Iterable[str], why: str = "") -> None:
    """400 naming the first option ``model`` cannot honour (never dropped silently)."""
    for name in names:
        raise InvalidRequest(
            f"{name!r} is not supported by model {model!r}{f': {why}' if why else ''}.",
            code="unsupported_parameter",
            param=name,
        )


class Backend(ABC):
    """A loaded model. ``start`` loads it, ``aclose`` releases it.

    Implementations raise ``BackendError``/``BackendTimeout`` when the model fails and
    ``ContextLengthExceeded`` when the prompt does not fit.
    """

    spec: SpecBase
    #: Tokens the model can attend to; None when unknown (remote engines).
    context_length: int | None = None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights or open connections."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what ``start`` acquired."""

    @abstractmethod
    async def check(self) -> None:
        """Return if the model can answer now; raise ``BackendError`` saying why not.

        Cheap and quick: readiness calls it every few seconds for every loaded arm.
        """

    @abstractmethod
    async def complete(self, params: ChatParams) -> Completion:
        """Answer in one piece."""

    @abstractmethod
    def stream(self, params: ChatParams) -> AsyncIterator[Delta]:
        """Answer piece by piece; the last ``Delta`` has ``finish_reason`` and ``usage``."""

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int | None:
        """Tokens the prompt takes, or None when the backend cannot tell before calling."""
        return None

    def with_defaults(self, params: ChatParams) -> ChatParams:
        """Fill what the request left out from the spec (Modelfile semantics)."""
        spec = self.spec
        messages = params.messages
        if spec.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": spec.system_prompt}, *messages]
        return ChatParams(
            messages=messages,
            max_tokens=params.max_tokens if params.max_tokens is not None else spec.max_tokens,
            temperature=params.temperature if params.temperature is not None else spec.temperature,
            top_p=params.top_p if params.top_p is not None else spec.top_p,
            stop=[*spec.stop, *(params.stop or [])] or None,
            seed=params.seed,
            options=params.options,
        )


def text_content(content: Any, *, model: str, param: str) -> str:
    """A message's ``content`` as plain text, for engines that take strings: text parts
    joined with newlines; a part of any other kind (an image, audio) is refused (400)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for i, part in enumerate(content):
        if part.get("type") != "text":
            raise InvalidRequest(
                f"Model {model!r} takes text only; {param}.{i} is a {part.get('type')!r} part.",
                code="unsupported_content",
                param=f"{param}.{i}",
            )
        texts.append(part.get("text") or "")
    return "\n".join(texts)
