"""Tables of client API keys and of the admin audit trail."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, DateTime, Index, Text
from sqlmodel import Field, SQLModel


class ApiKey(SQLModel, table=True):
    """A client's virtual key. The key itself is never stored: only its SHA-256, which
    is enough for a random 256-bit secret (nothing to brute-force, unlike a password)."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    key_hash: str = Field(max_length=64, unique=True)
    #: The key's first characters, to tell keys apart in a list (``sk-canary-AbC1...``).
    key_prefix: str = Field(max_length=32)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    last_used_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    #: Routes the key may use; None: all of them.
    routes: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    rpm: int | None = None  # requests per minute; None: the default (``rate_limit_rpm``)
    tpm: int | None = None  # tokens per minute; None: the default (``rate_limit_tpm``)


class AuditEntry(SQLModel, table=True):
    """One admin action or one refused attempt at one."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_created", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    actor: str = Field(max_length=64)  # admin, key:<id>, anonymous
    action: str = Field(max_length=64)  # experiment.start, keys.revoke, ...
    target: str | None = Field(default=None, max_length=200)
    outcome: str = Field(max_length=32)  # ok, refused, failed
    http_status: int
    client: str | None = Field(default=None, max_length=64)  # the caller's address
    detail: str | None = Field(default=None, sa_column=Column(Text))
