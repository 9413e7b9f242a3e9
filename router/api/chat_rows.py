"""The one place that guarantees every chat request its inference row.

The chat service logs every request it takes on (``request.state.in_service``); a
request refused before that (bad JSON, bad fields, 405, 408, 413, an abandoned body, a
bug) is logged here, when its response is sent, with the status, code and message the
client got. Pure ASGI: on the hot path it only reads one flag per response.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.inference_log.record import DISCONNECTED

CHAT_PATH = "/v1/chat/completions"
_REJECTED = "rejected"
#: ``"model": "..."`` in a body too broken (or too short) to parse.
_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.){0,200})"')


class ChatRows:
    """Logs a row for each chat response the service did not log itself."""

    def __init__(self, app: ASGIApp, *, path: str = CHAT_PATH) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})  # shared with request.state
        body: list[bytes] = []  # what the client sent, to name the route of a refusal
        status = 0
        reply: list[bytes] | None = None  # the response body, kept only when the row is ours
        logged = False

        async def tee() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
            return message

        def log(http_status: int, error: bytes) -> None:
            nonlocal logged
            logged = True
            message, code = _error_of(error, http_status)
            service = scope["app"].state.service
            route = _route_of(b"".join(body))
            row_status = DISCONNECTED if http_status == 499 else _REJECTED
            principal = state.get("principal")  # set once the caller was authenticated
            key_id = principal.key_id if principal is not None else None
            service.log_rejected(
                route, message, http_status, code, status=row_status, key_id=key_id
            )

        async def watch(message: Message) -> None:
            nonlocal status, reply
            if message["type"] == "http.response.start":
                status = message["status"]
                if not state.get("in_service"):
                    reply = []
            elif message["type"] == "http.response.body" and reply is not None and not logged:
                reply.append(message.get("body", b""))
                if not message.get("more_body", False):
                    log(status, b"".join(reply))
            await send(message)

        try:
            await self.app(scope, tee, watch)
        except BaseException:
            # An unhandled error: ServerErrorMiddleware, outside us, answers 500.
            if not logged and not state.get("in_service"):
                log(500 if status == 0 else status, b"")
            raise


def _error_of(reply: bytes, status: int) -> tuple[str, str]:
    """The message and code of an OpenAI-shaped error body (a fallback for anything else)."""
    try:
        error = orjson.loads(reply)["error"]
        return str(error["message"]), str(error.get("code") or error.get("type"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"HTTP {status}", "internal_error" if status >= 500 else "http_error"


def _route_of(body: bytes) -> str:
    """The ``model`` the client asked for, if its body says so (as sent: the writer
    escapes what a database cannot store)."""
    try:
        value = json.loads(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return _model_in_fragment(body)
    model = value.get("model") if isinstance(value, dict) else None
    return model[:200] if isinstance(model, str) else ""


def _model_in_fragment(body: bytes) -> str:
    """Best effort for a half-sent or malformed body: the first ``"model"`` string."""
    match = _MODEL.search(body)
    if match is None:
        return ""
    try:
        model = json.loads(b'"' + match.group(1) + b'"')
    except ValueError:
        return ""
    return str(model)
