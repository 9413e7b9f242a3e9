"""Who is calling: the admin, a client's API key, or (in ``open`` mode) anybody.

``Gate`` turns an ``Authorization`` header into a ``Principal``. In ``keys`` mode a client
endpoint needs a valid, unrevoked key (401 without one, 403 once revoked); in ``open``
mode a key is optional (OpenAI clients always send some key, so an unknown one counts
as none) but a known one still names the caller, its routes and its limits. The admin
token is accepted everywhere and is the only way into the admin API.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from router.auth.keys import PREFIX, KeyInfo, KeyRing
from router.errors import Forbidden, Unauthorized

Kind = Literal["admin", "key", "anonymous"]
_PREFIX = PREFIX.encode()


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Kind
    key: KeyInfo | None = None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key is not None else None

    @property
    def actor(self) -> str:
        """How the audit log names the caller."""
        return f"key:{self.key.id}" if self.key is not None else self.kind

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    def require_route(self, route: str) -> None:
        """403 unless this caller's key may use ``route``."""
        routes = self.key.routes if self.key is not None else None
        if routes is not None and route not in routes:
            raise Forbidden(
                f"This API key may not use route {route!r} (it may use: "
                f"{', '.join(sorted(routes)) or 'none'}).",
                code="route_not_allowed",
            )

    def may_see(self, key_id: str | None) -> bool:
        """Whether this caller may see (and rate) what ``key_id`` asked: the same key,
        or the admin. Requests made without a key belong to every keyless caller."""
        return self.is_admin or key_id == self.key_id


ADMIN = Principal("admin")
ANONYMOUS = Principal("anonymous")


def bearer(authorization: str | None) -> bytes | None:
    """The token of ``Authorization: Bearer <token>``, as the client sent its bytes
    (Starlette decodes headers as latin-1), or None."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    token = authorization[7:].strip()
    return token.encode("latin-1") if token else None


class Gate:
    """Authenticates callers for one router: its auth mode, admin token and keys."""

    def __init__(self, *, mode: Literal["open", "keys"], admin_token: str, keys: KeyRing):
        self.mode = mode
        self._admin = admin_token.encode()
        self.keys = keys

    def is_admin_token(self, token: bytes | None) -> bool:
        # compare_digest on bytes: a non-ASCII token is a wrong token, not an error.
        return token is not None and secrets.compare_digest(token, self._admin)

    async def client(self, authorization: str | None) -> Principal:
        """The caller of a client endpoint (chat, feedback, votes, arena, ...)."""
        token = bearer(authorization)
        if self.is_admin_token(token):
            return ADMIN
        info = await self.keys.find(token) if token and token.startswith(_PREFIX) else None
        if info is None:
            if self.mode == "open":
                return ANONYMOUS
            if token is None:
                raise Unauthorized(
                    "This router needs an API key: send 'Authorization: Bearer <key>' "
                    "(an admin makes keys with 'canary keys create NAME').",
                    code="missing_api_key",
                )
            raise Unauthorized("The API key is not valid.", code="invalid_api_key")
        if info.revoked:
            raise Forbidden(f"API key {info.id} ({info.name}) was revoked.", code="key_revoked")
        return Principal("key", info)

    def admin(self, authorization: str | None) -> Principal:
        """The admin, or 401/403."""
        token = bearer(authorization)
        if token is None:
            raise Unauthorized(
                "Admin calls need 'Authorization: Bearer <admin token>' (CANARY_ADMIN_TOKEN, "
                "or the one in the data directory's admin_token file).",
                code="missing_admin_token",
            )
        if not self.is_admin_token(token):
            raise Forbidden("The admin token is wrong.", code="invalid_admin_token")
        return ADMIN
