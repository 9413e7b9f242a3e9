"""``benchmarks/sequential_rules.py`` gives the real rules' numbers; the scenarios of
``benchmarks/sequential.py`` run and decide the obvious cases."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from numpy.testing import assert_allclose

from experiments.latency import compare_latency, tail_test
from experiments.policy import Policy
from experiments.rates import compare_rates
from experiments.sequential import msprt
from experiments.srm import check_srm
from experiments.stats import PhasedSums

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TAU2 = 0.05**2


@pytest.fixture(scope="module")
def rules() -> Iterator[ModuleType]:
    """The vectorised rules, imported as the script imports them: by name, from their folder
    (a script's own folder is on its ``sys.path``; the benchmarks are not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("sequential_rules")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def bench(rules: ModuleType) -> ModuleType:
    """The scenarios; they import ``sequential_rules``, which ``rules`` made importable."""
    spec = importlib.util.spec_from_file_location(
        "benchmark_sequential", BENCHMARKS / "sequential.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_msprt_looks_and_running_minimum(rules: ModuleType) -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(0.0, 0.03, (6, 30))
    se = rng.uniform(0.004, 0.05, (6, 30))
    se[0, 3] = 0.0  # "insufficient": the real function keeps the previous p-values
    for null in (0.0, -0.02):
        two, greater, less = rules.msprt_looks(d, se, tau2=TAU2, null=null)
        for r in range(d.shape[0]):
            state = None
            running = np.ones(3)
            for t in range(d.shape[1]):
                real = msprt(d[r, t], se[r, t], tau2=TAU2, null=null, previous=state)
                if se[r, t] > 0:
                    assert_allclose(
                        [greater[r, t], less[r, t]],
                        [real.p_greater_look, real.p_less_look],
                        rtol=1e-12,
                    )
                running = np.minimum(running, [two[r, t], greater[r, t], less[r, t]])
                assert_allclose([real.p_value, real.p_greater, real.p_less], running, rtol=1e-12)
                state = real.state()


def _phased(
    rng: np.random.Generator,
    units: int,
    phases: int,
    mean: float,
    span: bool,
    skip_phase: int | None = None,
) -> PhasedSums:
    """Per-unit data; with ``span`` a unit may rate in several phases (cross-phase
    products), else each unit rates in one phase."""
    y = rng.poisson(1.2, (units, phases)) * (rng.random((units, phases)) < 0.6)
    if not span:
        one = np.zeros((units, phases), dtype=bool)
        one[np.arange(units), rng.integers(0, phases, units)] = True
        y = (1 + rng.poisson(1.0, (units, phases))) * one
    if skip_phase is not None:
        y[:, skip_phase] = 0
    x = rng.binomial(y, rng.beta(9 * mean, 9 * (1 - mean), units)[:, None])
    keep = y.sum(axis=1) > 0
    x, y = x[keep].astype(float), y[keep].astype(float)

    def matrix(m: np.ndarray) -> tuple[tuple[float, ...], ...]:
        return tuple(tuple(float(v) for v in row) for row in m)

    return PhasedSums(
        units=tuple(int(v) for v in (y > 0).sum(axis=0)),
        sum_x=tuple(float(v) for v in x.sum(axis=0)),
        sum_y=tuple(float(v) for v in y.sum(axis=0)),
        xx=matrix(x.T @ x),
        xy=matrix(x.T @ y),
        yy=matrix(y.T @ y),
        distinct_units=int(keep.sum()),
    )


def _vectorised(rules: ModuleType, arms: list[PhasedSums], diagonal: bool) -> object:
    def matrices(name: str) -> np.ndarray:
        m = np.array([getattr(s, name) for s in arms])
        return np.diagonal(m, axis1=1, axis2=2).copy() if diagonal else m

    return rules.ArmSums(
        np.array([s.units for s in arms], dtype=np.int64),
        np.array([s.sum_x for s in arms]),
        np.array([s.sum_y for s in arms]),
        matrices("xx"),
        matrices("xy"),
        matrices("yy"),
    )


@pytest.mark.parametrize(("phases", "diagonal"), [(1, True), (2, False), (3, False), (3, True)])
def test_stratified_difference_is_compare_rates(
    rules: ModuleType, phases: int, diagonal: bool
) -> None:
    """Units spanning phases (full matrices), or each in one phase (the benchmark's sums)."""
    rng = np.random.default_rng(phases)
    span = not diagonal
    champions = [_phased(rng, int(rng.integers(150, 3000)), phases, 0.6, span) for _ in range(8)]
    challengers = [_phased(rng, int(rng.integers(150, 600)), phases, 0.63, span) for _ in range(8)]
    if phases > 1:  # a phase without challenger data drops out of the weights
        challengers[0] = _phased(rng, 400, phases, 0.63, span, skip_phase=0)
    a, b = _vectorised(rules, champions, diagonal), _vectorised(rules, challengers, diagonal)
    for vec_a, vec_b, real_a, real_b in (
        (a, b, champions, challengers),
        (
            rules.pooled(a),
            rules.pooled(b),
            [s.pooled() for s in champions],
            [s.pooled() for s in challengers],
        ),
    ):
        d, se = rules.stratified_difference(vec_a, vec_b)
        _, p_greater, p_less = rules.msprt_looks(d, se, tau2=TAU2)
        for r in range(len(champions)):
            real = compare_rates(real_a[r], real_b[r], tau2=TAU2)
            assert real.sequential is not None
            assert real.difference is not None and real.std_error is not None
            assert_allclose(
                [d[r], se[r], p_greater[r], p_less[r]],
                [
                    real.difference,
                    real.std_error,
                    real.sequential.p_greater_look,
                    real.sequential.p_less_look,
                ],
                rtol=1e-9,
            )


def test_srm_running_minimum_and_chi_square(rules: ModuleType) -> None:
    rng = np.random.default_rng(5)
    for share in (0.05, 0.25):
        counts = np.stack(
            [
                rng.poisson(10 * (1 - share), (4, 40)).cumsum(axis=1),
                rng.poisson(10 * share * 0.85, (4, 40)).cumsum(axis=1),
            ],
            axis=-1,
        )
        counts[:, 0] = 0  # no units yet
        running = np.minimum.accumulate(rules.srm_p_look(counts, share), axis=1)
        chi2 = rules.chi2_p(counts, share)
        weights = {"champion": 100 - 100 * share, "challenger": 100 * share}
        for r in range(counts.shape[0]):
            state = None
            for t in range(counts.shape[1]):
                units = {"champion": int(counts[r, t, 0]), "challenger": int(counts[r, t, 1])}
                real = check_srm(units, weights, alpha=0.001, previous=state)
                assert real.p_value == pytest.approx(running[r, t], rel=1e-10)
                assert chi2[r, t] == pytest.approx(
                    1.0 if real.chi2_p is None else real.chi2_p, rel=1e-9
                )
                state = real.state()


def test_quantile_index_lands_where_numpy_does(rules: ModuleType) -> None:
    # Every size up to 2,000, then where 0.95 (n - 1) is a whole number (rounding decides
    # on which side ceil lands) up to the largest pooled sample, 2 x 20,000.
    n = np.unique(np.concatenate([np.arange(1, 2001), np.arange(1, 40_002, 20)]))
    higher, _ = rules.quantile_index(n, 0.95, "higher")
    lower, gamma = rules.quantile_index(n, 0.95, "linear")
    expected_higher = [int(np.quantile(np.arange(k), 0.95, method="higher")) for k in n]
    assert higher.tolist() == expected_higher
    expected_linear = [float(np.percentile(np.arange(k, dtype=float), 95)) for k in n]
    assert_allclose(lower + gamma, expected_linear, rtol=1e-12)


def test_fenwick_rows(rules: ModuleType) -> None:
    rng = np.random.default_rng(2)
    tree = rules.RowFenwick(3, 37)
    present = np.zeros((3, 38), dtype=int)
    for _ in range(5):
        rows = rng.integers(0, 3, 20)
        positions = rng.integers(1, 38, 20)
        tree.add(rows, positions)
        np.add.at(present, (rows, positions), 1)
    rows = np.repeat(np.arange(3), 38)
    positions = np.tile(np.arange(38), 3)
    assert tree.prefix(rows, positions).tolist() == present.cumsum(axis=1).ravel().tolist()
    for r in range(3):
        ks = np.arange(1, present[r].sum() + 1)
        expected = np.searchsorted(present[r].cumsum(), ks)  # first position reaching k
        assert tree.kth(np.full(ks.size, r), ks).tolist() == expected.tolist()


def test_latency_looks_are_tail_test_and_compare_latency(
    bench: ModuleType, rules: ModuleType
) -> None:
    rng = np.random.default_rng(3)
    cap = 700  # the champion passes it: samples keep each arm's first requests
    draws = bench.draw_latency(
        rng, reps=4, looks=24, units_per_look=30.0, challenger_share=0.25, ratio=1.4, cap=cap
    )
    seen = rules.latency_looks(draws, bound=1.5, tau2=TAU2, cap=cap)
    assert seen.champion_n[:, -1].max() == cap
    checked = 0
    for r in range(4):
        for look in (0, *rng.choice(np.arange(1, 24), 6, replace=False)):
            na, nb = int(seen.champion_n[r, look]), int(seen.challenger_n[r, look])
            a, b = draws.champion[r, :na], draws.challenger[r, :nb]
            if min(na, nb) < 20:
                assert seen.p_greater_look[r, look] == 1.0 and math.isnan(seen.difference[r, look])
                continue
            real = tail_test(a, b, bound=1.5, tau2=TAU2, alpha=0.05)
            assert real.sequential is not None
            assert real.difference is not None and real.std_error is not None
            assert_allclose(
                [seen.difference[r, look], seen.std_error[r, look], seen.p_greater_look[r, look]],
                [real.difference, real.std_error, real.sequential.p_greater_look],
                rtol=1e-12,
            )
            old = compare_latency(a, b)
            assert old.p95_ratio is not None and old.mann_whitney_p is not None
            assert old.hodges_lehmann is not None
            assert_allclose(seen.p95_ratio[r, look], old.p95_ratio, rtol=1e-12)
            assert_allclose(seen.mann_whitney_p[r, look], old.mann_whitney_p, rtol=1e-9)
            if old.mann_whitney_p < 0.5:
                assert seen.shift_positive[r, look] == (old.hodges_lehmann > 0)
            checked += 1
    assert checked >= 12


TINY = dict(reps=40, days=1.0, look_seconds=600, latency_reps=20, latency_look_seconds=3600)


@pytest.mark.parametrize("name", ["aa", "srm", "latency", "latency50", "schedule", "staged"])
def test_scenarios_run_at_tiny_sizes(bench: ModuleType, name: str) -> None:
    settings = bench.Settings(**TINY)
    section = bench.SCENARIOS[name](settings, Policy())
    assert section.rates and section.checks and section.lines
    for value in section.rates.values():
        assert value.n in (settings.reps, settings.latency_reps)
        assert 0.0 <= value.value <= 1.0
    for days in section.days.values():
        assert math.isinf(days) or 0.0 < days <= settings.days
    assert len(bench.summary(section.checks)) == len(section.checks) + 1


def test_staged_flow_decides_the_obvious(bench: ModuleType) -> None:
    common = dict(
        reps=30,
        looks=3 * 48,
        look_seconds=1800,
        units_per_day=5000.0,
        icc=0.1,
        champion_rate=0.5,
        policy=Policy(),
    )
    better = bench.run_staged(np.random.default_rng(7), challenger_rate=0.8, **common)
    assert (better.action == bench.PROMOTE).all()
    assert (better.advance_look[:, 0] < better.advance_look[:, 1]).all()
    assert (better.advance_look[:, 1] < better.end_look).all()
    worse = bench.run_staged(np.random.default_rng(8), challenger_rate=0.2, **common)
    assert (worse.action == bench.ROLLBACK).all() and (worse.advance_look == -1).all()


def test_srm_and_latency_catch_gross_faults(bench: ModuleType) -> None:
    srm = bench.run_srm(
        np.random.default_rng(9),
        reps=20,
        looks=200,
        units_per_look=5.0,
        share=0.25,
        kept=0.5,
        alpha=0.001,
        concentrations=(100.0, 1000.0),
    )
    assert (srm.new[100.0] >= 0).all() and (srm.old >= 0).all()
    assert (srm.new[1000.0] >= 0).mean() > 0.8  # a narrower prior: slower on a gross fault
    slow = bench.run_latency(
        np.random.default_rng(10),
        reps=10,
        looks=24,
        units_per_look=50.0,
        challenger_share=0.25,
        ratio=4.0,
        policy=Policy(),
    )
    assert (slow.new >= 0).all() and (slow.old >= 0).all()
