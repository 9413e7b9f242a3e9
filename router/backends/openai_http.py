"""Any OpenAI-compatible ``/v1/chat/completions`` engine: vLLM, llama-server, Ollama, ..."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import orjson
from pydantic import Field

from router.backends.base import Backend, ChatParams, Completion, Delta, SpecBase, Usage
from router.errors import BackendError, BackendTimeout, ContextLengthExceeded


class OpenAISpec(SpecBase):
    """A remote engine. The API key is read from the environment variable ``api_key_env``."""

    backend: Literal["openai"] = "openai"
    base_url: str = Field(description="e.g. http://127.0.0.1:8080/v1")
    remote_model: str = Field(description="The model id the engine expects.")
    api_key_env: str | None = None
    timeout_s: float = 120.0
    connect_timeout_s: float = 5.0
    check_timeout_s: float = Field(
        default=3.0, gt=0, description="The health check (GET {base_url}/models) waits this long."
    )
    max_connections: int = 100
    context_length: int | None = None


class OpenAIBackend(Backend):
    """Pooled HTTP/1.1 keep-alive connections; one client for the backend's lifetime."""

    spec: OpenAISpec

    def __init__(self, spec: OpenAISpec, *, transport: httpx.AsyncBaseTransport | None = None):
        self.spec = spec
        self.context_length = spec.context_length
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        # Absolute, parsed once: merging a relative URL into base_url costs ~35 us a call.
        self._url = httpx.URL(f"{spec.base_url.rstrip('/')}/chat/completions")

    async def start(self) -> None:
        headers = {"content-type": "application/json"}
        if self.spec.api_key_env:
            key = os.environ.get(self.spec.api_key_env)
            if not key:
                raise BackendError(f"environment variable {self.spec.api_key_env} is not set")
            headers["authorization"] = f"Bearer {key}"
        limits = httpx.Limits(
            max_connections=self.spec.max_connections,
            max_keepalive_connections=self.spec.max_connections,
        )
        self._client = httpx.AsyncClient(
            base_url=self.spec.base_url.rstrip("/"),
            headers=headers,
            limits=limits,
            timeout=httpx.Timeout(self.spec.timeout_s, connect=self.spec.connect_timeout_s),
            transport=self._transport,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def check(self) -> None:
        """``GET {base_url}/models``: answered by vLLM, llama-server, Ollama, TGI; no tokens."""
        try:
            response = await self.client.get("/models", timeout=self.spec.check_timeout_s)
        except httpx.TimeoutException as exc:
            raise BackendError(
                f"{self.spec.base_url} did not answer in {self.spec.check_timeout_s:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"{self.spec.base_url} unreachable: {exc!r}") from exc
        # 404 still proves a live engine (one without a model list); 5xx and refused
        # credentials mean requests would fail too.
        if response.status_code >= 500 or response.status_code in (401, 403):
            raise BackendError(f"{self.spec.base_url}/models answered HTTP {response.status_code}")

    def _body(self, params: ChatParams, stream: bool) -> bytes:
        p = self.with_defaults(params)
        body: dict[str, Any] = {
            "model": self.spec.remote_model,
            "messages": p.messages,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if p.stop:
            body["stop"] = p.stop
        if p.seed is not None:
            body["seed"] = p.seed
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise BackendError(f"backend {self.spec.name!r} is not started")
        return self._client

    def _raise_for_status(self, status: int, body: bytes) -> None:
        if status < 400:
            return
        try:
            error = orjson.loads(body).get("error") or {}
            message = error.get("message") if isinstance(error, dict) else str(error)
            code = error.get("code") if isinstance(error, dict) else None
        except (orjson.JSONDecodeError, AttributeError):
            message, code = body[:200].decode(errors="replace"), None
        if status == 400 and (code == "context_length_exceeded" or "context" in str(message)):
            raise ContextLengthExceeded(f"{self.spec.name}: {message}")
        raise BackendError(f"{self.spec.name} answered HTTP {status}: {message}")

    async def complete(self, params: ChatParams) -> Completion:
        try:
            response = await self.client.post(self._url, content=self._body(params, False))
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"{self.spec.name} timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"{self.spec.name} unreachable: {exc!r}") from exc
        self._raise_for_status(response.status_code, response.content)
        try:
            data = orjson.loads(response.content)
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return Completion(
                text=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason") or "stop",
                usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
            )
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"{self.spec.name} sent a malformed completion: {exc!r}") from exc

    async def stream(self, params: ChatParams) -> AsyncIterator[Delta]:
        finish, usage, pieces = "stop", None, 0
        try:
            request = self.client.build_request("POST", self._url, content=self._body(params, True))
            response = await self.client.send(request, stream=True)
            try:
                if response.status_code >= 400:
                    self._raise_for_status(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = orjson.loads(payload)
                    if chunk.get("usage"):
                        u = chunk["usage"]
                        usage = Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0))
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                        if text:
                            pieces += 1
                            yield Delta(text=text)
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"{self.spec.name} timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"{self.spec.name} unreachable: {exc!r}") from exc
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            raise BackendError(f"{self.spec.name} sent a malformed stream: {exc!r}") from exc
        # Engines that ignore include_usage: count pieces, the closest proxy for tokens.
        yield Delta(finish_reason=finish, usage=usage or Usage(0, pieces))
