"""Every error becomes OpenAI's error shape here, and only here.

The shape is ``{"error": {"message", "type", "code", "param"}}``. Losing the database's
connection (server down, restarting, network) is not a bug: it becomes
``DatabaseUnavailable`` (503 with ``Retry-After``); any other database error is a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.errors import CanaryError, DatabaseUnavailable

log = logging.getLogger(__name__)


def _respond(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    *,
    param: str | None = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    out = dict(headers or {})
    if request_id:
        out["x-request-id"] = request_id
    return JSONResponse(
        {"error": {"message": message, "type": type_, "code": code, "param": param}},
        status_code=status,
        headers=out or None,
    )


def _describe(errors: list[Any]) -> tuple[str, str, str | None]:
    """One readable sentence naming each bad field (``messages.0.role: Input should be``),
    its code and the first bad field (OpenAI's ``param``)."""
    parts, params = [], []
    for err in errors:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx", {}).get("error", "")
            return f"The request body is not valid JSON: {ctx}".strip(), "invalid_json", None
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        if loc == "body" and err.get("type") == "model_attributes_type":
            return (
                "The request body must be a JSON object, sent with "
                "'Content-Type: application/json'.",
                "invalid_body",
                None,
            )
        parts.append(f"{loc}: {err.get('msg')}")
        params.append(loc)
    return "Invalid request: " + "; ".join(parts), "invalid_request", params[0] if params else None


def database_unavailable(exc: SQLAlchemyError) -> DatabaseUnavailable | None:
    """The 503 for an error that means "no connection to the database", else None.

    psycopg 3 raises ``OperationalError`` both when it cannot connect and when the
    server closes a connection mid-query (SQLAlchemy then sets ``connection_invalidated``);
    ``InterfaceError`` is a connection already closed; a full pool times out.
    """
    lost = isinstance(exc, OperationalError | InterfaceError | PoolTimeout) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
    if not lost:
        return None
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
    return DatabaseUnavailable(f"The database is unavailable ({reason}); retry later.")


def install(app: FastAPI) -> None:
    @app.exception_handler(CanaryError)
    async def canary_error(request: Request, exc: CanaryError) -> JSONResponse:
        return _respond(
            exc.status_code,
            exc.message,
            exc.type,
            exc.code,
            param=exc.param,
            request_id=exc.request_id,
            headers=exc.headers,
        )

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        unavailable = database_unavailable(exc)
        if unavailable is None:
            return await bug(request, exc)
        log.warning("database unavailable", extra={"path": request.url.path, "error": str(exc)})
        return await canary_error(request, unavailable)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # 400, as OpenAI answers an invalid request (FastAPI's default is 422).
        message, code, param = _describe(list(exc.errors()))
        return _respond(400, message, "invalid_request_error", code, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, CanaryError):
            # FastAPI turns errors raised while reading the body (BodyGuard's 413/408/499,
            # the JSON checks' 400) into a 400 "error parsing the body"; answer with ours.
            return await canary_error(request, exc.__cause__)
        code = {
            404: "not_found",
            405: "method_not_allowed",
            415: "unsupported_media_type",
        }.get(exc.status_code, "http_error")
        return _respond(
            exc.status_code,
            str(exc.detail),
            "invalid_request_error",
            code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path}, exc_info=exc)
        return _respond(500, "Internal error; this is a bug.", "server_error", "internal_error")
