"""``canary register | models | alias | promote | rollback | restore``: the model registry
from the command line.

The registry is MLflow's (``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``, else the
embedded one in ``CANARY_DATA_DIR``). Every registry error prints one line on stderr and
exits 2; nothing here prints a traceback for a mistake a user can make.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.store import Registry, Transition

EXIT_USAGE = 2

Command = Callable[[argparse.Namespace, "Registry"], int]


def _open_registry() -> Registry:
    from registry.store import Registry
    from router.config import Settings

    # MLflow logs its housekeeping (creating database tables, ...) at INFO on stderr;
    # a command's output should be its answer, and its errors one line.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return Registry.from_env(Settings().data_dir)


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    """Open the registry, run ``command``, and turn registry errors into one line + exit 2."""

    def run(args: argparse.Namespace) -> int:
        from registry.errors import RegistryError

        try:
            return command(args, _open_registry())
        except RegistryError as exc:
            print(f"canary {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return run


# -- commands ------------------------------------------------------------------------------
_GGUF_FLAGS = (
    "chat_format",
    "system_prompt",
    "temperature",
    "top_p",
    "max_tokens",
    "n_ctx",
    "n_threads",
    "n_gpu_layers",
    "stop",
    "repeat_penalty",
)
_SAMPLING_FLAGS = ("system_prompt", "temperature", "top_p", "max_tokens", "stop")
_GGUF_ONLY_FLAGS = tuple(f for f in _GGUF_FLAGS if f not in _SAMPLING_FLAGS)


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The parameters the user set; the rest keep the flavour's defaults."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _register(args: argparse.Namespace, registry: Registry) -> int:
    if args.gguf:
        version = registry.register_gguf(
            args.route,
            Path(args.gguf),
            params=_given(args, _GGUF_FLAGS),
            alias=args.alias,
            progress=lambda stage: print(f"{args.route}: {stage}", file=sys.stderr),
        )
    else:
        version = registry.register_endpoint(
            args.route,
            base_url=args.endpoint,
            remote_model=args.remote_model,
            api_key_env=args.api_key_env,
            params=_given(args, _SAMPLING_FLAGS),
            alias=args.alias,
        )
    where = f" as @{args.alias}" if args.alias else ""
    print(f"registered {args.route} version {version}{where}")
    return 0


def _models(args: argparse.Namespace, registry: Registry) -> int:
    routes = registry.describe()
    if not routes:
        print(f"no models registered in {registry.registry_uri}")
        return 0
    for info in routes:
        aliases = ", ".join(f"@{a}={v}" for a, v in sorted(info.aliases.items())) or "no aliases"
        print(f"{info.route}  ({aliases})")
        for v in info.versions:
            marks = " ".join(f"@{a}" for a in v.aliases)
            status = v.tags.get("canary.status", "")
            print(
                f"  v{v.version:<4} {v.flavour:<7} {v.created:%Y-%m-%d %H:%M}  "
                f"{status:<9} {marks}".rstrip()
            )
    return 0


def _alias(args: argparse.Namespace, registry: Registry) -> int:
    registry.set_alias(args.route, args.alias, args.version)
    print(f"{args.route}@{args.alias} -> version {args.version}")
    return 0


def _report(result: Transition) -> int:
    state = ", ".join(
        f"@{name}={value}"
        for name, value in (
            ("champion", result.champion),
            ("challenger", result.challenger),
            ("previous", result.previous),
        )
        if value is not None
    )
    prefix = "" if result.changed else "nothing to do: "
    print(f"{result.route}: {prefix}{result.message} ({state or 'no aliases'})")
    return 0


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry, e.g. in a container
        return "cli"


def _promote(args: argparse.Namespace, registry: Registry) -> int:
    return _report(registry.promote(args.route, actor=_actor(), reason=args.reason))


def _rollback(args: argparse.Namespace, registry: Registry) -> int:
    return _report(registry.rollback(args.route, actor=_actor(), reason=args.reason))


def _restore(args: argparse.Namespace, registry: Registry) -> int:
    return _report(registry.restore(args.route, actor=_actor(), reason=args.reason))


# -- parser ----------------------------------------------------------------------------
def add_registry_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the registry commands to ``canary``'s subparsers; each sets ``func(args) -> int``."""
    register = subparsers.add_parser(
        "register",
        help="register a GGUF file or an OpenAI-compatible endpoint as a new model version",
        description="Register a new version of ROUTE (an MLflow registered model).",
    )
    register.add_argument("route", help="route name = registered model name")
    source = register.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", metavar="PATH", help="a local .gguf file, run by llama.cpp")
    source.add_argument("--endpoint", metavar="URL", help="OpenAI-compatible base URL (…/v1)")
    register.add_argument("--remote-model", help="model id the endpoint expects (--endpoint)")
    register.add_argument(
        "--api-key-env", metavar="NAME", help="environment variable holding the API key"
    )
    register.add_argument("--chat-format", help="llama.cpp chat format; default: the GGUF's")
    register.add_argument("--system-prompt", help="system message added when none is sent")
    register.add_argument("--temperature", type=float)
    register.add_argument("--top-p", type=float)
    register.add_argument("--max-tokens", type=int)
    register.add_argument("--n-ctx", type=int, help="context window (GGUF)")
    register.add_argument("--n-threads", type=int, help="CPU threads (GGUF); default: all")
    register.add_argument("--n-gpu-layers", type=int, help="layers offloaded to GPU; -1: all")
    register.add_argument("--repeat-penalty", type=float, help="(GGUF)")
    register.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    register.add_argument("--alias", help="also point this alias at it, e.g. challenger")
    register.set_defaults(func=_checked_register)

    models = subparsers.add_parser("models", help="list routes, versions, aliases, flavours")
    models.set_defaults(func=_run(_models))

    alias = subparsers.add_parser("alias", help="point ROUTE@ALIAS at VERSION")
    alias.add_argument("route")
    alias.add_argument("alias", help="e.g. champion, challenger")
    alias.add_argument("version")
    alias.set_defaults(func=_run(_alias))

    for name, func, text in (
        ("promote", _promote, "@challenger becomes @champion (old champion: @previous)"),
        ("rollback", _rollback, "remove @challenger and tag its version rejected"),
        ("restore", _restore, "@previous becomes @champion again"),
    ):
        sub = subparsers.add_parser(name, help=text, description=text)
        sub.add_argument("route")
        sub.add_argument("--reason", default=f"manual {name}", help="recorded on the version")
        sub.set_defaults(func=_run(func))


def _checked_register(args: argparse.Namespace) -> int:
    """Checks that need no registry, first: a bad file or flag set fails fast and clearly."""
    from registry.errors import InvalidModel
    from registry.store import check_gguf

    problem = None
    if args.endpoint and not args.remote_model:
        problem = "--endpoint needs --remote-model"
    elif args.endpoint and (gguf_only := _given(args, _GGUF_ONLY_FLAGS)):
        flags = ", ".join("--" + name.replace("_", "-") for name in gguf_only)
        problem = f"{flags} apply to --gguf models only"
    elif args.gguf and (args.remote_model or args.api_key_env):
        problem = "--remote-model and --api-key-env go with --endpoint"
    elif args.gguf:
        try:
            check_gguf(Path(args.gguf).expanduser())
        except InvalidModel as exc:
            problem = str(exc)
    if problem:
        print(f"canary register: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    return _run(_register)(args)
