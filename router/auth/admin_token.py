"""The admin token: from the settings, else generated once into the data directory.

A newcomer running ``canary serve`` gets a working admin API without configuring one:
the first start writes a random token to ``<data_dir>/admin_token`` (mode 0600, created
exclusively, so replicas sharing the directory agree on one) and prints it once with
the UI's address, as Jupyter prints its token.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from router.config import Settings

FILE = "admin_token"


def token_file(data_dir: Path) -> Path:
    return data_dir / FILE


def read_token_file(data_dir: Path) -> str | None:
    """The generated token, if this data directory has one."""
    try:
        return token_file(data_dir).read_text().strip() or None
    except OSError:
        return None


def ensure_admin_token(settings: Settings) -> tuple[str, bool]:
    """The admin token and whether it was generated just now."""
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value(), False
    path = token_file(settings.data_dir)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        existing = read_token_file(settings.data_dir)
        if existing is None:
            raise RuntimeError(f"{path} is empty: remove it to generate a new admin token") from exc
        return existing, False
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def announce(token: str, settings: Settings) -> None:
    """Print the generated token once, where a person starting the router looks."""
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    ui = f"http://{host}:{settings.port}/ui" if settings.ui_enabled else None
    lines = [
        "",
        "  canary-router: an admin token was generated for this data directory.",
        f"  It is kept in {token_file(settings.data_dir)} (readable only by you):",
        "",
        f"      {token}",
        "",
    ]
    if ui:
        lines.append(f"  Open {ui}, tab Experiments, and sign in with it to start experiments.")
    lines.append("  The CLI reads it from that file: canary experiment start chat")
    lines.append("  Admin API calls send it as 'Authorization: Bearer <token>'.")
    print("\n".join([*lines, ""]), file=sys.stderr, flush=True)
