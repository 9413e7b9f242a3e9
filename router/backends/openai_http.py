"""Any OpenAI-compatible ``/v1/chat/completions`` engine: vLLM, llama-server, Ollama, ..."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import orjson
from httpx_sse import EventSource, SSEError
from pydantic import Field

from router.backends.base import Backend, ChatParams, Completion, Delta, SpecBase, Usage
from router.errors import BackendError, BackendTimeout, ContextLengthExceeded, InvalidRequest

#: Body fields the backend sets itself; a client's ``options`` never override them.
_OWN_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})
#: Engine statuses that blame a field of the request (the client's to fix). Any other
#: 4xx (401/403: our key; 404: our ``remote_model``; 429: the engine is busy) is the
#: arm's failure, like a 5xx.
_CLIENT_STATUSES = frozenset({400, 413, 422})
#: Message keys that a plain text answer has; anything else set makes it not plain.
_PLAIN_MESSAGE_KEYS = frozenset({"role", "content"})
#: Delta keys that are not relayed in ``Delta.fields``.
_NOT_FIELDS = frozenset({"content", "role"})


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
        """The engine's request: the router's own fields, then every option the client
        sent, unchanged (``tools``, ``response_format``, ``logprobs``, ``n``, unknown
        ``extra_body`` fields, ...): the engine, not the router, judges them."""
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
        for name, value in p.options.items():
            if name not in _OWN_FIELDS:
                body[name] = value
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
        """An engine's error status as ours: a prompt too long and a 400/413/422 about a
        field are the client's (400, with the engine's message and ``param``); anything
        else is the arm's failure (``BackendError``, 502)."""
        if status < 400:
            return
        message, code, param = _engine_error(body)
        if status == 400 and (code == "context_length_exceeded" or "context" in message):
            raise ContextLengthExceeded(f"{self.spec.name}: {message}")
        if status in _CLIENT_STATUSES:
            raise InvalidRequest(
                message or f"{self.spec.name} refused the request (HTTP {status})",
                code=code if isinstance(code, str) and code else None,
                param=param,
            )
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
            if "choices" not in data and _is_error(data):
                raise BackendError(f"{self.spec.name} failed: {_engine_error(data)[0]}")
            choices = data["choices"]
            first = choices[0]
            message = first["message"]
            usage = data.get("usage") or {}
            content = message.get("content")
            return Completion(
                text=content if isinstance(content, str) else "",
                finish_reason=first.get("finish_reason") or "stop",
                usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
                choices=None if _plain(choices) else choices,
            )
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendError(f"{self.spec.name} sent a malformed completion: {exc!r}") from exc

    async def stream(self, params: ChatParams) -> AsyncIterator[Delta]:
        """The engine's chunks as ``Delta``s, choice by choice (``index``), with tool call
        pieces, refusals and logprobs; the last ``Delta`` carries choice 0's finish reason
        and the usage. An engine's error event, or a stream that stops before any choice
        finished and without ``[DONE]`` (a cut connection), raises ``BackendError``."""
        # Choice 0's finish is held back for the last Delta, which carries the usage.
        finish: str | None = None
        usage: Usage | None = None
        pieces, finished, done, answering = 0, False, False, False
        try:
            request = self.client.build_request("POST", self._url, content=self._body(params, True))
            response = await self.client.send(request, stream=True)
            try:
                if response.status_code >= 400:
                    self._raise_for_status(response.status_code, await response.aread())
                answering = True
                async for event in EventSource(response).aiter_sse():
                    if event.data == "[DONE]":
                        done = True
                        break
                    if event.event == "error":
                        why = _engine_error(event.data.encode())[0]
                        raise BackendError(f"{self.spec.name} failed mid-stream: {why}")
                    if not event.data:
                        continue
                    chunk = orjson.loads(event.data)
                    if _is_error(chunk):
                        why = _engine_error(chunk)[0]
                        raise BackendError(f"{self.spec.name} failed mid-stream: {why}")
                    if u := chunk.get("usage"):
                        usage = Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0))
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        index = choice.get("index") or 0
                        text = delta.get("content") or ""
                        fields = {
                            k: v
                            for k, v in delta.items()
                            if k not in _NOT_FIELDS and v not in (None, "", [], {})
                        } or None
                        logprobs = choice.get("logprobs") or None
                        reason = choice.get("finish_reason") or None
                        if reason:
                            finished = True
                            if index == 0:
                                finish, reason = reason, None
                        if not (text or fields or logprobs or reason):
                            continue
                        if text or fields:
                            pieces += 1
                        yield Delta(
                            text=text,
                            finish_reason=reason,
                            index=index,
                            fields=fields,
                            logprobs=logprobs,
                        )
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"{self.spec.name} timed out: {exc!r}") from exc
        except SSEError as exc:  # an httpx.TransportError: caught first
            raise BackendError(f"{self.spec.name} did not stream events: {exc}") from exc
        except httpx.HTTPError as exc:
            if answering:
                raise BackendError(f"{self.spec.name}: the stream broke off: {exc!r}") from exc
            raise BackendError(f"{self.spec.name} unreachable: {exc!r}") from exc
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            raise BackendError(f"{self.spec.name} sent a malformed stream: {exc!r}") from exc
        if not (done or finished):
            raise BackendError(f"{self.spec.name}: the stream ended before the answer finished")
        # Engines that ignore include_usage: count pieces, the closest proxy for tokens.
        yield Delta(finish_reason=finish or "stop", usage=usage or Usage(0, pieces))


def _plain(choices: list[dict[str, Any]]) -> bool:
    """One choice of plain text: nothing the client would lose if only its text went on
    (no tool calls, refusal, reasoning, audio, logprobs, ...)."""
    if len(choices) != 1 or choices[0].get("logprobs"):
        return False
    message = choices[0]["message"]
    return not any(v for k, v in message.items() if k not in _PLAIN_MESSAGE_KEYS)


def _is_error(chunk: Any) -> bool:
    """An engine's error in place of a chunk: ``{"error": {...}}`` (OpenAI, vLLM, Ollama,
    llama-server) or vLLM's older ``{"object": "error", "message": ...}``."""
    return isinstance(chunk, dict) and (bool(chunk.get("error")) or chunk.get("object") == "error")


def _engine_error(body: bytes | dict[str, Any]) -> tuple[str, Any, str | None]:
    """``(message, code, param)`` of an engine's error body, in any of the shapes engines
    send (``{"error": {...}}``, ``{"error": "..."}``, vLLM's older flat object, text)."""
    data: Any = body
    if isinstance(body, bytes):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body[:200].decode(errors="replace"), None, None
    if not isinstance(data, dict):
        return str(data)[:200], None, None
    error = data.get("error") if data.get("error") else data
    if not isinstance(error, dict):
        return str(error), None, None
    param = error.get("param")
    return (
        str(error.get("message") or ""),
        error.get("code"),
        param if isinstance(param, str) else None,
    )
