"""The one settings class: env vars ``CANARY_*``, an optional YAML file, then defaults."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from router.backends import BackendSpec


def is_loopback(host: str) -> bool:
    """``host`` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RouteConfig(BaseModel):
    """One route (the ``model`` clients send): its arms and how traffic splits between them."""

    model_config = ConfigDict(extra="forbid")

    champion: BackendSpec
    challenger: BackendSpec | None = None
    challenger_weight: float = Field(default=10.0, ge=0, le=100, description="Percent of units.")
    salt: str | None = Field(default=None, description="Assignment salt; None: the route name.")
    experiment_id: str | None = None
    shadow: bool = Field(default=False, description="Challenger also answers, unseen.")


class TokenPrice(BaseModel):
    """USD per million tokens."""

    prompt: float = Field(default=0.0, ge=0)
    completion: float = Field(default=0.0, ge=0)


class Settings(BaseSettings):
    """Everything the router reads from its environment; other modules get values from here."""

    model_config = SettingsConfigDict(env_prefix="CANARY_", env_nested_delimiter="__")

    data_dir: Path = Path("data")
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CANARY_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="None: SQLite file canary.db in data_dir.",
    )
    host: str = "127.0.0.1"
    port: int = 8000

    routes: dict[str, RouteConfig] = Field(
        default_factory=dict,
        description="Arms given directly. Empty: every route comes from the MLflow registry.",
    )
    registry_poll_s: float = Field(default=5.0, gt=0, description="How often aliases are read.")
    challenger_weight: float = Field(
        default=10.0, ge=0, le=100, description="Percent of units for a registry @challenger."
    )
    evaluation_interval_s: float = Field(
        default=30.0, gt=0, description="How often running experiments are evaluated."
    )
    webhook_url: str | None = Field(
        default=None, description="Slack-compatible webhook that hears every decision."
    )
    allow_arm_override: bool = Field(default=False, description="Honour header X-Canary-Arm.")
    shadow_max_concurrency: int = Field(default=2, ge=1)
    request_timeout_s: float = Field(default=300.0, gt=0)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_tokens_limit: int = Field(default=8192, ge=1)
    token_prices: dict[str, TokenPrice] = Field(
        default_factory=dict, description="By model name, or name@version for one version."
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="None: generated on first start into data_dir/admin_token (mode 0600).",
    )

    # Who may call: client API keys, rate limits, votes (router.auth).
    auth: Literal["open", "keys"] | None = Field(
        default=None,
        description="open: no client key needed; keys: every client endpoint needs "
        "'Authorization: Bearer <key>'. None: open on a loopback host, keys otherwise.",
    )
    allow_open_auth_on_public_host: bool = Field(
        default=False,
        description="Let auth=open serve on a non-loopback host (refused otherwise).",
    )
    keys_refresh_s: float = Field(
        default=5.0, gt=0, description="How often keys (and revocations) are re-read."
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CANARY_REDIS_URL", "redis_url"),
        description="Rate-limit counters shared by every replica; None: in this process.",
    )
    rate_limit_rpm: int | None = Field(
        default=None, ge=1, description="Requests per minute of a key without its own."
    )
    rate_limit_tpm: int | None = Field(
        default=None, ge=1, description="Tokens per minute of a key without its own."
    )
    max_votes_per_voter: int = Field(
        default=200, ge=1, description="Votes one voter may cast per route and experiment."
    )
    ui_api_key: SecretStr | None = Field(
        default=None, description="The key the mounted UI calls the router with (keys mode)."
    )

    ui_enabled: bool = Field(default=True, description="Serve the Gradio UI at /ui.")
    ui_router_url: str | None = Field(
        default=None,
        description="The URL the mounted UI calls this router on; None: the address and "
        "port the UI page itself was served from (whatever port the server listens on).",
    )

    store_prompts: bool = Field(default=True, description="False: keep lengths and hashes only.")
    log_queue_size: int = Field(default=10_000, ge=1)
    log_batch_size: int = Field(default=500, ge=1)
    log_flush_interval_s: float = Field(default=0.25, gt=0)
    log_journal_max_bytes: int = Field(
        default=1 << 30,
        ge=1 << 20,
        description="Room for rows the database has not taken yet (the local journal); "
        "past it, rows can no longer be recorded and readiness answers 503.",
    )
    max_json_depth: int = Field(
        default=32, ge=4, description="Request bodies nested deeper get 400 invalid_json."
    )

    # Serving: connection hygiene and graceful shutdown (router.server).
    keepalive_timeout_s: float = Field(
        default=75.0,
        gt=0,
        description="Idle keep-alive connections stay open this long: longer than client "
        "pools keep them (httpx/openai 5 s, aiohttp 15 s, Node 4-5 s) and than load "
        "balancers' idle timeouts (AWS ALB 60 s), so the client always closes first.",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="A request's headers must arrive within this."
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request's body must arrive within this (408)."
    )
    max_connections: int = Field(
        default=2048, ge=1, description="Concurrent connections; past it, 503 at once."
    )
    shutdown_grace_s: float = Field(
        default=25.0,
        ge=0,
        description="On SIGTERM, open streams may finish for this long; then each ends "
        "with an SSE error event and its row is logged with status 'shutdown'.",
    )

    # Health: how readiness learns about engines and the registry.
    engine_check_interval_s: float = Field(
        default=10.0, gt=0, description="How often each champion's engine is checked."
    )
    registry_timeout_s: float = Field(
        default=5.0, gt=0, description="One registry read; slower counts as a failed read."
    )

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("database_url")
    @classmethod
    def _use_psycopg3(cls, url: str | None) -> str | None:
        """``postgres://`` and ``postgresql://`` mean psycopg 3, the driver we ship."""
        if url is None:
            return None
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def auth_mode(self) -> Literal["open", "keys"]:
        """``auth`` as set, else ``open`` on a loopback host and ``keys`` elsewhere."""
        if self.auth is not None:
            return self.auth
        return "open" if is_loopback(self.host) else "keys"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'canary.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config := os.environ.get("CANARY_CONFIG"):
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config))
        return tuple(sources)

    def price_for(self, model: str, version: str) -> TokenPrice | None:
        return self.token_prices.get(f"{model}@{version}") or self.token_prices.get(model)
