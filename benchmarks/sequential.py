"""Sequential testing under continuous monitoring: false promotions, power, time to rollback.

What is measured: the real decision rule — ``experiments.analysis.analyse`` and the policy
(``experiments.policy.decide``) with their **default** settings (one-sided always-valid
mSPRT p-values at alpha 0.05, mixing sd 0.05, ``min_units`` 200 and ``min_rated`` 100 per
arm) — applied after every batch, with the running minimum of the always-valid p-values
carried from look to look as the evaluator carries it (``experiments.simulation``).

Each experiment: ``--looks`` looks (65), each adding ``--units-per-look`` (40) new units to
each arm, one rated request per unit with a thumbs up with the arm's true probability;
the horizon is therefore 2,600 units per arm. The always-valid test starts once each arm
has ``min_rated`` ratings (look 3: the burn-in, see ``experiments.analysis.analyse``) and
the first four looks have fewer than ``min_units`` units, so they continue; 61 looks can
decide. The rule is evaluated at the policy's **last stage** (50/50 split), where a
"better" verdict means *promote* and a "worse" one *rollback*; the run ends at the first.

Why one stage: "units per arm" is what the targets count, and at the earlier stages (5%,
25%) the arms grow at different speeds. The staged flow is the same rule with waits: a
"better" verdict at a stage advances, and as the running minimum carries across stages,
each later stage advances (then promotes) at its first look with ``min_units`` units per
arm in the stage, unless a "worse" verdict or a guardrail comes first. ``--staged`` runs
that full 5 -> 25 -> 50% flow too (each look's units split at random by the stage weight,
as the hash splits them) for fewer experiments, and prints how often it promotes or rolls
back and the challenger's units at the decision.

Figures, against the targets of issue 4:

* A/A (60% vs 60%), ``--experiments`` (2,000) runs: share promoted (target <= 5%), beside
  the naive fixed-horizon one-sided z-test at the same alpha peeked at the same looks
  (decide at the first look where ``|z| > z_0.95``), which is not valid under peeking.
* Power, 60% -> 65%: share promoted within 2,600 units per arm (target >= 80%).
* Rollback, 60% -> 50% (a 10-point drop): median units per arm at rollback (target
  <= 500); undecided runs count as beyond the horizon.

Proportions carry a Wilson 95% interval. Run ``.venv/bin/python benchmarks/sequential.py``
(``--quick``: 400/200/200 experiments; ``--seed``; ``--workers``: processes, default the
number of cores).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from experiments.policy import Policy
from experiments.simulation import (
    ArmTruth,
    Outcome,
    naive_z,
    naive_z_decisions,
    random_batches,
    replay_batches,
    run_experiment,
    thumbs_paths,
)

BASE_RATE = 0.60
TARGET_FALSE_PROMOTION = 0.05
TARGET_POWER, POWER_RATE = 0.80, 0.65
TARGET_ROLLBACK_UNITS, DROP_RATE = 500, 0.50


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    challenger_rate: float
    experiments: int


# -- running experiments in worker processes ------------------------------------------------


def _single_stage_chunk(
    job: tuple[NDArray[np.int64], NDArray[np.int64], int, dict[str, Any]],
) -> tuple[list[Outcome], float]:
    """Outcomes of a chunk of experiments, and the CPU seconds they took."""
    champion, challenger, units_per_look, policy_dict = job
    cpu = time.process_time()
    policy = Policy.from_dict(policy_dict)
    last = len(policy.stages) - 1
    outcomes = []
    for row_a, row_b in zip(champion, challenger, strict=True):
        # 50/50, the last stage's split; no error sums: zero errors decide nothing either way.
        batches = replay_batches(row_a, row_b, units_per_look, error_sums=False)
        outcomes.append(run_experiment(batches, policy, max_looks=row_a.size, stage_index=last))
    return outcomes, time.process_time() - cpu


def _staged_chunk(job: tuple[list[list[int]], float, int, int, dict[str, Any]]) -> list[Outcome]:
    seeds, challenger_rate, looks, units_per_look, policy_dict = job
    policy = Policy.from_dict(policy_dict)
    champion, challenger = ArmTruth(BASE_RATE), ArmTruth(challenger_rate)
    return [
        run_experiment(
            random_batches(
                np.random.default_rng(seed),
                champion,
                challenger,
                units=units_per_look,
                latency=False,
            ),
            policy,
            max_looks=looks,
        )
        for seed in seeds  # one seed per experiment: figures do not depend on --workers
    ]


def _chunks(n: int, parts: int) -> list[slice]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def run_single_stage(
    champion: NDArray[np.int64],
    challenger: NDArray[np.int64],
    units_per_look: int,
    policy: Policy,
    pool: ProcessPoolExecutor,
    workers: int,
) -> tuple[list[Outcome], float]:
    """Every experiment's outcome, in order, and the CPU seconds of the workers."""
    parts = _chunks(champion.shape[0], workers * 4)
    jobs = [(champion[s], challenger[s], units_per_look, policy.to_dict()) for s in parts]
    chunks = list(pool.map(_single_stage_chunk, jobs))
    return [o for outcomes, _ in chunks for o in outcomes], sum(cpu for _, cpu in chunks)


# -- figures --------------------------------------------------------------------------------


def share(k: int, n: int) -> str:
    ci = stats.binomtest(k, n).proportion_ci(method="wilson")
    return f"{100 * k / n:.1f}% ({k}/{n}; 95% CI {100 * ci.low:.1f}-{100 * ci.high:.1f}%)"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def units_per_arm(outcome: Outcome) -> int:
    return min(outcome.units.values())


def median_units(outcomes: list[Outcome], action: str, horizon: int) -> float:
    """Median units per arm at ``action``; runs that ended otherwise count as beyond."""
    values = [units_per_arm(o) if o.action == action else horizon + 1 for o in outcomes]
    return float(statistics.median(values))


def percentile_units(outcomes: list[Outcome], action: str, q: float) -> float | None:
    values = [units_per_arm(o) for o in outcomes if o.action == action]
    return float(np.percentile(values, q)) if values else None


def count(outcomes: list[Outcome], action: str) -> int:
    return sum(o.action == action for o in outcomes)


def report_aa(outcomes: list[Outcome], naive: tuple[int, int], eligible: int) -> bool:
    n = len(outcomes)
    promoted = count(outcomes, "promote")
    ok = promoted / n <= TARGET_FALSE_PROMOTION
    naive_promoted, naive_two_sided = naive
    print(f"A/A, {100 * BASE_RATE:.0f}% vs {100 * BASE_RATE:.0f}%, {n} experiments:")
    print(
        f"  always-valid policy   false promotions {share(promoted, n)}"
        f"   target <= {100 * TARGET_FALSE_PROMOTION:.0f}%: {verdict(ok)}"
    )
    print(f"                        false rollbacks  {share(count(outcomes, 'rollback'), n)}")
    print(
        f"  naive z-test peeked   false promotions {share(naive_promoted, n)}"
        f"   (the same rule on fixed-horizon one-sided p < 0.05 at the same {eligible} looks)"
    )
    print(
        f"                        any rejection    {share(naive_two_sided, n)}"
        "   (two-sided p < 0.05 at any of those looks: the classic peeking figure)"
    )
    return ok


def report_power(outcomes: list[Outcome], horizon: int) -> bool:
    n = len(outcomes)
    promoted = count(outcomes, "promote")
    ok = promoted / n >= TARGET_POWER
    median = percentile_units(outcomes, "promote", 50)
    p90 = percentile_units(outcomes, "promote", 90)
    print(f"Power, {100 * BASE_RATE:.0f}% -> {100 * POWER_RATE:.0f}%, {n} experiments:")
    print(
        f"  promoted within {horizon} units per arm {share(promoted, n)}"
        f"   target >= {100 * TARGET_POWER:.0f}%: {verdict(ok)}"
    )
    if median is not None and p90 is not None:
        print(f"  units per arm at promotion: median {median:.0f}, p90 {p90:.0f}")
    print(f"  wrong-way rollbacks {share(count(outcomes, 'rollback'), n)}")
    return ok


def report_rollback(outcomes: list[Outcome], horizon: int) -> bool:
    n = len(outcomes)
    median = median_units(outcomes, "rollback", horizon)
    ok = median <= TARGET_ROLLBACK_UNITS
    p90 = percentile_units(outcomes, "rollback", 90)
    print(f"Rollback, {100 * BASE_RATE:.0f}% -> {100 * DROP_RATE:.0f}%, {n} experiments:")
    print(
        f"  median units per arm to rollback {median:.0f}"
        f"   target <= {TARGET_ROLLBACK_UNITS}: {verdict(ok)}"
    )
    rolled = count(outcomes, "rollback")
    extra = f", p90 {p90:.0f}" if p90 is not None else ""
    print(f"  rolled back within {horizon} units per arm {share(rolled, n)}{extra}")
    print(f"  wrong-way promotions {share(count(outcomes, 'promote'), n)}")
    return ok


def report_staged(args: argparse.Namespace, policy: Policy, pool: ProcessPoolExecutor) -> None:
    """The full staged flow: each look's units split by the stage weight at random."""
    looks, per_look, n = args.staged_looks, args.staged_units, args.staged_experiments
    stages = " -> ".join(f"{s:g}%" for s in policy.stages)
    print(
        f"Staged flow {stages}: {looks} looks of {per_look} new units split by the stage "
        f"weight (horizon {looks * per_look} units), {n} experiments each:"
    )
    for offset, (name, rate) in enumerate(
        (("A/A", BASE_RATE), ("60% -> 65%", POWER_RATE), ("60% -> 50%", DROP_RATE))
    ):
        seeds = [[args.seed, offset, i] for i in range(n)]
        jobs = [
            (seeds[s], rate, looks, per_look, policy.to_dict())
            for s in _chunks(n, args.workers * 4)
        ]
        outcomes = [o for chunk in pool.map(_staged_chunk, jobs) for o in chunk]
        decided = [o for o in outcomes if o.action in ("promote", "rollback")]
        challenger = [o.units["challenger"] for o in decided]
        median = f"; median challenger units at the decision {statistics.median(challenger):.0f}"
        print(
            f"  {name:11s} promoted {share(count(outcomes, 'promote'), n)}, rolled back "
            f"{share(count(outcomes, 'rollback'), n)}{median if decided else ''}"
        )


def run(args: argparse.Namespace) -> bool:
    policy = Policy()
    rng = np.random.default_rng(args.seed)
    looks, per_look = args.looks, args.units_per_look
    horizon = looks * per_look
    units = per_look * np.arange(1, looks + 1, dtype=np.int64)
    eligible = int((units >= max(policy.min_units, policy.min_rated)).sum())
    print(
        f"Decision rule: policy defaults (one-sided always-valid alpha {policy.alpha:g}, "
        f"mixing sd {policy.mixing_sd:g}, min_units {policy.min_units}, min_rated "
        f"{policy.min_rated}) at the last stage ({policy.stages[-1]:g}% challenger)."
    )
    print(
        f"Each experiment: {looks} looks x {per_look} units per arm (horizon {horizon} units "
        f"per arm, {eligible} looks past the minimums); seed {args.seed}; "
        f"{args.workers} worker processes.\n"
    )
    scenarios = [
        Scenario("aa", BASE_RATE, args.experiments),
        Scenario("power", POWER_RATE, args.power_experiments),
        Scenario("rollback", DROP_RATE, args.rollback_experiments),
    ]
    results: list[bool] = []
    started, total_cpu = time.perf_counter(), 0.0
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for scenario in scenarios:
            size = {"experiments": scenario.experiments, "looks": looks, "units_per_look": per_look}
            champion = thumbs_paths(rng, BASE_RATE, **size)
            challenger = thumbs_paths(rng, scenario.challenger_rate, **size)
            t0 = time.perf_counter()
            outcomes, cpu = run_single_stage(
                champion, challenger, per_look, policy, pool, args.workers
            )
            seconds = time.perf_counter() - t0
            if scenario.name == "aa":
                z = naive_z(champion, challenger, units, min_units=policy.min_units)
                decisions, _ = naive_z_decisions(z, alpha=policy.alpha)
                two_sided = int(
                    (np.abs(z) > stats.norm.ppf(1 - policy.alpha / 2)).any(axis=1).sum()
                )
                naive = (int((decisions == 1).sum()), two_sided)
                results.append(report_aa(outcomes, naive, eligible))
            elif scenario.name == "power":
                results.append(report_power(outcomes, horizon))
            else:
                results.append(report_rollback(outcomes, horizon))
            n_looks = sum(o.looks for o in outcomes)
            total_cpu += cpu
            print(
                f"  ({n_looks} looks through analyse + policy: {seconds:.0f} s wall, {cpu:.0f} s "
                f"CPU, {1000 * cpu / n_looks:.1f} ms CPU per look)\n"
            )
        if args.staged:
            report_staged(args, policy, pool)
    wall = time.perf_counter() - started
    print(
        f"\nall targets met: {all(results)}  ({wall:.0f} s wall; single-stage runs "
        f"{total_cpu:.0f} s CPU, i.e. ~{total_cpu / max(args.workers, 1):.0f} s on "
        f"{args.workers} idle cores)"
    )
    return all(results)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=2000, help="A/A experiments")
    parser.add_argument("--power-experiments", type=int, default=1000)
    parser.add_argument("--rollback-experiments", type=int, default=1000)
    parser.add_argument("--looks", type=int, default=65, help="looks per experiment")
    parser.add_argument("--units-per-look", type=int, default=40, help="new units per arm")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--staged", action="store_true", help="also run the staged flow")
    parser.add_argument("--staged-experiments", type=int, default=100)
    parser.add_argument("--staged-looks", type=int, default=150)
    parser.add_argument("--staged-units", type=int, default=80, help="units per look, both arms")
    parser.add_argument("--quick", action="store_true", help="400 / 200 / 200 experiments")
    args = parser.parse_args()
    if args.quick:
        args.experiments, args.power_experiments, args.rollback_experiments = 400, 200, 200
        args.staged_experiments = 40
    return args


def main() -> None:
    raise SystemExit(0 if run(parse_args()) else 1)


if __name__ == "__main__":
    main()
