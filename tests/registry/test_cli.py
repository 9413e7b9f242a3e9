"""``canary register | models | alias | promote | rollback | restore``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from registry.bundled import smollm2_path
from router.cli.registry import add_registry_commands

Canary = Callable[..., tuple[int, str, str]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canary")
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture
def canary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Canary:
    """``canary("models")`` -> (exit code, stdout, stderr), on a registry in a temp data dir."""
    monkeypatch.setenv("CANARY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    parser = build_parser()

    def run(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args(argv)
        code = args.func(args)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_register_models_alias_promote_rollback_restore(canary: Canary, tmp_path: Path) -> None:
    code, out, _ = canary(
        "register", "chat", "--gguf", str(smollm2_path()), "--n-ctx", "512",
        "--temperature", "0.2", "--stop", "###", "--alias", "champion",
    )  # fmt: skip
    assert (code, out.strip()) == (0, "registered chat version 1 as @champion")
    code, out, _ = canary(
        "register", "chat", "--endpoint", "http://127.0.0.1:9/v1", "--remote-model", "m",
        "--api-key-env", "ENGINE_KEY", "--alias", "challenger",
    )  # fmt: skip
    assert (code, out.strip()) == (0, "registered chat version 2 as @challenger")

    code, out, _ = canary("models")
    assert code == 0
    assert "chat  (@challenger=2, @champion=1)" in out
    assert any(
        line.split()[:2] == ["v2", "openai"] and "@challenger" in line for line in out.splitlines()
    )
    assert any(
        line.split()[:2] == ["v1", "gguf"] and "@champion" in line for line in out.splitlines()
    )
    assert (tmp_path / "data" / "mlflow.db").exists()  # the embedded default

    code, out, _ = canary("promote", "chat", "--reason", "better")
    assert code == 0
    assert "version 2 promoted to @champion" in out and "@previous=1" in out
    code, out, _ = canary("promote", "chat")
    assert (code, out.startswith("chat: nothing to do")) == (0, True)

    assert canary("alias", "chat", "challenger", "1")[:2] == (0, "chat@challenger -> version 1\n")
    code, out, _ = canary("rollback", "chat")
    assert code == 0 and "version 1 rejected" in out
    code, out, _ = canary("restore", "chat")
    assert code == 0 and "version 1 restored to @champion" in out
    code, out, _ = canary("models")
    assert "chat  (@champion=1)" in out


def test_models_on_an_empty_registry(canary: Canary) -> None:
    code, out, _ = canary("models")
    assert code == 0 and out.startswith("no models registered in sqlite:///")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("register", "chat", "--gguf", "/nonexistent/x.gguf"),
            "no such file: /nonexistent/x.gguf",
        ),
        (("register", "chat", "--endpoint", "http://h/v1"), "--endpoint needs --remote-model"),
        (
            (
                "register",
                "chat",
                "--endpoint",
                "http://h/v1",
                "--remote-model",
                "m",
                "--n-ctx",
                "9",
            ),
            "--n-ctx apply to --gguf models only",
        ),
        (("promote", "nochat"), "no route 'nochat'"),
        (("alias", "nochat", "champion", "1"), "no route 'nochat'"),
        (("restore", "nochat"), "no route 'nochat'"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    canary: Canary, argv: tuple[str, ...], message: str
) -> None:
    code, out, err = canary(*argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and message in err
    assert "Traceback" not in err


def test_not_gguf_and_unknown_version(canary: Canary, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("not a model")
    code, _, err = canary("register", "chat", "--gguf", str(bogus))
    assert code == 2 and "is not a GGUF file" in err

    canary("register", "chat", "--endpoint", "http://h/v1", "--remote-model", "m")
    code, _, err = canary("alias", "chat", "champion", "9")
    assert code == 2
    assert err.strip() == "canary alias: error: route 'chat' has no version '9' (versions: 1)"


@pytest.mark.usefixtures("fast_http_failures")
def test_unreachable_registry_names_the_uri(
    canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.servers import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, _, err = canary("models")
    assert code == 2
    assert err.startswith(f"canary models: error: MLflow registry at {uri} is unreachable")
    assert err.count("\n") == 1
