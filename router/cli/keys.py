"""``canary keys create|list|revoke``: client API keys, through a running router's admin API.

``create`` prints the key once (only its hash is stored): give it to the client, which
sends it as ``Authorization: Bearer <key>`` (the ``openai`` SDK's ``api_key``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from router.cli.admin_http import add_router_arguments, call, report_error, unreachable

COMMAND = "canary keys"


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.target}
    if args.routes:
        body["routes"] = [r.strip() for r in args.routes.split(",") if r.strip()]
    if args.rpm is not None:
        body["rpm"] = args.rpm
    if args.tpm is not None:
        body["tpm"] = args.tpm
    return body


def _table(keys: list[dict[str, Any]]) -> str:
    rows = [("ID", "NAME", "PREFIX", "ROUTES", "RPM", "TPM", "CREATED", "LAST USED", "REVOKED")]
    for k in keys:
        rows.append(
            (
                k["id"],
                k["name"],
                k["key_prefix"] + "...",
                ",".join(k["routes"]) if k["routes"] is not None else "*",
                str(k["rpm"] or "-"),
                str(k["tpm"] or "-"),
                (k["created_at"] or "")[:19],
                (k["last_used_at"] or "-")[:19],
                (k["revoked_at"] or "-")[:19],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _run(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.target:
        what = "a name" if args.action == "create" else "a key id"
        print(f"{COMMAND}: error: {args.action} needs {what}", file=sys.stderr)
        return 2
    if args.action != "create" and (args.routes or args.rpm or args.tpm):
        print(f"{COMMAND}: error: --routes, --rpm and --tpm apply to create", file=sys.stderr)
        return 2
    try:
        if args.action == "create":
            response = call(args, "POST", "/v1/keys", json=_create_body(args))
        elif args.action == "list":
            response = call(args, "GET", "/v1/keys")
        else:
            response = call(args, "DELETE", f"/v1/keys/{args.target}")
    except httpx.HTTPError as exc:
        return unreachable(COMMAND, args, exc)
    if response.status_code >= 400:
        report_error(COMMAND, response)
        return 2
    data = response.json()
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.action == "create":
        print(data["key"])
        print(
            f"{COMMAND}: made {data['id']} ({data['name']}); this is the only time the key "
            "is shown: store it now.",
            file=sys.stderr,
        )
    elif args.action == "list":
        print(_table(data))
    else:
        print(f"revoked {data['id']} ({data['name']}) at {data['revoked_at']}")
    return 0


def add_keys_commands(subparsers: Any) -> None:
    """``canary keys create NAME [--rpm N] [--tpm N] [--routes a,b] | list | revoke ID``."""
    p = subparsers.add_parser(
        "keys", help="make, list and revoke client API keys", description=__doc__
    )
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("target", nargs="?", help="name (create) or key id (revoke)")
    p.add_argument("--routes", help="routes the key may use, e.g. chat,summary (default: all)")
    p.add_argument("--rpm", type=int, help="requests per minute (default: rate_limit_rpm)")
    p.add_argument("--tpm", type=int, help="tokens per minute (default: rate_limit_tpm)")
    p.add_argument("--json", action="store_true", help="print the router's JSON answer")
    add_router_arguments(p)
    p.set_defaults(func=_run)
