"""The admin commands' one way to call a running router (``canary experiment``, ``canary keys``).

The admin token is ``--token``, else ``CANARY_ADMIN_TOKEN``, else the one the router
generated in its data directory (``CANARY_DATA_DIR``, default ``./data``) at first start.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from router.auth.admin_token import read_token_file


def add_router_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--router", default=os.environ.get("CANARY_ROUTER", "http://127.0.0.1:8000")
    )
    parser.add_argument(
        "--token",
        help="admin token (default: CANARY_ADMIN_TOKEN, else the data directory's admin_token)",
    )


def admin_token(args: argparse.Namespace) -> str | None:
    return (
        args.token
        or os.environ.get("CANARY_ADMIN_TOKEN")
        or read_token_file(Path(os.environ.get("CANARY_DATA_DIR", "data")))
    )


def call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """``method path`` on the router with the admin token; raises ``httpx.HTTPError``."""
    token = admin_token(args)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.request(
        method, f"{args.router.rstrip('/')}{path}", headers=headers, timeout=120, **kwargs
    )


def report_error(command: str, response: httpx.Response) -> str | None:
    """Print the router's error in one line; return its code."""
    code = None
    try:
        error = response.json()["error"]
        message, code = error["message"], error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        message = response.text[:200]
    status = f"HTTP {response.status_code}" + (f" ({code})" if code else "")
    print(f"{command}: error: {status}: {message}", file=sys.stderr)
    return code


def unreachable(command: str, args: argparse.Namespace, exc: httpx.HTTPError) -> int:
    print(f"{command}: error: router at {args.router} unreachable: {exc}", file=sys.stderr)
    return 2
