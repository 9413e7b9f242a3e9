"""Every error becomes OpenAI's error shape here, and only here."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.errors import CanaryError

log = logging.getLogger(__name__)
CHAT_PATH = "/v1/chat/completions"


def _respond(
    status: int, message: str, type_: str, code: str | None, request_id: str | None = None
) -> JSONResponse:
    headers = {"x-request-id": request_id} if request_id else None
    return JSONResponse(
        {"error": {"message": message, "type": type_, "code": code}},
        status_code=status,
        headers=headers,
    )


def _describe(errors: list[Any]) -> tuple[str, str]:
    """One readable sentence naming each bad field, e.g. ``messages.0.role: Input should be``."""
    parts = []
    for err in errors:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx", {}).get("error", "")
            return f"The request body is not valid JSON: {ctx}".strip(), "invalid_json"
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        if loc == "body" and err.get("type") == "model_attributes_type":
            return (
                "The request body must be a JSON object, sent with "
                "'Content-Type: application/json'.",
                "invalid_body",
            )
        parts.append(f"{loc}: {err.get('msg')}")
    return "Invalid request: " + "; ".join(parts), "invalid_request"


def _log_if_chat(request: Request, status: int, message: str, code: str, body: Any) -> None:
    """Refused chat requests still get their inference row (every request is logged)."""
    if request.url.path != CHAT_PATH or getattr(request.state, "in_service", False):
        return
    route = ""
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        route = body["model"][:200]
    elif isinstance(body, bytes | str):
        try:
            route = str(orjson.loads(body).get("model", ""))[:200]
        except (orjson.JSONDecodeError, AttributeError):
            route = ""
    request.app.state.service.log_rejected(route, message, status, code)


def install(app: FastAPI) -> None:
    @app.exception_handler(CanaryError)
    async def canary_error(request: Request, exc: CanaryError) -> JSONResponse:
        _log_if_chat(request, exc.status_code, exc.message, exc.code or exc.type, None)
        return _respond(exc.status_code, exc.message, exc.type, exc.code, exc.request_id)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, code = _describe(list(exc.errors()))
        status = 400 if code == "invalid_json" else 422
        _log_if_chat(request, status, message, code, exc.body)
        return _respond(status, message, "invalid_request_error", code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, CanaryError):
            # FastAPI turns errors raised while reading the body (BodyLimit's 413) into
            # a 400 "error parsing the body"; answer with ours instead.
            return await canary_error(request, exc.__cause__)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _respond(exc.status_code, str(exc.detail), "invalid_request_error", code)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return _respond(500, "Internal error; this is a bug.", "server_error", "internal_error")
