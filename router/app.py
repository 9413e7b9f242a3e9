"""The app factory: builds long-lived objects in the lifespan and includes the routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from registry.bundled import resolve_gguf
from router.api import errors
from router.api.body_guard import BodyGuard
from router.api.chat_rows import ChatRows
from router.api.routes import (
    arena,
    audit,
    chat,
    dashboard,
    experiments,
    feedback,
    health,
    keys,
    models,
    votes,
)
from router.auth.admin_token import announce, ensure_admin_token
from router.auth.audit import Auditor
from router.auth.keys import KeyRing
from router.auth.limits import RateLimiter
from router.auth.principal import Gate
from router.completions import ChatService
from router.config import Settings
from router.engine_checks import EngineChecker
from router.evaluation.evaluator import Evaluator
from router.evaluation.webhook import Webhook
from router.inference_log.db import create_db_engine, migrate
from router.inference_log.writer import LogWriter
from router.metrics import Metrics
from router.readiness import DatabaseProbe, Readiness
from router.registry_source import RegistryArmSource
from router.routes_table import ArmSource, RouteTable, StaticArmSource

log = logging.getLogger(__name__)


def default_arm_source(settings: Settings) -> ArmSource:
    """The settings' routes when given, else the MLflow registry (MLflow's env convention)."""
    if settings.routes:
        return StaticArmSource(settings.routes)
    from registry.store import Registry

    return RegistryArmSource(
        Registry.from_env(settings.data_dir),
        challenger_weight=settings.challenger_weight,
        timeout_s=settings.registry_timeout_s,
    )


def create_app(settings: Settings, *, arm_source: ArmSource | None = None) -> FastAPI:
    """A router app for ``settings``; arms come from ``arm_source`` (default: the settings)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        admin_token, generated = ensure_admin_token(settings)
        if generated:
            announce(admin_token, settings)
        metrics = Metrics()
        engine = create_db_engine(settings.db_url)
        await run_in_threadpool(migrate, engine)
        key_ring = KeyRing(engine, refresh_s=settings.keys_refresh_s)
        await key_ring.load()
        refreshing_keys = asyncio.create_task(key_ring.run())
        limiter = RateLimiter(
            redis_url=settings.redis_url,
            default_rpm=settings.rate_limit_rpm,
            default_tpm=settings.rate_limit_tpm,
            metrics=metrics,
        )
        app.state.gate = Gate(mode=settings.auth_mode, admin_token=admin_token, keys=key_ring)
        app.state.limiter, app.state.auditor = limiter, Auditor(engine)
        writer = LogWriter(
            engine,
            metrics=metrics,
            journal_dir=settings.data_dir / "journal",
            queue_size=settings.log_queue_size,
            batch_size=settings.log_batch_size,
            flush_interval_s=settings.log_flush_interval_s,
            journal_max_bytes=settings.log_journal_max_bytes,
        )
        source = arm_source or default_arm_source(settings)
        routes = RouteTable(
            source, resolve_gguf=partial(resolve_gguf, models_dir=settings.data_dir / "models")
        )
        await writer.start()
        await routes.start()
        watcher = None
        if not isinstance(source, StaticArmSource):
            metrics.registry_up.set(1)  # start() just read it
            watcher = asyncio.create_task(
                routes.watch(settings.registry_poll_s, up=metrics.registry_up)
            )
        engines = EngineChecker(
            routes, metrics=metrics, interval_s=settings.engine_check_interval_s
        )
        checking = asyncio.create_task(engines.run())
        database = DatabaseProbe(engine)
        for route in routes:
            for arm, weight in route.weights.items():
                metrics.traffic_weight.labels(route.name, arm).set(weight)
        service = ChatService(
            routes=routes,
            writer=writer,
            metrics=metrics,
            settings=settings,
            spend=limiter.spend,
        )
        registry = source.registry if isinstance(source, RegistryArmSource) else None
        webhook = Webhook(settings.webhook_url) if settings.webhook_url else None
        evaluator = Evaluator(
            engine=engine, routes=routes, registry=registry, webhook=webhook, metrics=metrics
        )
        await evaluator.sync_routes()  # experiments already running set this process's splits
        evaluating = asyncio.create_task(evaluator.run(settings.evaluation_interval_s))
        app.state.settings, app.state.metrics, app.state.engine = settings, metrics, engine
        app.state.writer, app.state.routes, app.state.service = writer, routes, service
        app.state.evaluator = evaluator
        app.state.readiness = Readiness(
            routes=routes,
            writer=writer,
            database=database,
            engines=engines,
            draining=lambda: service.draining,
        )
        log.info(
            "router ready",
            extra={
                "routes": [r.name for r in routes],
                "auth": settings.auth_mode,
                "ui": f"http://{settings.host}:{settings.port}/ui" if settings.ui_enabled else None,
            },
        )
        try:
            yield
        finally:
            # Order matters: finish shadow calls, then drain the log, then free models.
            evaluating.cancel()
            checking.cancel()
            refreshing_keys.cancel()
            with contextlib.suppress(Exception):  # last uses: not worth failing shutdown
                await key_ring.flush()
            await limiter.aclose()
            await database.aclose()
            await evaluator.aclose()  # reports being logged to MLflow
            if webhook is not None:
                await webhook.aclose()
            if watcher is not None:
                watcher.cancel()
            await service.close()
            await writer.close()
            await routes.close()
            engine.dispose()
            log.info("router stopped; inference log flushed")

    app = FastAPI(
        title="canary-router",
        summary="OpenAI-compatible champion/challenger router with an inference log.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    modules = (chat, models, feedback, health, votes, experiments, arena, dashboard, keys, audit)
    for module in modules:
        app.include_router(module.router)
    if settings.ui_enabled:
        _mount_ui(app, settings)

    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        """A person who opens the router's address lands on the UI (or the API docs)."""
        return RedirectResponse("/ui/" if settings.ui_enabled else "/docs")

    app.add_middleware(
        BodyGuard, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    app.add_middleware(ChatRows)  # outermost of ours: it sees every chat response
    return app


async def drain(app: FastAPI, grace_s: float) -> None:
    """Shutdown's first step (``router.server``): requests in flight get ``grace_s`` to
    finish, then the rest are ended and logged as ``shutdown``."""
    service: ChatService | None = getattr(app.state, "service", None)
    if service is not None:  # None: the lifespan never started
        await service.drain(grace_s)


def _mount_ui(app: FastAPI, settings: Settings) -> None:
    """The Gradio UI at ``/ui``; it calls this router over HTTP like any other client."""
    from ui.client import RouterClient  # gradio loads only when the UI is served
    from ui.mount import mount_ui

    api_key = settings.ui_api_key.get_secret_value() if settings.ui_api_key else None
    mount_ui(app, RouterClient(settings.ui_router_url, api_key=api_key))
