"""``canary``: the command line. ``canary serve`` runs the router; the registry commands
(``register``, ``models``, ``alias``, ``promote``, ``rollback``, ``restore``) manage its models."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from router.cli.experiment import add_experiment_commands
from router.cli.keys import add_keys_commands
from router.cli.registry import add_registry_commands
from router.cli.simulate import add_simulate_command
from ui.cli import add_ui_command


def _serve(args: argparse.Namespace) -> int:
    from router.app import create_app, default_arm_source
    from router.config import Settings, is_loopback
    from router.logs import configure_logging
    from router.registry_source import RegistryArmSource
    from router.server import serve

    if args.config:
        os.environ["CANARY_CONFIG"] = args.config  # read by Settings as its YAML layer
    # A model version loads in the background; MLflow's download bars would only garble
    # the JSON log. The first-run registration keeps its own progress bar.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = Settings()
    settings = settings.model_copy(
        update={"host": args.host or settings.host, "port": args.port or settings.port}
    )
    public = not is_loopback(settings.host)
    if settings.auth_mode == "open" and public and not settings.allow_open_auth_on_public_host:
        print(
            f"canary serve: error: auth is 'open' but host {settings.host} is reachable "
            "from other machines: anyone could post the thumbs and votes that decide "
            "promotions. Set CANARY_AUTH=keys (clients then need keys: canary keys "
            "create NAME), or CANARY_ALLOW_OPEN_AUTH_ON_PUBLIC_HOST=true to serve it "
            "open anyway.",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_level, settings.log_format)
    source = default_arm_source(settings)
    if isinstance(source, RegistryArmSource):
        from registry.bundled import register_bundled

        # First run on an empty registry: the bundled SmolLM2 (champion) and Gemma
        # (challenger) become route "chat", with a progress bar.
        register_bundled(source.registry, settings.data_dir / "models")
    serve(create_app(settings, arm_source=source), settings, host=settings.host, port=settings.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canary", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the router (OpenAI-compatible API)")
    serve.add_argument("--host", help="default: CANARY_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default: CANARY_PORT or 8000")
    serve.add_argument("--config", help="YAML settings file (same keys as CANARY_* variables)")
    serve.set_defaults(func=_serve)
    add_registry_commands(sub)
    add_experiment_commands(sub)
    add_keys_commands(sub)
    add_simulate_command(sub)
    add_ui_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args) or 0)
