"""``canary experiment ...`` against a real router: actions with --reason and --force,
the refusals --force overrides, and arguments refused before any call."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from router.cli import build_parser
from router.config import Settings
from tests.router.conftest import Running

TOKEN = "cli-admin-token"
Canary = Callable[..., tuple[int, Any, str]]


@pytest.fixture
def canary(
    make_settings: Callable[..., Settings],
    run_router: Callable[..., AbstractContextManager[Running]],
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Canary]:
    """``canary("status")`` -> (exit code, printed JSON or text, stderr) on a live router."""
    settings = make_settings(admin_token=TOKEN, evaluation_interval_s=3600)
    with run_router(settings) as (server, _):
        parser = build_parser()

        def run(*argv: str) -> tuple[int, Any, str]:
            args = parser.parse_args(["experiment", *argv, "--router", server.url])
            args.token = args.token or TOKEN
            code = args.func(args)
            out = capsys.readouterr()
            try:
                printed = json.loads(out.out)
            except ValueError:
                printed = out.out
            return code, printed, out.err

        yield run


def test_actions_carry_reason_and_force(canary: Canary) -> None:
    code, exp, _ = canary("start", "chat", "--stages", "10,50", "--reason", "new prompt")
    assert code == 0 and exp["stage"] == 1
    code, decision, _ = canary("advance", exp["id"], "--reason", "looks fine")
    assert code == 0 and decision["action"] == "advance" and decision["acted"]
    assert "reason: looks fine" in decision["reasons"]
    code, now, _ = canary("status", exp["id"])
    assert (now["stage"], now["weights"]["challenger"]) == (2, 0.5)
    assert [p["challenger_percent"] for p in now["phases"]] == [10.0, 50.0]
    assert "p_better" in now["analysis"]["metrics"]["thumbs_up_rate"]

    code, _, err = canary("promote", exp["id"])
    assert code == 2
    assert "HTTP 409 (promotion_not_supported_by_data)" in err
    assert "add --force (and --reason) to promote anyway" in err
    code, decision, _ = canary("promote", exp["id"], "--force", "--reason", "ship it")
    assert code == 0 and decision["action"] == "promote"
    assert "reason: ship it" in decision["reasons"]
    code, now, _ = canary("status", exp["id"])
    assert now["status"] == "promoted"


def test_a_rejected_version_starts_again_only_with_force(canary: Canary) -> None:
    code, exp, _ = canary("start", "chat")
    assert code == 0
    code, decision, _ = canary("rollback", exp["id"], "--reason", "worse tone")
    assert code == 0 and "reason: worse tone" in decision["reasons"]
    code, _, err = canary("start", "chat")
    assert code == 2 and "(version_rejected)" in err and "--force" in err
    code, again, _ = canary("start", "chat", "--force", "--reason", "fixed the prompt")
    assert code == 0 and again["id"] != exp["id"] and again["status"] == "running"


def test_bad_arguments_are_refused_before_any_call(canary: Canary) -> None:
    code, _, err = canary("pause", "exp-x", "--force")
    assert code == 2 and "--force applies to start and promote" in err
    code, _, err = canary("evaluate", "exp-x", "--reason", "why not")
    assert code == 2 and "evaluate takes no --reason" in err
    code, _, err = canary("report")
    assert code == 2 and "report needs an experiment id" in err
    code, _, err = canary("start", "chat", "--stages", "5,lots")
    assert code == 2 and "--stages takes percents" in err
    code, listed, _ = canary("status")
    assert code == 0 and listed == []


def test_simulate_keeps_the_old_min_rated_flag() -> None:
    parser = build_parser()
    assert parser.parse_args(["simulate", "--min-rated", "7"]).min_rated_units == 7
    assert parser.parse_args(["simulate", "--min-rated-units", "9"]).min_rated_units == 9
