"""A deterministic fake model for tests, benchmarks and simulations. Never a default."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import Field

from router.backends.base import Backend, ChatParams, Completion, Delta, SpecBase, Usage
from router.errors import BackendError, ContextLengthExceeded


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


class FakeBackend(Backend):
    """Words are tokens. Failures follow a seeded sequence, so a run repeats exactly."""

    spec: FakeSpec

    def __init__(self, spec: FakeSpec) -> None:
        self.spec = spec
        self.context_length = spec.context_length
        self._rng = random.Random(spec.seed)
        self.calls = 0

    async def check(self) -> None:
        # Only a fake told to fail every call is down; drawing from the seeded sequence
        # here would shift which requests fail.
        if self.spec.error_rate >= 1:
            raise BackendError(f"fake backend {self.spec.name!r} fails every call (error_rate)")

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"].split()) + 1 for m in messages)

    def _answer(self, params: ChatParams) -> tuple[list[str], str, Usage]:
        self.calls += 1
        if self._rng.random() < self.spec.error_rate:
            raise BackendError(f"fake backend {self.spec.name!r} failed (error_rate)")
        prompt_tokens = self.count_prompt_tokens(params.messages)
        if prompt_tokens > self.spec.context_length:
            raise ContextLengthExceeded(
                f"prompt has {prompt_tokens} tokens; the model's context is "
                f"{self.spec.context_length}"
            )
        if self.spec.mode == "echo":
            last_user = [m["content"] for m in params.messages if m["role"] == "user"]
            words = (last_user[-1] if last_user else "").split()
        else:
            words = self.spec.text.split()
        limit = params.max_tokens or self.spec.max_tokens
        finish = "length" if len(words) > limit else "stop"
        words = words[:limit]
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        return pieces, finish, Usage(prompt_tokens, len(pieces))

    async def complete(self, params: ChatParams) -> Completion:
        pieces, finish, usage = self._answer(params)
        delay = self.spec.latency_ms / 1000
        if self.spec.tokens_per_s:
            delay += len(pieces) / self.spec.tokens_per_s
        if delay:
            await asyncio.sleep(delay)
        return Completion("".join(pieces), finish, usage)

    async def stream(self, params: ChatParams) -> AsyncIterator[Delta]:
        pieces, finish, usage = self._answer(params)
        if self.spec.latency_ms:
            await asyncio.sleep(self.spec.latency_ms / 1000)
        start = time.perf_counter()
        for i, piece in enumerate(pieces):
            if self.spec.tokens_per_s:
                # Pace against the start so sleeps do not accumulate drift.
                due = start + i / self.spec.tokens_per_s - time.perf_counter()
                if due > 0:
                    await asyncio.sleep(due)
            yield Delta(text=piece)
        yield Delta(finish_reason=finish, usage=usage)
