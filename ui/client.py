"""``RouterClient``: the one place the UI speaks HTTP to the router.

Everything the UI shows or does goes through the router's public API, so a program can
do the same. Client calls send the UI's API key (``canary ui --api-key``) when it has
one; admin calls send the admin token they are given. Error responses become
:class:`RouterError` carrying the router's own readable message (a missing or invalid
API key gets what to do about it instead); a router that cannot be reached becomes
:class:`RouterUnreachable`.

::

    RouterError              the router answered with an error (status, code, message)
    └── RouterUnreachable    no answer at all: connection refused, DNS, timeout

Streams (chat and arena) are parsed from server-sent events into small event objects;
an answer's tool calls come as :class:`ToolCallDelta` while they stream (chat) and with
its :class:`StreamDone`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource, SSEError

__all__ = [
    "BattleStarted",
    "ChatStarted",
    "RouterClient",
    "RouterError",
    "RouterUnreachable",
    "StreamDone",
    "StreamFailed",
    "TextDelta",
    "ToolCallDelta",
]

#: What a person should do when the router wants an API key from the UI.
API_KEY_HINT = (
    "This router requires an API key: start the UI with `canary ui --api-key KEY` or set "
    "CANARY_UI_API_KEY (an admin makes keys with `canary keys create NAME`)."
)
#: The router's 401 codes for a client call without a usable API key.
_API_KEY_CODES = ("missing_api_key", "invalid_api_key")


class RouterError(Exception):
    """The router refused or failed a call; ``message`` is meant for a person."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    @property
    def unauthorised(self) -> bool:
        """401 or 403: no token or key, a wrong or revoked one, or the admin API off."""
        return self.status in (401, 403)


class RouterUnreachable(RouterError):
    """No HTTP answer came back from the router."""


@dataclass(frozen=True, slots=True)
class ChatStarted:
    """First event of a chat stream: the logged request and, for debugging, who answers."""

    request_id: str
    arm: str
    model_version: str


@dataclass(frozen=True, slots=True)
class BattleStarted:
    """First event of an arena stream."""

    battle_id: str
    route: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of an answer; ``side`` is ``a``/``b`` in the arena, ``None`` in chat."""

    text: str
    side: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of the answer's tool calls arrived; ``calls`` is every tool call so far in
    OpenAI's shape (``{"id", "type", "function": {"name", "arguments"}}``), its pieces
    merged: ``arguments`` (JSON text) grows as they come."""

    calls: tuple[dict[str, Any], ...]
    side: str | None = None


@dataclass(frozen=True, slots=True)
class StreamDone:
    """An answer finished normally; ``tool_calls`` are the calls it made, in OpenAI's
    shape (in the arena without ``id``)."""

    finish_reason: str | None
    side: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """An answer stopped with an error; ``message`` is the router's."""

    message: str
    side: str | None = None


ChatEvent = ChatStarted | TextDelta | ToolCallDelta | StreamDone | StreamFailed
ArenaEvent = BattleStarted | TextDelta | StreamDone | StreamFailed


class _ToolCalls:
    """A streamed answer's tool calls, merged from ``delta.tool_calls`` pieces by index
    (id, type and name come once, arguments in pieces), as the router merges them."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, pieces: Any) -> bool:
        """Merge one delta's pieces; whether there were any."""
        if not isinstance(pieces, list) or not pieces:
            return False
        for piece in pieces:
            if not isinstance(piece, dict):
                continue
            index = piece.get("index")
            call = self._calls.setdefault(
                index if isinstance(index, int) else len(self._calls),
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            for key in ("id", "type"):
                if piece.get(key):
                    call[key] = piece[key]
            function = piece.get("function") or {}
            if function.get("name"):
                call["function"]["name"] = function["name"]
            call["function"]["arguments"] += function.get("arguments") or ""
        return True

    def snapshot(self) -> tuple[dict[str, Any], ...]:
        """The calls so far, in index order (copies: later pieces do not change them)."""
        return tuple(
            {**call, "function": dict(call["function"])} for _, call in sorted(self._calls.items())
        )


def _error_message(response: httpx.Response) -> tuple[str, str | None]:
    """The router's ``{"error": {"message", "code"}}``, or a sentence about the status."""
    try:
        error = response.json().get("error") or {}
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"]), error.get("code")
    except (ValueError, AttributeError):
        pass
    reason = response.reason_phrase or "error"
    return f"The router answered {response.status_code} {reason}.", None


def _router_error(response: httpx.Response) -> RouterError:
    """The error response as a :class:`RouterError` for a person: the router's message,
    or, when the UI's API key is missing or not valid, how to give it one."""
    message, code = _error_message(response)
    if response.status_code == 401 and code in _API_KEY_CODES:
        message = API_KEY_HINT if code == "missing_api_key" else f"{message} {API_KEY_HINT}"
    return RouterError(message, status=response.status_code, code=code)


def _action_body(force: bool, reason: str | None) -> dict[str, Any] | None:
    """The optional ``{"force", "reason"}`` of an admin action; None when neither is set."""
    body: dict[str, Any] = {}
    if force:
        body["force"] = True
    if reason and reason.strip():
        body["reason"] = reason.strip()
    return body or None


class RouterClient:
    """Async client of one router's HTTP API.

    ``base_url`` may be ``None`` when the UI is mounted in the router itself and learns
    the address it is served on from its first request (:meth:`follow`). ``api_key`` is
    sent with every client call (the router needs one in ``auth=keys`` mode).
    """

    def __init__(
        self,
        base_url: str | None,
        *,
        admin_token: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 330.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        #: Pre-set admin token (``canary ui --admin-token``): the UI starts signed in.
        self.admin_token = admin_token
        #: The client API key sent with every call that is not an admin call.
        self.api_key = api_key or None
        # Connecting is quick or never; a model may take minutes to answer.
        self._timeout = httpx.Timeout(timeout_s, connect=5.0)
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def follow(self, base_url: str) -> None:
        """Set the router's address unless one was given (used by the in-process mount)."""
        if self.base_url is None:
            self.base_url = base_url.rstrip("/")

    def _client(self) -> httpx.AsyncClient:
        # A connection pool belongs to the event loop it was opened on.
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            self._http = httpx.AsyncClient(timeout=self._timeout, transport=self._transport)
            self._loop = loop
        return self._http

    async def aclose(self) -> None:
        """Close the connection pool (if it was opened on this loop)."""
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = None

    def _url(self, path: str) -> str:
        if self.base_url is None:
            raise RouterUnreachable("The UI does not know the router's address yet.")
        return f"{self.base_url}{path}"

    def _unreachable(self, exc: httpx.HTTPError) -> RouterUnreachable:
        if isinstance(exc, httpx.TimeoutException):
            return RouterUnreachable(f"The router at {self.base_url} did not answer in time.")
        return RouterUnreachable(f"The router is unreachable at {self.base_url}.")

    def _headers(self, *, admin: bool = False, token: str | None = None) -> dict[str, str]:
        """The one place headers are made: an admin call sends the admin ``token`` it was
        given (and nothing without one: the router then says it is missing), any other
        call the API key, when the UI has one."""
        credential = token if admin else self.api_key
        return {"authorization": f"Bearer {credential}"} if credential else {}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        admin: bool = False,
        token: str | None = None,
    ) -> httpx.Response:
        """One call; ``admin`` calls send ``token``, the others the API key."""
        headers = self._headers(admin=admin, token=token)
        try:
            response = await self._client().request(
                method, self._url(path), json=json, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise _router_error(response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self._request(method, path, **kwargs)).json()

    async def _events(
        self, path: str, body: dict[str, Any]
    ) -> AsyncIterator[tuple[httpx.Response, Any]]:
        """POST ``body`` and yield ``(response, event)``, the JSON of each server-sent
        event's data, until ``[DONE]``."""
        try:
            async with self._client().stream(
                "POST", self._url(path), json=body, headers=self._headers()
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _router_error(response)
                async for event in EventSource(response).aiter_sse():
                    if event.data == "[DONE]":
                        return
                    if event.data:
                        yield response, orjson.loads(event.data)
        except SSEError as exc:  # an httpx.HTTPError, but the router did answer
            raise RouterError("The router did not answer with an event stream.") from exc
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    # -- routes and chat ---------------------------------------------------------------

    async def routes(self) -> list[dict[str, Any]]:
        """``GET /v1/routes``: every route with its arms and live split."""
        return list(await self._json("GET", "/v1/routes"))

    async def chat_stream(
        self,
        route: str,
        messages: Sequence[Mapping[str, str]],
        *,
        user: str | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[ChatEvent]:
        """Stream a chat completion: :class:`ChatStarted`, deltas, then done or failed."""
        body: dict[str, Any] = {"model": route, "messages": list(messages), "stream": True}
        if user:
            body["user"] = user
        if max_tokens:
            body["max_tokens"] = max_tokens
        started = False
        calls = _ToolCalls()
        async for response, event in self._events("/v1/chat/completions", body):
            if not started:
                started = True
                yield ChatStarted(
                    request_id=response.headers.get("x-request-id", ""),
                    arm=response.headers.get("x-canary-arm", ""),
                    model_version=response.headers.get("x-canary-model-version", ""),
                )
            if "error" in event:
                yield StreamFailed(str((event["error"] or {}).get("message", "stream failed")))
                return
            for choice in event.get("choices") or ():
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if text:
                    yield TextDelta(text)
                if calls.add(delta.get("tool_calls")):
                    yield ToolCallDelta(calls.snapshot())
                if choice.get("finish_reason"):
                    yield StreamDone(choice["finish_reason"], tool_calls=calls.snapshot())

    async def feedback(
        self,
        request_id: str,
        value: str,
        *,
        comment: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/feedback``: thumbs ``up``/``down`` on a logged answer."""
        body: dict[str, Any] = {"request_id": request_id, "value": value}
        if comment:
            body["comment"] = comment
        if user:
            body["user"] = user
        return dict(await self._json("POST", "/v1/feedback", json=body))

    async def request(self, request_id: str) -> dict[str, Any]:
        """``GET /v1/requests/{id}``: the logged row with its feedback."""
        return dict(await self._json("GET", f"/v1/requests/{request_id}"))

    # -- arena -------------------------------------------------------------------------

    async def battle_stream(
        self, route: str, messages: Sequence[Mapping[str, str]], *, user: str | None = None
    ) -> AsyncIterator[ArenaEvent]:
        """Stream a blind battle: :class:`BattleStarted`, then both sides' events."""
        body: dict[str, Any] = {"route": route, "messages": list(messages), "stream": True}
        if user:
            body["user"] = user
        async for event in self._arena_events("/v1/arena/battles", body, route):
            yield event

    async def follow_up_stream(
        self, battle_id: str, content: str, *, route: str
    ) -> AsyncIterator[ArenaEvent]:
        """Stream a battle's next turn (``POST /v1/arena/battles/{id}/turns``): each side
        answers ``content`` in its own conversation; the same events as a battle."""
        body = {"content": content, "stream": True}
        async for event in self._arena_events(f"/v1/arena/battles/{battle_id}/turns", body, route):
            yield event

    async def _arena_events(
        self, path: str, body: dict[str, Any], route: str
    ) -> AsyncIterator[ArenaEvent]:
        async for _, event in self._events(path, body):
            kind, side = event.get("type"), event.get("side")
            if kind == "battle":
                yield BattleStarted(battle_id=event["battle_id"], route=event.get("route", route))
            elif kind == "delta" and event.get("content"):
                yield TextDelta(event["content"], side=side)
            elif kind == "done":
                calls = tuple(event.get("tool_calls") or ())
                yield StreamDone(event.get("finish_reason"), side=side, tool_calls=calls)
            elif kind == "error":
                yield StreamFailed(str(event.get("message", "this side failed")), side=side)
            elif "error" in event:  # a failure of the whole stream, in OpenAI's shape
                message = str((event["error"] or {}).get("message", "the battle failed"))
                raise RouterError(message)

    async def vote(self, battle_id: str, winner: str, *, user: str | None = None) -> dict[str, Any]:
        """``POST /v1/arena/battles/{id}/vote``: store the vote; the answer reveals the arms."""
        body: dict[str, Any] = {"winner": winner}
        if user:
            body["user"] = user
        return dict(await self._json("POST", f"/v1/arena/battles/{battle_id}/vote", json=body))

    async def battle(self, battle_id: str) -> dict[str, Any]:
        """``GET /v1/arena/battles/{id}``."""
        return dict(await self._json("GET", f"/v1/arena/battles/{battle_id}"))

    # -- dashboard ---------------------------------------------------------------------

    async def dashboard(
        self, route: str, *, bucket_s: int = 60, window_s: int = 3600
    ) -> dict[str, Any]:
        """``GET /v1/routes/{route}/dashboard``: per-arm figures and their timeline."""
        params = {"bucket_s": bucket_s, "window_s": window_s}
        return dict(await self._json("GET", f"/v1/routes/{route}/dashboard", params=params))

    async def dashboard_csv(self, route: str, *, bucket_s: int = 60, window_s: int = 3600) -> str:
        """``GET /v1/routes/{route}/dashboard.csv``: the same figures as CSV."""
        params = {"bucket_s": bucket_s, "window_s": window_s}
        return (await self._request("GET", f"/v1/routes/{route}/dashboard.csv", params=params)).text

    # -- experiments -------------------------------------------------------------------

    async def experiments(self) -> list[dict[str, Any]]:
        """``GET /v1/experiments``, newest first."""
        return list(await self._json("GET", "/v1/experiments"))

    async def experiment(self, experiment_id: str) -> dict[str, Any]:
        """``GET /v1/experiments/{id}``: status, stage, weights and a fresh analysis."""
        return dict(await self._json("GET", f"/v1/experiments/{experiment_id}"))

    async def decisions(self, experiment_id: str) -> list[dict[str, Any]]:
        """``GET /v1/experiments/{id}/decisions``, oldest first."""
        return list(await self._json("GET", f"/v1/experiments/{experiment_id}/decisions"))

    async def report_html(self, experiment_id: str) -> str:
        """``GET /v1/experiments/{id}/report``: the self-contained HTML report."""
        return (await self._request("GET", f"/v1/experiments/{experiment_id}/report")).text

    async def start_experiment(
        self,
        route: str,
        *,
        token: str | None,
        stages: Sequence[float] | None = None,
        auto: bool | None = None,
        force: bool = False,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/experiments`` (admin). ``force`` starts one for a challenger version
        that was rolled back or ended inconclusive before (409 ``version_rejected``
        without it); ``reason`` is recorded with the start."""
        body: dict[str, Any] = {"route": route}
        if stages:
            body["stages"] = list(stages)
        if auto is not None:
            body["policy"] = {"auto": auto}
        body.update(_action_body(force, reason) or {})
        return dict(await self._json("POST", "/v1/experiments", json=body, admin=True, token=token))

    async def act(
        self,
        experiment_id: str,
        action: str,
        *,
        token: str | None,
        force: bool = False,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/experiments/{id}/{action}`` (admin): evaluate, promote, rollback,
        advance, pause or resume; the answer is the decision recorded.

        ``force`` promotes although the data do not back it (409
        ``promotion_not_supported_by_data`` without it); ``reason`` is recorded with the
        decision. ``evaluate`` asks the policy and takes neither.
        """
        path = f"/v1/experiments/{experiment_id}/{action}"
        body = None if action == "evaluate" else _action_body(force, reason)
        return dict(await self._json("POST", path, json=body, admin=True, token=token))

    async def check_admin_token(self, token: str) -> None:
        """Raise :class:`RouterError` (``unauthorised``) unless the router accepts ``token``.

        Reads one entry of the audit log, an admin read: it changes nothing and, unlike
        an admin action, is not itself audited (a refused attempt is).
        """
        await self._request("GET", "/v1/audit", params={"limit": 1}, admin=True, token=token)
