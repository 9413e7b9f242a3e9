import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.policy import Policy
from experiments.simulation import (
    ArmTruth,
    Users,
    bernoulli_arm,
    combine,
    draw_arm,
    in_phase,
    naive_z,
    naive_z_decisions,
    random_batches,
    replay_batches,
    run_experiment,
    thumbs_paths,
)

ROOT = Path(__file__).resolve().parents[2]
LAST = len(Policy().stages) - 1


def test_draw_arm_reproduces_the_true_rates() -> None:
    rng = np.random.default_rng(7)
    truth = ArmTruth(thumbs_up=0.7, error_rate=0.1, latency_ms=250.0, latency_sigma=0.5)
    users = Users(requests_per_unit=3.0, rated_share=0.5)
    arm = draw_arm(rng, truth, 20_000, users=users)
    errors, thumbs = arm.errors.pooled(), arm.thumbs.pooled()
    assert arm.units == 20_000
    assert arm.requests / arm.units == pytest.approx(3.0, rel=0.02)
    assert errors.units == 20_000 and errors.sum_y == arm.requests
    assert errors.sum_x / errors.sum_y == pytest.approx(0.1, abs=0.005)
    successes = arm.requests - errors.sum_x
    assert thumbs.sum_y / successes == pytest.approx(0.5, abs=0.01)
    assert thumbs.sum_x / thumbs.sum_y == pytest.approx(0.7, abs=0.01)
    assert thumbs.units < arm.units  # units that rated nothing are not in the thumbs sums
    assert len(arm.latency_ms) == successes
    assert float(np.median(arm.latency_ms)) == pytest.approx(250.0, rel=0.03)
    assert draw_arm(rng, truth, 10, users=users, latency=False).latency_ms == ()


def test_one_rated_request_per_unit_is_plain_bernoulli() -> None:
    arm = draw_arm(np.random.default_rng(1), ArmTruth(0.6), 500, latency=False)
    thumbs = arm.thumbs.pooled()
    assert thumbs.units == thumbs.sum_y == 500  # the Wald case of compare_rates
    assert thumbs.sum_x == thumbs.sum_x2 == thumbs.sum_xy
    assert arm == bernoulli_arm(int(thumbs.sum_x), 500)


def test_combine_adds_disjoint_batches() -> None:
    rng = np.random.default_rng(2)
    a, b = (draw_arm(rng, ArmTruth(0.5, 0.2), n, users=Users(2.0)) for n in (30, 50))
    both = combine(a, b)
    assert both.units == 80 and both.requests == a.requests + b.requests
    assert both.errors == a.errors + b.errors and both.thumbs == a.thumbs + b.thumbs
    assert both.latency_ms == a.latency_ms + b.latency_ms


def test_users_thumb_follows_the_served_arm() -> None:
    rng = np.random.default_rng(3)
    users = Users(rated_share=0.5)
    votes = [users.thumb(rng, ArmTruth(0.8)) for _ in range(4000)]
    rated = [v for v in votes if v is not None]
    assert len(rated) / len(votes) == pytest.approx(0.5, abs=0.03)
    assert rated.count("up") / len(rated) == pytest.approx(0.8, abs=0.03)
    assert users.requests(rng, 5).min() >= 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: ArmTruth(1.5),
        lambda: ArmTruth(0.5, error_rate=-0.1),
        lambda: ArmTruth(0.5, latency_ms=0.0),
        lambda: Users(requests_per_unit=0.5),
        lambda: Users(rated_share=2.0),
    ],
)
def test_invalid_truths_are_refused(make: object) -> None:
    with pytest.raises(ValueError, match="invalid"):
        make()  # type: ignore[operator]


def test_run_experiment_promotes_a_better_and_rolls_back_a_worse_challenger() -> None:
    policy = Policy()
    for rate, action in ((0.75, "promote"), (0.45, "rollback")):
        batches = random_batches(
            np.random.default_rng(4), ArmTruth(0.6), ArmTruth(rate), units=200, latency=False
        )
        outcome = run_experiment(batches, policy, max_looks=50, stage_index=LAST)
        assert outcome.action == action
        assert outcome.stage == LAST and outcome.advances == ()
        # Not before the stage minimum: 200 units per arm, i.e. ~400 units split 50/50.
        assert min(outcome.units.values()) >= policy.min_units
        assert outcome.looks < 50


def test_staged_flow_advances_through_every_stage_before_promoting() -> None:
    policy = Policy(stages=(20.0, 50.0), min_units=50, min_rated_units=50)
    batches = random_batches(
        np.random.default_rng(5), ArmTruth(0.5), ArmTruth(0.8), units=100, latency=False
    )
    outcome = run_experiment(batches, policy, max_looks=100)
    assert outcome.action == "promote"
    assert outcome.stage == 1 and len(outcome.advances) == 1
    assert outcome.advances[0] < outcome.looks


def test_single_stage_ends_on_advance_and_horizon_ends_on_continue() -> None:
    policy = Policy()
    better = random_batches(
        np.random.default_rng(6), ArmTruth(0.5), ArmTruth(0.8), units=400, latency=False
    )
    # At a stage before the last a clear winner "advances"; a fixed-stage run stops there.
    early = Policy(stages=(50.0, 100.0))
    assert run_experiment(better, early, max_looks=30, stage_index=0).action == "advance"
    same = random_batches(
        np.random.default_rng(6), ArmTruth(0.6), ArmTruth(0.6), units=100, latency=False
    )
    outcome = run_experiment(same, policy, max_looks=3, stage_index=LAST)
    assert outcome.action == "continue" and outcome.looks == 3
    assert outcome.reasons[0] == "not enough data yet:"


def test_each_stage_is_a_phase() -> None:
    policy = Policy(stages=(20.0, 50.0), min_units=50, min_rated_units=50)
    batches = random_batches(
        np.random.default_rng(5), ArmTruth(0.5), ArmTruth(0.8), units=100, latency=False
    )
    outcome = run_experiment(batches, policy, max_looks=100)
    assert outcome.action == "promote" and len(outcome.advances) == 1
    moved = in_phase(draw_arm(np.random.default_rng(1), ArmTruth(0.6), 50, latency=False), 2)
    assert moved.thumbs.phases == 3 and moved.thumbs.sum_y[:2] == (0.0, 0.0)
    assert moved.thumbs.pooled().sum_y == moved.thumbs.sum_y[2]


def test_run_experiment_validates_its_arguments() -> None:
    batches = random_batches(np.random.default_rng(0), ArmTruth(0.5), ArmTruth(0.5), units=10)
    with pytest.raises(ValueError, match="max_looks"):
        run_experiment(batches, Policy(), max_looks=0)
    with pytest.raises(ValueError, match="stage_index"):
        run_experiment(batches, Policy(), max_looks=1, stage_index=3)


def test_replay_batches_feeds_the_paths_increments() -> None:
    paths = thumbs_paths(np.random.default_rng(8), 0.6, experiments=2, looks=5, units_per_look=40)
    assert paths.shape == (2, 5) and (np.diff(paths, axis=1) >= 0).all()
    batches = replay_batches(paths[0], paths[1], 40)
    seen = [batches(0.5) for _ in range(5)]
    assert [int(a.thumbs.pooled().sum_x) for a, _ in seen] == np.diff(paths[0], prepend=0).tolist()
    assert all(a.units == b.units == 40 for a, b in seen)
    with pytest.raises(StopIteration):
        batches(0.5)


def test_naive_z_decides_at_the_first_crossing() -> None:
    z = np.array([[0.0, 1.0, 2.0, -3.0], [0.0, -1.7, 2.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    sign, first = naive_z_decisions(z, alpha=0.05)
    assert sign.tolist() == [1, -1, 0]
    assert first.tolist() == [2, 1, -1]
    ups_a, ups_b = np.array([[60, 120]]), np.array([[80, 120]])
    units = np.array([100, 200])
    values = naive_z(ups_a, ups_b, units)
    se = np.sqrt((0.6 * 0.4 + 0.8 * 0.2) / 100)
    assert values[0, 0] == pytest.approx(0.2 / se)
    assert values[0, 1] == 0.0
    assert naive_z(ups_a, ups_b, units, min_units=150)[0, 0] == 0.0


def test_always_valid_policy_keeps_its_level_where_peeking_does_not() -> None:
    """A/A through the real policy, 80 experiments x 30 looks (200 to 1,200 units per arm)."""
    policy = Policy()
    rng = np.random.default_rng(2024)
    size = {"experiments": 80, "looks": 30, "units_per_look": 40}
    champion, challenger = thumbs_paths(rng, 0.6, **size), thumbs_paths(rng, 0.6, **size)
    outcomes = [
        run_experiment(
            replay_batches(a, b, 40, error_sums=False), policy, max_looks=30, stage_index=LAST
        )
        for a, b in zip(champion, challenger, strict=True)
    ]
    promoted = sum(o.action == "promote" for o in outcomes)
    units = 40 * np.arange(1, 31)
    naive, _ = naive_z_decisions(
        naive_z(champion, challenger, units, min_units=policy.min_units), alpha=policy.alpha
    )
    naive_promoted = int((naive == 1).sum())
    assert promoted <= 4  # 5% of 80; the expected count is about 1
    assert naive_promoted >= 10 and naive_promoted > 3 * promoted


def test_omitting_zero_error_sums_changes_no_decision() -> None:
    """What makes a look cheaper changes nothing."""
    rng = np.random.default_rng(11)
    size = {"experiments": 12, "looks": 25, "units_per_look": 40}
    champion, challenger = thumbs_paths(rng, 0.6, **size), thumbs_paths(rng, 0.55, **size)
    for a, b in zip(champion, challenger, strict=True):
        with_sums, without = (
            run_experiment(
                replay_batches(a, b, 40, error_sums=flag), Policy(), max_looks=25, stage_index=LAST
            )
            for flag in (True, False)
        )
        assert (with_sums.action, with_sums.looks) == (without.action, without.looks)


def test_simulation_imports_no_web_db_or_mlflow_code() -> None:
    forbidden = ("fastapi", "sqlalchemy", "mlflow", "router", "registry", "httpx")
    code = (
        f"import sys, experiments.simulation\nprint([m for m in {forbidden!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
