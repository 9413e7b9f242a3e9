"""``canary experiment ...``: drive experiments through a running router's HTTP API.

Admin actions take ``--reason`` (recorded with the decision) and ``--force``: promote
although the data do not back it, or start an experiment for a challenger version that
was rolled back or ended inconclusive before. Both are recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from router.cli.admin_http import add_router_arguments, call, report_error, unreachable

#: Actions on an experiment that go to ``POST /v1/experiments/{id}/{action}``.
ACTIONS = ("evaluate", "promote", "rollback", "advance", "pause", "resume")
#: Refusals ``--force`` overrides: the router's error code -> what to do here.
FORCEABLE = {
    "promotion_not_supported_by_data": "add --force (and --reason) to promote anyway",
    "version_rejected": "add --force (and --reason) to start it anyway",
}


def _action_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.force:
        body["force"] = True
    if args.reason:
        body["reason"] = args.reason
    return body


def _run(args: argparse.Namespace) -> int:
    if not args.target and args.action != "status":
        what = "a route" if args.action == "start" else "an experiment id"
        print(f"canary experiment: error: {args.action} needs {what}", file=sys.stderr)
        return 2
    if args.force and args.action not in ("start", "promote"):
        print("canary experiment: error: --force applies to start and promote", file=sys.stderr)
        return 2
    if args.reason and args.action in ("status", "report", "evaluate"):
        print(f"canary experiment: error: {args.action} takes no --reason", file=sys.stderr)
        return 2
    try:
        if args.action == "start":
            body: dict[str, Any] = {"route": args.target, **_action_body(args)}
            if args.stages:
                try:
                    body["stages"] = [float(s) for s in args.stages.split(",")]
                except ValueError:
                    print(
                        f"canary experiment: error: --stages takes percents like 5,25,50, "
                        f"got {args.stages!r}",
                        file=sys.stderr,
                    )
                    return 2
            if args.auto is not None:
                body["policy"] = {"auto": args.auto}
            response = call(args, "POST", "/v1/experiments", json=body)
        elif args.action == "status":
            path = f"/v1/experiments/{args.target}" if args.target else "/v1/experiments"
            response = call(args, "GET", path)
        elif args.action == "report":
            response = call(args, "GET", f"/v1/experiments/{args.target}/report")
            if response.status_code == 200:
                out = Path(args.out or f"{args.target}.html")
                out.write_text(response.text)
                print(out)
                return 0
        else:
            path = f"/v1/experiments/{args.target}/{args.action}"
            response = call(args, "POST", path, json=_action_body(args) or None)
    except httpx.HTTPError as exc:
        return unreachable("canary experiment", args, exc)
    if response.status_code >= 400:
        code = report_error("canary experiment", response)
        if code in FORCEABLE:
            print(f"canary experiment: {FORCEABLE[code]}", file=sys.stderr)
        return 2
    print(json.dumps(response.json(), indent=2, default=str))
    return 0


def add_experiment_commands(subparsers: Any) -> None:
    """``canary experiment start|status|evaluate|promote|rollback|advance|pause|resume|report``."""
    p = subparsers.add_parser(
        "experiment", help="start, inspect and act on canary experiments", description=__doc__
    )
    p.add_argument("action", choices=["start", "status", *ACTIONS, "report"])
    p.add_argument("target", nargs="?", help="route (start) or experiment id (the others)")
    add_router_arguments(p)
    p.add_argument("--stages", help="challenger percent per stage, e.g. 5,25,50 (start)")
    p.add_argument(
        "--auto",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="act on decisions automatically (start)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="promote although the data do not back it, or start an experiment for a "
        "challenger version rejected before (recorded; promote, start)",
    )
    p.add_argument("--reason", help="why, recorded with the action (start and the actions)")
    p.add_argument("--out", help="where the HTML report goes (report)")
    p.set_defaults(func=_run)
