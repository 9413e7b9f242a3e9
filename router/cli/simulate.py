"""``canary simulate``: a canary end to end on fake models and synthetic users (see
``router.simulate``); prints each look, the decision, the aliases after and the report.

Exit status 0 when the experiment ended (promoted, rolled back or inconclusive), 1 when it
halted or ``--max-units`` came first, 2 on bad input."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from experiments.simulation import ArmTruth, Users


def _percent_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected percents like 20,50, got {text!r}") from None


def _aliases(aliases: dict[str, str]) -> str:
    return ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"


def _arm(truth: ArmTruth) -> str:
    return (
        f"thumbs up {100 * truth.thumbs_up:.0f}%, errors {100 * truth.error_rate:.0f}%, "
        f"latency {truth.latency_ms:g} ms"
    )


def _run(args: argparse.Namespace) -> int:
    from router.logs import configure_logging
    from router.simulate import Look, SimulationConfig, simulate

    try:
        champion = ArmTruth(
            args.champion_thumbs, args.champion_errors, args.champion_latency_ms, 0.0
        )
        challenger = ArmTruth(
            args.challenger_thumbs, args.challenger_errors, args.challenger_latency_ms, 0.0
        )
        users = Users(args.requests_per_user, args.rated_share)
        policy: dict[str, Any] = {
            "min_units": args.min_units,
            "min_rated_units": args.min_rated_units,
            "min_guardrail_units": args.min_units,
        }
        config = SimulationConfig(
            champion=champion,
            challenger=challenger,
            users=users,
            out_dir=Path(args.out),
            stages=args.stages,
            policy=policy,
            batch=args.batch,
            max_units=args.max_units,
            seed=args.seed,
            data_dir=Path(args.data_dir) if args.data_dir else None,
        )
        config.check()
    except ValueError as exc:
        print(f"canary simulate: error: {exc}", file=sys.stderr)
        return 2
    configure_logging("ERROR", "text")  # the fallbacks of a failing arm are expected here
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # MLflow keeps a handler of its own

    print(f"champion:   {_arm(champion)}")
    print(f"challenger: {_arm(challenger)}")
    stages = " -> ".join(f"{s:g}%" for s in config.stages)
    print(f"stages {stages}; {args.batch} new users per look; evaluating after each batch\n")

    def progress(look: Look) -> None:
        split = ", ".join(f"{arm} {n}" for arm, n in look.units.items())
        reasons = look.reasons
        if reasons[:1] == ("not enough data yet:",):
            reasons = reasons[1:]  # the first missing minimum says most
        reason = (reasons[0] if look.action == "continue" else reasons[-1]) if reasons else ""
        print(
            f"look {look.look:3d}  stage {look.stage + 1}  users {split}  -> {look.action}"
            f"{'' if look.acted or look.action == 'continue' else ' (not acted)'}  {reason}"
        )

    result = asyncio.run(simulate(config, progress=progress))
    print()
    if result.decided:
        print(f"decision: {result.action} (experiment {result.experiment_id}, {result.status})")
    elif result.halted:
        print(
            f"decision: halt (experiment {result.experiment_id} {result.status}: an admin would "
            "investigate, then resume or roll back)"
        )
    else:
        print(f"decision: none within {args.max_units} users (experiment still {result.status})")
    for reason in result.reasons:
        print(f"  - {reason}")
    total = sum(result.units.values())
    print(
        f"units: {total} users (champion {result.units['champion']}, challenger "
        f"{result.units['challenger']}); logged requests: champion "
        f"{result.requests['champion']}, challenger {result.requests['challenger']}"
    )
    print(f"aliases before: {_aliases(result.aliases_before)}")
    print(f"aliases after:  {_aliases(result.aliases_after)}")
    print(f"report: {result.report_path}")
    return 0 if result.decided else 1


def add_simulate_command(subparsers: Any) -> None:
    """``canary simulate [--champion-thumbs P] [--challenger-thumbs P] ...``."""
    p = subparsers.add_parser(
        "simulate",
        help="run a canary end to end on fake models and synthetic users",
        description=__doc__,
    )
    arms = p.add_argument_group("arms (the truth the experiment should discover)")
    for role, thumbs in (("champion", 0.60), ("challenger", 0.75)):
        arms.add_argument(
            f"--{role}-thumbs",
            type=float,
            default=thumbs,
            help=f"thumbs-up rate (default {thumbs})",
        )
        arms.add_argument(
            f"--{role}-errors", type=float, default=0.0, help="share of failed calls (0)"
        )
        arms.add_argument(
            f"--{role}-latency-ms", type=float, default=20.0, help="engine latency (20 ms)"
        )
    run = p.add_argument_group("users and looks")
    run.add_argument("--batch", type=int, default=200, help="new users per look (200)")
    run.add_argument("--max-units", type=int, default=20_000, help="stop after this many users")
    run.add_argument("--requests-per-user", type=float, default=2.0, help="mean requests (2)")
    run.add_argument("--rated-share", type=float, default=0.8, help="answers rated (0.8)")
    run.add_argument("--seed", type=int, default=0)
    pol = p.add_argument_group("policy (smaller than the defaults, so a run takes ~1 minute)")
    pol.add_argument(
        "--stages", type=_percent_list, default=(20.0, 50.0), help="challenger %% (20,50)"
    )
    pol.add_argument("--min-units", type=int, default=100, help="units per arm per stage (100)")
    pol.add_argument(
        "--min-rated-units",
        "--min-rated",  # its name before the policy counted rated units, not requests
        dest="min_rated_units",
        type=int,
        default=100,
        help="rated units per arm before the thumbs tests run (100)",
    )
    p.add_argument("--out", default="canary-simulation", help="report directory")
    p.add_argument(
        "--data-dir",
        help="keep the router's database and the MLflow registry here (an empty directory); "
        "default: a temporary directory, removed afterwards",
    )
    p.set_defaults(func=_run)
