"""The one interface every model backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


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


@dataclass(slots=True)
class ChatParams:
    """One chat request as a backend sees it (already validated)."""

    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class Completion:
    """A whole answer."""

    text: str
    finish_reason: str
    usage: Usage
    queue_wait_ms: float = 0.0


@dataclass(slots=True)
class Delta:
    """One piece of a streamed answer; the last one carries ``finish_reason`` and ``usage``."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    queue_wait_ms: float | None = None


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
        )
