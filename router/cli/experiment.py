"""``canary experiment ...``: drive experiments through a running router's HTTP API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> httpx.Response:
    token = args.token or os.environ.get("CANARY_ADMIN_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.request(
        method, f"{args.router.rstrip('/')}{path}", headers=headers, timeout=120, **kwargs
    )


def _run(args: argparse.Namespace) -> int:
    try:
        if args.action == "start":
            body: dict[str, Any] = {"route": args.target}
            if args.stages:
                body["stages"] = [float(s) for s in args.stages.split(",")]
            if args.auto is not None:
                body["policy"] = {"auto": args.auto}
            response = _call(args, "POST", "/v1/experiments", json=body)
        elif args.action == "status":
            path = f"/v1/experiments/{args.target}" if args.target else "/v1/experiments"
            response = _call(args, "GET", path)
        elif args.action == "report":
            response = _call(args, "GET", f"/v1/experiments/{args.target}/report")
            if response.status_code == 200:
                out = Path(args.out or f"{args.target}.html")
                out.write_text(response.text)
                print(out)
                return 0
        else:
            response = _call(args, "POST", f"/v1/experiments/{args.target}/{args.action}")
    except httpx.HTTPError as exc:
        print(
            f"canary experiment: error: router at {args.router} unreachable: {exc}", file=sys.stderr
        )
        return 2
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        print(f"canary experiment: error: HTTP {response.status_code}: {message}", file=sys.stderr)
        return 2
    print(json.dumps(response.json(), indent=2, default=str))
    return 0


def add_experiment_commands(subparsers: Any) -> None:
    """``canary experiment start|status|evaluate|promote|rollback|pause|resume|report``."""
    p = subparsers.add_parser("experiment", help="start, inspect and act on canary experiments")
    p.add_argument(
        "action",
        choices=["start", "status", "evaluate", "promote", "rollback", "pause", "resume", "report"],
    )
    p.add_argument("target", nargs="?", help="route (start) or experiment id (the others)")
    p.add_argument("--router", default=os.environ.get("CANARY_ROUTER", "http://127.0.0.1:8000"))
    p.add_argument("--token", help="admin token (default: CANARY_ADMIN_TOKEN)")
    p.add_argument("--stages", help="challenger percent per stage, e.g. 5,25,50 (start)")
    p.add_argument(
        "--auto",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="act on decisions automatically (start)",
    )
    p.add_argument("--out", help="where the HTML report goes (report)")
    p.set_defaults(func=_run)
