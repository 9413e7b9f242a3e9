"""The decision policy under continuous monitoring: its error rates and power, by simulation.

The evaluator looks at a canary every 30 s for days; a rule that is valid at one look is not
valid at 20,000. This benchmark applies the policy's rules at every look of simulated
canaries and counts how often they fire. ``analyse`` costs milliseconds a look, so 2,000
replications x 20,160 looks cannot call it: the rules are **re-implemented, vectorised over
replications**, in ``benchmarks/sequential_rules.py`` (numpy; a Python loop over looks), and
``tests/experiments/test_sequential_benchmark.py`` checks on random looks that each replica
gives the real function's numbers: :func:`experiments.rates.compare_rates` (stratified
difference and its delta-method standard error), :func:`experiments.sequential.msprt`
(this look's one-sided p-values, running minima), :func:`experiments.srm.check_srm` (its
``log_bayes_factor`` is vectorised already and is called as it is),
:func:`experiments.latency.tail_test`, and for the old rules the chi-square and
:func:`experiments.latency.compare_latency` (p95 ratio, Mann-Whitney). As
:func:`experiments.analysis.analyse` does, the thumbs test starts, and keeps its running
minimum, once each arm has ``min_rated_units`` rated units; the latency test once each arm
has ``min_guardrail_units`` units, with its running minimum per stage; the SRM test runs
from the first unit, afresh in each stage.

Traffic. Units (users) arrive as a Poisson process, are assigned once by the weight in force
when they arrive and never come back, so every unit lies in one phase. A unit's thumbs-up
probability is drawn from a Beta with the arm's (or the day's) mean and intra-unit
correlation ``--icc`` 0.1 (a + b = 1/icc - 1); it gives 1 + Poisson(1) ratings at once, a
binomial number of them thumbs up, so the data are clustered and the delta method has work to
do. Units arriving between two looks are seen at the later one. For latency each unit sends
1 + Poisson(1) requests at once with independent log-normal latencies (``--latency-sigma``
1.0: p50 0.39 s, p95 2 s; answer lengths vary, so the tail is long).

Scenarios (``--seed``; every proportion with its 95% Wilson interval; each scenario draws
from its own stream, so its figures do not depend on which others run):

1. A/A at the first stage (5% challenger), ``--units-per-day`` 1,500, looks every 30 s for
   7 days: false "better" (the advance rule: this look's one-sided p < alpha with
   ``min_units`` units per arm) and false "worse" (rollback: running minimum); the
   anytime-valid SRM's false halts beside the old rule (chi-square p < 0.001 at any look
   from the first unit).
2. SRM detection, the challenger losing 10% of its units (logging drops them): at the 5%
   stage (1,500 and the largest ``--power-units-per-day`` units/day) and the 25% stage,
   detection within 7 days and median time to it; false halts at 25%. The test's prior
   concentration k is ``experiments.srm.CONCENTRATION``; two larger k are shown beside it
   (reported only: the policy does not use them).
3. Latency guardrail at the 5% (3a) and 50% (3b) stage: the tail test
   (``tail_test(champion, challenger, bound=1.5, tau2=tail_mixing_sd**2)``, rollback when
   the running minimum of ``p_greater`` < alpha) on each arm's first 20,000 requests of
   the stage, beside the old rule (raw p95 ratio > 1.5 and two-sided Mann-Whitney p < 0.001
   with a positive Hodges-Lehmann shift, at any look from 100 requests per arm). True p95
   ratios 1.3 (inside the bound), 1.5 (on it: the test's null, so its false rollbacks are
   its type I error) and, at 5%, 2.0 (past it: detection and time). **Looks every
   ``--latency-look-minutes`` 10, not 30 s**: the pooled order statistic is kept exactly in
   per-replication Fenwick trees, but each look still costs ~60 numpy calls. Fewer looks
   can only lower the rates of a running-minimum rule (a subset of its looks).
4. A/A on a forced schedule (5% from day 0, 25% from day 2, 50% from day 4, whatever the
   data) while the base rate drifts (day 0 is a Saturday: 45% at weekends, 65% on weekdays,
   both arms alike): false "better" (running minimum of the one-sided p < alpha) with the
   estimate stratified by phase (Mantel-Haenszel, :mod:`experiments.rates`) beside the
   pooled one, both after the thumbs burn-in.
5. The staged flow 5% -> 25% -> 50%, each stage a phase: SRM halt (window: the stage),
   rollback on the running minimum of ``p_less``, advance or promote on this look's
   ``p_greater`` with ``min_units`` per arm in the stage, the ``max_units`` cap. No error,
   latency or vote data, so no guardrail acts. True 60% -> 65% at each
   ``--power-units-per-day`` (1,500: where power is informative; 5,000), and A/A at the
   first: P(promote within 7 days), median days, wrong-way decisions.

Run ``.venv/bin/python benchmarks/sequential.py``: about 13 CPU-minutes in two worker
processes (``--workers``), so about 6-7 minutes on two idle cores; ``--quick`` (300
replications, looks every 5 minutes, 30 for latency) about one CPU-minute; ``--only`` runs
some scenarios. The exit status is 0 when every target is met.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace

import numpy as np
from scipy import stats
from sequential_rules import (
    OLD_SRM_CRITICAL,
    SAMPLE_CAP,
    ArmSums,
    BoolArray,
    FloatArray,
    IntArray,
    LatencyDraws,
    ThumbsTest,
    UnitBatch,
    chi2_stat,
    latency_looks,
    pooled,
    srm_p_look,
)

from experiments.policy import Policy
from experiments.srm import CONCENTRATION

DAY_SECONDS = 86_400
Z_95 = float(stats.norm.ppf(0.95))
#: Old rules, side by side (the old SRM rule's is in sequential_rules).
OLD_LATENCY_ALPHA = 0.001
OLD_MIN_REQUESTS = 100  # the old min_guardrail_requests


# -- figures ---------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (Wilson, JASA 22, 1927)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Rate:
    """A proportion of replications, with its Wilson interval."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def __str__(self) -> str:
        lo, hi = wilson(self.k, self.n)
        return f"{100 * self.value:5.1f}% [{100 * lo:4.1f}, {100 * hi:4.1f}]"


def rate(mask: BoolArray) -> Rate:
    return Rate(int(np.count_nonzero(mask)), int(mask.size))


def median_days(days: FloatArray) -> float:
    """Median over all replications, ``inf`` for those that never got there."""
    return float(np.median(days)) if days.size else float("nan")


def fmt_days(value: float, horizon: float) -> str:
    return f"> {horizon:g} d" if not np.isfinite(value) else f"{value:.2f} d"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the summary table."""

    scenario: str
    figure: str
    value: str
    target: str
    passed: bool | None  # None: reported, no target


def check_at_most(scenario: str, figure: str, r: Rate, target: float) -> Check:
    lo, hi = wilson(r.k, r.n)
    note = " (CI spans it)" if lo <= target < hi else ""
    return Check(scenario, figure, str(r), f"<= {100 * target:g}%{note}", r.value <= target)


def first_true(mask: BoolArray) -> IntArray:
    """Index of the first True along the last axis, -1 where there is none."""
    return np.where(mask.any(axis=-1), mask.argmax(axis=-1), -1).astype(np.int64)


def look_days(index: IntArray, look_seconds: int) -> FloatArray:
    """Days at look ``index`` (0-based; look i is at (i + 1) x interval), inf for -1."""
    days = (index + 1) * look_seconds / DAY_SECONDS
    return np.where(index >= 0, days, np.inf)


# -- traffic ----------------------------------------------------------------------------------


def draw_units(rng: np.random.Generator, counts: IntArray, mean: float, icc: float) -> UnitBatch:
    """``counts[r]`` new units for replication r: thumbs-up probability ~ Beta with ``mean``
    and intra-unit correlation ``icc`` (a + b = 1/icc - 1), 1 + Poisson(1) ratings each."""
    reps = counts.size
    rows = np.repeat(np.arange(reps), counts)
    strength = 1.0 / icc - 1.0
    p = rng.beta(mean * strength, (1.0 - mean) * strength, rows.size)
    ratings = 1 + rng.poisson(1.0, rows.size)
    x = rng.binomial(ratings, p).astype(np.float64)
    y = ratings.astype(np.float64)

    def per_rep(values: FloatArray) -> FloatArray:
        return np.bincount(rows, weights=values, minlength=reps).astype(np.float64)

    return UnitBatch(counts, per_rep(x), per_rep(y), per_rep(x * x), per_rep(x * y), per_rep(y * y))


def draw_latency(
    rng: np.random.Generator,
    *,
    reps: int,
    looks: int,
    units_per_look: float,
    challenger_share: float,
    ratio: float,
    champion_p95: float = 2000.0,
    sigma: float = 0.5,
    cap: int = SAMPLE_CAP,
) -> LatencyDraws:
    """Units arrive as in the thumbs scenarios and send 1 + Poisson(1) requests at once
    (``u`` units send ``u + Poisson(u)``); log-normal latencies, the challenger's the
    champion's distribution x ``ratio`` (so its true p95 is ``ratio`` x the champion's)."""
    u_a = rng.poisson(units_per_look * (1 - challenger_share), (reps, looks))
    u_b = rng.poisson(units_per_look * challenger_share, (reps, looks))
    n_a = (u_a + rng.poisson(u_a)).cumsum(axis=1)
    n_b = (u_b + rng.poisson(u_b)).cumsum(axis=1)
    mu = np.log(champion_p95) - Z_95 * sigma
    size_a = int(min(n_a[:, -1].max(initial=0), cap))
    size_b = int(min(n_b[:, -1].max(initial=0), cap))
    return LatencyDraws(
        champion=rng.lognormal(mu, sigma, (reps, size_a)),
        challenger=rng.lognormal(mu + np.log(ratio), sigma, (reps, size_b)),
        champion_units=u_a.cumsum(axis=1),
        challenger_units=u_b.cumsum(axis=1),
        champion_requests=n_a,
        challenger_requests=n_b,
    )


def _mark(first: IntArray, event: BoolArray, look: int) -> None:
    first[(first < 0) & event] = look


@dataclass(frozen=True, slots=True)
class ScheduleOutcome:
    """First look (0-based, -1: never) of each event, per replication."""

    better: IntArray  # running minimum of p_greater < alpha (stratified)
    advance: IntArray  # this look's p_greater < alpha with min_units per arm in the phase
    worse: IntArray  # running minimum of p_less < alpha (rollback)
    pooled_better: IntArray  # the same on the pooled estimate (-1 when not asked)
    pooled_worse: IntArray


def run_schedule(
    rng: np.random.Generator,
    *,
    reps: int,
    looks: int,
    look_seconds: int,
    units_per_day: float,
    schedule: Sequence[tuple[float, float]],
    base_rate: Callable[[int], float],
    icc: float,
    policy: Policy,
    with_pooled: bool = False,
) -> ScheduleOutcome:
    """Looks at an A/A canary whose weights follow ``schedule`` ((start day, challenger %),
    each a phase) whatever the data; ``base_rate(day)`` is both arms' mean thumbs-up rate."""
    starts = np.array([round(day * DAY_SECONDS) for day, _ in schedule])
    phases = len(schedule)
    champion, challenger = ArmSums.zeros(reps, phases), ArmSums.zeros(reps, phases)
    stratified, pooled_test = ThumbsTest.start(reps, policy), ThumbsTest.start(reps, policy)
    first = {f.name: np.full(reps, -1, dtype=np.int64) for f in fields(ScheduleOutcome)}
    per_look = units_per_day * look_seconds / DAY_SECONDS
    for look in range(looks):
        begins = look * look_seconds  # units of this look arrive after the previous look
        k = int(np.searchsorted(starts, begins, side="right") - 1)
        share = schedule[k][1] / 100.0
        mean = base_rate(begins // DAY_SECONDS)
        phase = np.full(reps, k)
        champion.add(phase, draw_units(rng, rng.poisson(per_look * (1 - share), reps), mean, icc))
        challenger.add(phase, draw_units(rng, rng.poisson(per_look * share, reps), mean, icc))
        p_greater = stratified.look(champion, challenger)
        enough = np.minimum(champion.units[:, k], challenger.units[:, k]) >= policy.min_units
        _mark(first["advance"], (p_greater < policy.alpha) & enough, look)
        _mark(first["better"], stratified.greater < policy.alpha, look)
        _mark(first["worse"], stratified.less < policy.alpha, look)
        if with_pooled:
            pooled_test.look(pooled(champion), pooled(challenger))
            _mark(first["pooled_better"], pooled_test.greater < policy.alpha, look)
            _mark(first["pooled_worse"], pooled_test.less < policy.alpha, look)
    return ScheduleOutcome(**first)


#: Outcomes of the staged flow.
CONTINUE, PROMOTE, ROLLBACK, HALT, INCONCLUSIVE = range(5)


@dataclass(frozen=True, slots=True)
class StagedOutcome:
    action: IntArray  # PROMOTE | ROLLBACK | HALT | INCONCLUSIVE, or CONTINUE at the horizon
    end_look: IntArray  # look of that decision, -1 when still running
    advance_look: IntArray  # (R, stages - 1): look of each advance, -1 if none


def run_staged(
    rng: np.random.Generator,
    *,
    reps: int,
    looks: int,
    look_seconds: int,
    units_per_day: float,
    champion_rate: float,
    challenger_rate: float,
    icc: float,
    policy: Policy,
) -> StagedOutcome:
    """The policy's flow through its stages (module docstring, scenario 5)."""
    stages = np.asarray(policy.stages) / 100.0
    last = len(stages) - 1
    champion, challenger = ArmSums.zeros(reps, len(stages)), ArmSums.zeros(reps, len(stages))
    thumbs = ThumbsTest.start(reps, policy)
    stage = np.zeros(reps, dtype=np.int64)
    srm = np.ones(reps)  # running minimum over the stage's looks (the SRM window)
    active = np.ones(reps, dtype=bool)
    action = np.full(reps, CONTINUE)
    end_look = np.full(reps, -1, dtype=np.int64)
    advance_look = np.full((reps, last), -1, dtype=np.int64)
    rows = np.arange(reps)
    per_look = units_per_day * look_seconds / DAY_SECONDS
    for look in range(looks):
        share = stages[stage]
        n_a = np.where(active, rng.poisson(per_look * (1 - share)), 0)
        n_b = np.where(active, rng.poisson(per_look * share), 0)
        champion.add(stage, draw_units(rng, n_a, champion_rate, icc))
        challenger.add(stage, draw_units(rng, n_b, challenger_rate, icc))
        in_stage = np.stack([champion.units[rows, stage], challenger.units[rows, stage]], axis=1)
        for k, w in enumerate(stages):  # log_bayes_factor takes one set of shares
            at = stage == k
            if at.any():
                srm[at] = np.minimum(srm[at], srm_p_look(in_stage[at], float(w)))
        p_greater = thumbs.look(champion, challenger)
        halt = active & (srm < policy.srm_alpha)
        rollback = active & ~halt & (thumbs.less < policy.alpha)
        enough = in_stage.min(axis=1) >= policy.min_units
        better = active & ~halt & ~rollback & (p_greater < policy.alpha) & enough
        promote = better & (stage == last)
        advance = better & (stage < last)
        capped = active & ~halt & ~rollback & ~better
        if policy.max_units is not None:
            capped &= challenger.distinct >= policy.max_units
        else:
            capped[:] = False
        for code, event in (
            (HALT, halt),
            (ROLLBACK, rollback),
            (PROMOTE, promote),
            (INCONCLUSIVE, capped),
        ):
            action[event] = code
            end_look[event] = look
        active &= ~(halt | rollback | promote | capped)
        advance_look[advance, stage[advance]] = look
        stage[advance] += 1
        srm[advance] = 1.0  # a new stage is a new SRM window
        if not active.any():
            break
    return StagedOutcome(action, end_look, advance_look)


@dataclass(frozen=True, slots=True)
class SrmOutcome:
    new: dict[float, IntArray]  # prior concentration -> first look of a halt, -1 never
    old: IntArray  # first look with chi-square p < 0.001


def run_srm(
    rng: np.random.Generator,
    *,
    reps: int,
    looks: int,
    units_per_look: float,
    share: float,
    kept: float,
    alpha: float,
    concentrations: Sequence[float] = (CONCENTRATION,),
    chunk: int = 100,
) -> SrmOutcome:
    """Unit counts of one stage; the challenger keeps only ``kept`` of its units. The
    anytime-valid test runs with each prior concentration on the same counts."""
    new: dict[float, list[IntArray]] = {k: [] for k in concentrations}
    old = []
    for start in range(0, reps, chunk):
        size = (min(chunk, reps - start), looks)
        counts = np.stack(
            [
                rng.poisson(units_per_look * (1 - share), size).cumsum(axis=1),
                rng.poisson(units_per_look * share * kept, size).cumsum(axis=1),
            ],
            axis=-1,
        )
        for k, found in new.items():
            p = srm_p_look(counts, share, concentration=k)
            found.append(first_true(np.minimum.accumulate(p, axis=1) < alpha))
        old.append(first_true(chi2_stat(counts, share) > OLD_SRM_CRITICAL))
    return SrmOutcome({k: np.concatenate(v) for k, v in new.items()}, np.concatenate(old))


@dataclass(frozen=True, slots=True)
class LatencyOutcome:
    new: IntArray  # first look where the tail test's running minimum < alpha, -1 never
    old: IntArray  # first look where ratio > bound and Mann-Whitney p < 0.001 (shift > 0)


def run_latency(
    rng: np.random.Generator,
    *,
    reps: int,
    looks: int,
    units_per_look: float,
    challenger_share: float,
    ratio: float,
    policy: Policy,
    sigma: float = 0.5,
    chunk: int = 500,
) -> LatencyOutcome:
    """The tail test from ``min_guardrail_units`` units per arm; the old rule, as it was,
    from ``OLD_MIN_REQUESTS`` requests per arm."""
    new, old = [], []
    bound = policy.max_latency_p95_ratio
    for start in range(0, reps, chunk):
        draws = draw_latency(
            rng,
            reps=min(chunk, reps - start),
            looks=looks,
            units_per_look=units_per_look,
            challenger_share=challenger_share,
            ratio=ratio,
            sigma=sigma,
        )
        seen = latency_looks(draws, bound=bound, tau2=policy.tail_mixing_sd**2)
        ready = (
            np.minimum(draws.champion_units, draws.challenger_units) >= policy.min_guardrail_units
        )
        running = np.minimum.accumulate(np.where(ready, seen.p_greater_look, 1.0), axis=1)
        new.append(first_true(running < policy.alpha))
        fired = (
            (np.minimum(draws.champion_requests, draws.challenger_requests) >= OLD_MIN_REQUESTS)
            & (seen.p95_ratio > bound)
            & (seen.mann_whitney_p < OLD_LATENCY_ALPHA)
            & seen.shift_positive
        )
        old.append(first_true(fired))
    return LatencyOutcome(np.concatenate(new), np.concatenate(old))


# -- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    seed: int = 20240601
    reps: int = 2000
    days: float = 7.0
    look_seconds: int = 30
    units_per_day: float = 1500.0
    icc: float = 0.1
    base_rate: float = 0.60
    power_units_per_day: tuple[float, ...] = (1500.0, 5000.0)
    power_rate: float = 0.65
    latency_reps: int = 2000
    latency_look_seconds: int = 600
    latency_sigma: float = 1.0

    def looks(self, look_seconds: int | None = None) -> int:
        return int(self.days * DAY_SECONDS) // (look_seconds or self.look_seconds)

    def rng(self, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *stream])


@dataclass(slots=True)
class Section:
    """One scenario's printed lines, its figures and its rows of the summary table."""

    title: str
    lines: list[str] = field(default_factory=list)
    rates: dict[str, Rate] = field(default_factory=dict)
    days: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def add(self, key: str, label: str, value: Rate) -> Rate:
        self.rates[key] = value
        self.lines.append(f"  {label:58s} {value}")
        return value


def _traffic(s: Settings, units_per_day: float, look_seconds: int, reps: int) -> str:
    return (
        f"  {reps} replications, seed {s.seed}; {units_per_day:g} new units/day (Poisson), "
        f"looks every {look_seconds} s for {s.days:g} days ({s.looks(look_seconds)} looks)"
    )


def aa_first_stage(s: Settings, policy: Policy) -> Section:
    """Scenario 1."""
    share = policy.stages[0]
    sec = Section(
        f"1. A/A at the first stage ({share:g}% challenger), {100 * s.base_rate:g}% "
        "thumbs-up both arms"
    )
    sec.lines.append(_traffic(s, s.units_per_day, s.look_seconds, s.reps))
    sec.lines.append(
        f"  units: Beta thumbs-up probability (ICC {s.icc:g}), 1 + Poisson(1) ratings each; "
        f"policy defaults (alpha {policy.alpha:g}, mixing sd {policy.mixing_sd:g}, "
        f"min_rated_units {policy.min_rated_units}, min_units {policy.min_units})"
    )
    out = run_schedule(
        s.rng(1),
        reps=s.reps,
        looks=s.looks(),
        look_seconds=s.look_seconds,
        units_per_day=s.units_per_day,
        schedule=[(0.0, share)],
        base_rate=lambda day: s.base_rate,
        icc=s.icc,
        policy=policy,
    )
    adv = sec.add(
        "false_advance",
        "false advance (this look's p_greater < alpha, min_units)",
        rate(out.advance >= 0),
    )
    sec.add(
        "better_min", "  running min of p_greater < alpha (no min_units)", rate(out.better >= 0)
    )
    worse = sec.add(
        "false_rollback", "false rollback (running min of p_less < alpha)", rate(out.worse >= 0)
    )
    sec.add("any", "either", rate((out.advance >= 0) | (out.worse >= 0)))
    srm = run_srm(
        s.rng(1, 1),
        reps=s.reps,
        looks=s.looks(),
        units_per_look=s.units_per_day * s.look_seconds / DAY_SECONDS,
        share=share / 100,
        kept=1.0,
        alpha=policy.srm_alpha,
    )
    new = sec.add(
        "srm_new",
        f"SRM halt, anytime-valid (alpha {policy.srm_alpha:g}, k = {CONCENTRATION:g})",
        rate(srm.new[CONCENTRATION] >= 0),
    )
    old = sec.add("srm_old", "SRM halt, OLD: chi-square p < 0.001 at any look", rate(srm.old >= 0))
    sec.checks += [
        check_at_most("1 A/A 5%", "false advance", adv, policy.alpha),
        check_at_most("1 A/A 5%", "false rollback", worse, policy.alpha),
        check_at_most("1 A/A 5%", "SRM false halt (anytime-valid)", new, 0.01),
        Check("1 A/A 5%", "SRM false halt, OLD chi-square", str(old), "(issue: ~8-9%)", None),
    ]
    return sec


#: Prior concentrations of the SRM test tried beside the default (reported, not used).
SRM_CONCENTRATIONS = (CONCENTRATION, 1_000.0, 10_000.0)


def srm_detection(s: Settings, policy: Policy) -> Section:
    """Scenario 2."""
    sec = Section("2. SRM detection: the challenger loses 10% of its units")
    sec.lines.append(
        f"  {s.reps} replications, seed {s.seed}; looks every {s.look_seconds} s "
        f"for {s.days:g} days ({s.looks()} looks); anytime-valid alpha {policy.srm_alpha:g}, "
        f"prior concentration k = {CONCENTRATION:g} (other k: what they would give)"
    )
    first, second = policy.stages[0], policy.stages[min(1, len(policy.stages) - 1)]
    busy = max(s.power_units_per_day)
    configs = [
        (first, s.units_per_day, 0.9),
        (first, busy, 0.9),
        (second, s.units_per_day, 0.9),
        (second, s.units_per_day, 1.0),
    ]
    for i, (share, per_day, kept) in enumerate(configs):
        out = run_srm(
            s.rng(2, i),
            reps=s.reps,
            looks=s.looks(),
            units_per_look=per_day * s.look_seconds / DAY_SECONDS,
            share=share / 100,
            kept=kept,
            alpha=policy.srm_alpha,
            concentrations=SRM_CONCENTRATIONS,
        )
        key = f"{share:g}_{per_day:g}"
        where = f"{share:g}% stage, {per_day:g} units/day"
        default = out.new[CONCENTRATION]
        others = ", ".join(
            f"k = {k:g}: {100 * rate(hit >= 0).value:.1f}%"
            for k, hit in out.new.items()
            if k != CONCENTRATION
        )
        if kept == 1.0:
            r = sec.add(f"{key}_aa_new", f"{where}, A/A: false halt", rate(default >= 0))
            sec.lines.append(f"    other k: {others}")
            sec.add(f"{key}_aa_old", "  OLD chi-square: false halt", rate(out.old >= 0))
            sec.checks.append(check_at_most(f"2 SRM {share:g}%", "false halt", r, 0.01))
            continue
        observed = share * kept / (100 - share * (1 - kept))
        label = f"{where} (observed share {100 * observed:.2f}%)"
        new = sec.add(f"{key}_new", f"{label}: detected", rate(default >= 0))
        sec.lines.append(f"    other k: {others}")
        old = sec.add(f"{key}_old", "  OLD chi-square: detected", rate(out.old >= 0))
        for name, hit in (("new", default), ("old", out.old)):
            days = look_days(hit, s.look_seconds)
            sec.days[f"{key}_{name}_median"] = median_days(days)
            found = days[np.isfinite(days)]
            among = f", {np.median(found):.2f} d among detected" if found.size else ""
            median = fmt_days(median_days(days), s.days)
            sec.lines.append(f"    median time to detection ({name}): {median}{among}")
        median = fmt_days(sec.days[f"{key}_new_median"], s.days)
        sec.checks.append(
            Check(
                f"2 SRM {share:g}% {per_day:g}/d",
                "10% loss detected in 7 d",
                str(new),
                f"(median {median}; OLD {100 * old.value:.1f}%)",
                None,
            )
        )
    return sec


#: True p95 ratios of scenario 3: inside the bound, on it (the test's null: its false
#: rollbacks are its type I error), past it.
LATENCY_RATIOS = {"first": (1.3, 1.5, 2.0), "last": (1.3, 1.5)}


def latency_guardrail(s: Settings, policy: Policy, which: str = "first") -> Section:
    """Scenario 3, at the first or the last stage."""
    index = 0 if which == "first" else len(policy.stages) - 1
    share = policy.stages[index]
    bound = policy.max_latency_p95_ratio
    looks = s.looks(s.latency_look_seconds)
    median_ms = 2000.0 * np.exp(-Z_95 * s.latency_sigma)
    sec = Section(
        f"3{'ab'[index > 0]}. Latency guardrail at the {share:g}% stage (bound "
        f"{bound:g}x the champion's p95)"
    )
    sec.lines.append(
        f"  {s.latency_reps} replications, seed {s.seed}; {s.units_per_day:g} units/day with "
        f"1 + Poisson(1) requests each, looks every {s.latency_look_seconds // 60} min for "
        f"{s.days:g} days ({looks} looks); log-normal latency, sigma {s.latency_sigma:g} "
        f"(champion p50 {median_ms:.0f} ms, p95 2000 ms); samples: each arm's first "
        f"{SAMPLE_CAP} requests; burn-in {policy.min_guardrail_units} units per arm "
        f"(OLD: {OLD_MIN_REQUESTS} requests)"
    )
    per_look = s.units_per_day * s.latency_look_seconds / DAY_SECONDS
    where = f"3 latency {share:g}%"
    for i, ratio in enumerate(LATENCY_RATIOS[which]):
        out = run_latency(
            s.rng(3, index, i),
            reps=s.latency_reps,
            looks=looks,
            units_per_look=per_look,
            challenger_share=share / 100,
            ratio=ratio,
            policy=policy,
            sigma=s.latency_sigma,
        )
        what = "false rollback" if ratio <= bound else "rollback (detected)"
        new = sec.add(
            f"{ratio:g}_new", f"true ratio {ratio:g}: {what}, tail test", rate(out.new >= 0)
        )
        old = sec.add(
            f"{ratio:g}_old", "  OLD: ratio > bound and Mann-Whitney p < 0.001", rate(out.old >= 0)
        )
        for name, first in (("new", out.new), ("old", out.old)):
            days = look_days(first, s.latency_look_seconds)
            sec.days[f"{ratio:g}_{name}_median"] = median_days(days)
            sec.lines.append(
                f"    median time to rollback ({name}): {fmt_days(median_days(days), s.days)}"
            )
        if ratio <= bound:
            sec.checks += [
                check_at_most(
                    f"{where} {ratio:g}x", "false rollback, tail test", new, policy.alpha
                ),
                Check(
                    f"{where} {ratio:g}x",
                    "false rollback, OLD",
                    str(old),
                    "(issue: ~40% at 1.3x)" if ratio < bound else "",
                    None,
                ),
            ]
        else:
            median = fmt_days(sec.days[f"{ratio:g}_new_median"], s.days)
            sec.checks.append(
                Check(
                    f"{where} {ratio:g}x",
                    "detected, tail test",
                    str(new),
                    f"(median {median}; OLD {100 * old.value:.1f}%)",
                    None,
                )
            )
    return sec


def latency_last_stage(s: Settings, policy: Policy) -> Section:
    return latency_guardrail(s, policy, "last")


def weekend_rate(weekday: float = 0.65, weekend: float = 0.45) -> Callable[[int], float]:
    """Both arms' mean thumbs-up rate by day; day 0 is a Saturday."""
    return lambda day: weekend if (day + 5) % 7 >= 5 else weekday


FORCED_SCHEDULE = ((0.0, 5.0), (2.0, 25.0), (4.0, 50.0))


def forced_schedule(s: Settings, policy: Policy) -> Section:
    """Scenario 4."""
    plan = ", ".join(f"{w:g}% from day {d:g}" for d, w in FORCED_SCHEDULE)
    sec = Section("4. A/A on a forced schedule with weekday/weekend drift")
    sec.lines.append(_traffic(s, s.units_per_day, s.look_seconds, s.reps))
    sec.lines.append(
        f"  challenger share {plan}; thumbs-up 45% on weekends (days 0-1), "
        "65% on weekdays, both arms"
    )
    out = run_schedule(
        s.rng(4),
        reps=s.reps,
        looks=s.looks(),
        look_seconds=s.look_seconds,
        units_per_day=s.units_per_day,
        schedule=FORCED_SCHEDULE,
        base_rate=weekend_rate(),
        icc=s.icc,
        policy=policy,
        with_pooled=True,
    )
    better = sec.add(
        "stratified_better",
        "false better, stratified by phase (running min)",
        rate(out.better >= 0),
    )
    sec.add("stratified_worse", "false worse, stratified by phase", rate(out.worse >= 0))
    pooled_better = sec.add(
        "pooled_better", "false better, OLD pooled estimate", rate(out.pooled_better >= 0)
    )
    sec.add("pooled_worse", "false worse, OLD pooled estimate", rate(out.pooled_worse >= 0))
    sec.checks += [
        check_at_most("4 forced schedule", "false better, stratified", better, policy.alpha),
        Check(
            "4 forced schedule",
            "false better, OLD pooled",
            str(pooled_better),
            "(issue: ~69%)",
            None,
        ),
    ]
    return sec


def staged_flow(s: Settings, policy: Policy) -> Section:
    """Scenario 5."""
    stages = " -> ".join(f"{w:g}%" for w in policy.stages)
    sec = Section(f"5. Staged flow {stages}, each stage a phase")
    sec.lines.append(
        f"  {s.reps} replications, seed {s.seed}; looks every {s.look_seconds} s "
        f"for {s.days:g} days ({s.looks()} looks); no guardrail data (errors, "
        "latency, votes), so only the thumbs test and the SRM decide"
    )
    runs = [(per_day, s.power_rate) for per_day in s.power_units_per_day]
    runs.append((s.power_units_per_day[0], s.base_rate))
    for i, (per_day, rate_b) in enumerate(runs):
        out = run_staged(
            s.rng(5, i),
            reps=s.reps,
            looks=s.looks(),
            look_seconds=s.look_seconds,
            units_per_day=per_day,
            champion_rate=s.base_rate,
            challenger_rate=rate_b,
            icc=s.icc,
            policy=policy,
        )
        aa = rate_b == s.base_rate
        name = f"{'aa' if aa else 'power'}_{per_day:g}"
        sec.lines.append(f"  {100 * s.base_rate:g}% -> {100 * rate_b:g}%, {per_day:g} units/day:")
        promoted = sec.add(
            f"{name}_promote", f"  promoted within {s.days:g} days", rate(out.action == PROMOTE)
        )
        rolled = sec.add(f"{name}_rollback", "  rolled back", rate(out.action == ROLLBACK))
        sec.add(f"{name}_halt", "  SRM halt", rate(out.action == HALT))
        sec.add(
            f"{name}_inconclusive",
            f"  inconclusive (max_units {policy.max_units})",
            rate(out.action == INCONCLUSIVE),
        )
        days = look_days(np.where(out.action == PROMOTE, out.end_look, -1), s.look_seconds)
        median = fmt_days(median_days(days), s.days)
        sec.days[f"{name}_promote_median"] = median_days(days)
        where = f"5 staged {'A/A' if aa else '60->65%'} {per_day:g}/d"
        if aa:
            sec.checks += [
                check_at_most(where, "false promotion", promoted, policy.alpha),
                check_at_most(where, "false rollback", rolled, policy.alpha),
            ]
            continue
        reached = ", ".join(
            f"stage {k + 2} "
            + fmt_days(median_days(look_days(out.advance_look[:, k], s.look_seconds)), s.days)
            for k in range(out.advance_look.shape[1])
        )
        sec.lines.append(
            f"      median days to promote {median} (unpromoted count as never); "
            f"median day of reaching {reached}"
        )
        sec.checks += [
            Check(where, "promoted in 7 d", str(promoted), f"(median {median})", None),
            check_at_most(where, "wrong-way rollback", rolled, policy.alpha),
        ]
    return sec


SCENARIOS: dict[str, Callable[[Settings, Policy], Section]] = {
    "aa": aa_first_stage,
    "srm": srm_detection,
    "latency": latency_guardrail,
    "latency50": latency_last_stage,
    "schedule": forced_schedule,
    "staged": staged_flow,
}


def summary(checks: Sequence[Check]) -> list[str]:
    rows = [("scenario", "figure", "value [95% CI]", "target", "")]
    for c in checks:
        verdict = "" if c.passed is None else ("pass" if c.passed else "FAIL")
        rows.append((c.scenario, c.figure, c.value, c.target, verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]


def _timed(name: str, s: Settings) -> tuple[Section, float]:
    """The scenario's section and the CPU seconds it took (wall time depends on the load)."""
    t0 = time.process_time()
    section = SCENARIOS[name](s, Policy())
    return section, time.process_time() - t0


#: Scenarios by cost, most expensive first: the order the worker processes take them in.
COST_ORDER = ("staged", "latency", "latency50", "schedule", "aa", "srm")


def run(s: Settings, names: Sequence[str], workers: int = 1) -> bool:
    """Run the scenarios (``workers`` processes), print their sections and the summary."""
    checks: list[Check] = []
    started = time.perf_counter()
    cpu = 0.0
    with ProcessPoolExecutor(max_workers=max(workers, 1)) as pool:
        futures = {
            name: pool.submit(_timed, name, s) for name in sorted(names, key=COST_ORDER.index)
        }
        for name in names:
            section, seconds = futures[name].result()
            print(section.title)
            for line in section.lines:
                print(line)
            print(f"  ({seconds:.0f} s CPU)\n", flush=True)
            checks += section.checks
            cpu += seconds
    print("Summary (rates over replications, 95% Wilson CI; pass = point estimate meets target)")
    for line in summary(checks):
        print("  " + line)
    ok = all(c.passed is not False for c in checks)
    print(
        f"\nall targets met: {ok}  ({time.perf_counter() - started:.0f} s wall, {cpu:.0f} s "
        f"CPU in {max(workers, 1)} worker processes)"
    )
    return ok


def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, list[str], int]:
    d = Settings()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--reps", type=int, default=d.reps, help="replications per scenario")
    parser.add_argument("--days", type=float, default=d.days)
    parser.add_argument("--look-seconds", type=int, default=d.look_seconds)
    parser.add_argument("--units-per-day", type=float, default=d.units_per_day)
    parser.add_argument("--icc", type=float, default=d.icc, help="intra-unit correlation")
    parser.add_argument(
        "--power-units-per-day",
        type=float,
        nargs="+",
        default=list(d.power_units_per_day),
        help="traffic levels of the staged runs (A/A at the first)",
    )
    parser.add_argument("--latency-reps", type=int, default=d.latency_reps)
    parser.add_argument("--latency-look-minutes", type=int, default=d.latency_look_seconds // 60)
    parser.add_argument(
        "--latency-sigma",
        type=float,
        default=d.latency_sigma,
        help="log-normal sigma of the latencies (1.0: p50 0.39 s for p95 2 s)",
    )
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes running scenarios side by side (figures do not change)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="300 replications, looks every 5 min (latency 30 min)"
    )
    args = parser.parse_args(argv)
    s = Settings(
        seed=args.seed,
        reps=args.reps,
        days=args.days,
        look_seconds=args.look_seconds,
        units_per_day=args.units_per_day,
        icc=args.icc,
        power_units_per_day=tuple(args.power_units_per_day),
        latency_reps=args.latency_reps,
        latency_look_seconds=60 * args.latency_look_minutes,
        latency_sigma=args.latency_sigma,
    )
    if args.quick:
        s = replace(s, reps=300, latency_reps=300, look_seconds=300, latency_look_seconds=1800)
    return s, args.only, args.workers


def main() -> None:
    settings, names, workers = parse_args()
    raise SystemExit(0 if run(settings, names, workers) else 1)


if __name__ == "__main__":
    main()
