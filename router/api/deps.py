"""Dependencies shared by the route modules; long-lived objects live on ``app.state``."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import Engine

from router.completions import ChatService
from router.config import Settings
from router.errors import Forbidden, Unauthorized
from router.inference_log.writer import LogWriter
from router.metrics import Metrics
from router.routes_table import RouteTable


def _service(request: Request) -> ChatService:
    return request.app.state.service


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _writer(request: Request) -> LogWriter:
    return request.app.state.writer


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def _routes(request: Request) -> RouteTable:
    return request.app.state.routes


ServiceDep = Annotated[ChatService, Depends(_service)]
SettingsDep = Annotated[Settings, Depends(_settings)]
EngineDep = Annotated[Engine, Depends(_engine)]
WriterDep = Annotated[LogWriter, Depends(_writer)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
RoutesDep = Annotated[RouteTable, Depends(_routes)]


def require_admin(
    settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Mutating admin calls need ``Authorization: Bearer <CANARY_ADMIN_TOKEN>``."""
    if settings.admin_token is None:
        raise Forbidden("The admin API is disabled: set CANARY_ADMIN_TOKEN to enable it.")
    if not authorization or not authorization.lower().startswith("bearer "):
        raise Unauthorized("Send the admin token as 'Authorization: Bearer <token>'.")
    if not secrets.compare_digest(authorization[7:], settings.admin_token.get_secret_value()):
        raise Forbidden("The admin token is wrong.")


AdminDep = Depends(require_admin)
