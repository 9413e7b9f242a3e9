import dataclasses
import math

import pytest

from experiments.analysis import Analysis, analyse
from experiments.policy import Policy
from experiments.stats import ArmStats, VoteCounts
from tests.experiments.helpers import arm, bernoulli

EVEN = {"champion": 50.0, "challenger": 50.0}
NO_VOTES = VoteCounts()
CHAMPION = arm(thumbs_up=0.6, seed=1)


def run(
    challenger: ArmStats,
    *,
    champion: ArmStats = CHAMPION,
    votes: VoteCounts = NO_VOTES,
    stage: int = 0,
    weights: dict[str, float] = EVEN,
    **policy: object,
) -> Analysis:
    return analyse(champion, challenger, votes, weights, Policy(**policy), stage)  # type: ignore[arg-type]


def test_clearly_better_advances_then_promotes_at_the_last_stage() -> None:
    better = arm(thumbs_up=0.7, seed=2)
    first = run(better, stage=0).decision
    assert first.action == "advance"
    assert any("advance to 25% challenger traffic" in r for r in first.reasons)
    assert run(better, stage=2).decision.action == "promote"


def test_clearly_worse_rolls_back() -> None:
    decision = run(arm(thumbs_up=0.5, seed=2)).decision
    assert decision.action == "rollback"
    assert "worse" in decision.reasons[0]


def test_too_little_data_continues_with_reasons() -> None:
    small = arm(units=50, thumbs_up=0.9, seed=2)
    decision = run(small, champion=arm(units=50, seed=1)).decision
    assert decision.action == "continue"
    assert decision.reasons[0] == "not enough data yet:"
    assert any("50 units in this stage of 200" in r for r in decision.reasons)


def test_inconclusive_continues_and_max_units_rolls_back() -> None:
    same = arm(thumbs_up=0.6, seed=2)
    assert run(same).decision.action == "continue"
    capped = run(same, max_units=1000).decision
    assert capped.action == "rollback" and "no conclusion" in capped.reasons[-1]


def test_sample_ratio_mismatch_halts_even_a_winner() -> None:
    better = dataclasses.replace(arm(thumbs_up=0.7, seed=2), units=1500)
    analysis = run(better)
    assert analysis.srm.mismatch
    assert analysis.decision.action == "halt"
    assert "sample ratio mismatch" in analysis.decision.reasons[0]
    # The same counts are fine when they were collected under a 57/43 split.
    fine = run(better, weights={"champion": 57.14, "challenger": 42.86})
    assert fine.decision.action == "advance"


@pytest.mark.parametrize(
    "broken",
    [
        dataclasses.replace(arm(seed=2), errors=bernoulli(-3, 2000)),
        dataclasses.replace(arm(seed=2), thumbs=bernoulli(2500, 2000)),
        dataclasses.replace(arm(seed=2), latency_ms=(math.nan,) * 50),
        dataclasses.replace(arm(seed=2), requests=-1),
    ],
)
def test_broken_data_halts(broken: ArmStats) -> None:
    decision = run(broken).decision
    assert decision.action == "halt"
    assert decision.reasons[0] == "broken data, stop and alert:"


def test_error_guardrail_fails_a_winning_canary_on_its_own() -> None:
    winner_with_errors = arm(thumbs_up=0.75, error_rate=0.15, seed=2)
    decision = run(winner_with_errors, stage=2).decision
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith("guardrail failed: error rate 15.0% vs 1.0%")


@pytest.mark.parametrize(
    ("field", "name"), [("latency_median", "latency"), ("ttft_median", "TTFT")]
)
def test_latency_guardrails_fail_a_winning_canary(field: str, name: str) -> None:
    slow = arm(thumbs_up=0.75, seed=2, **{field: 1000.0 if name == "latency" else 300.0})  # type: ignore[arg-type]
    decision = run(slow).decision
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith(f"guardrail failed: {name} p95 is")


def test_guardrail_breach_without_evidence_blocks_promotion() -> None:
    # +2.5 points of errors against a +2 point bound, not significant at 2,000 units.
    decision = run(arm(thumbs_up=0.7, error_rate=0.035, seed=2), stage=2).decision
    assert decision.action == "continue"
    assert any(r.startswith("guardrail: error rate") for r in decision.reasons)


def test_non_inferiority_margin() -> None:
    equal = arm(units=4000, thumbs_up=0.6, seed=2)
    champion = arm(units=4000, thumbs_up=0.6, seed=1)
    kwargs = {"champion": champion, "test": "non_inferiority"}
    assert run(equal, **kwargs, margin=0.05).decision.action == "advance"  # type: ignore[arg-type]
    assert run(equal, champion=champion).decision.action == "continue"  # superiority
    slightly_worse = arm(units=4000, thumbs_up=0.5, seed=2)
    decision = run(slightly_worse, **kwargs, margin=0.02).decision  # type: ignore[arg-type]
    assert decision.action == "rollback" and "inferior" in decision.reasons[0]


def test_votes_and_both_as_primary_metric() -> None:
    wins, losses = VoteCounts(challenger_wins=300, champion_wins=200), VoteCounts(200, 300)
    same = arm(thumbs_up=0.6, seed=2)
    assert run(same, votes=wins, primary_metric="votes").decision.action == "advance"
    assert run(same, votes=losses, primary_metric="votes").decision.action == "rollback"
    few = run(same, votes=VoteCounts(5, 3), primary_metric="votes").decision
    assert few.action == "continue" and any("8 decisive votes of 30" in r for r in few.reasons)
    better = arm(thumbs_up=0.7, seed=2)
    assert run(better, votes=wins, primary_metric="both").decision.action == "advance"
    assert run(better, votes=losses, primary_metric="both").decision.action == "rollback"
    assert run(same, votes=wins, primary_metric="both").decision.action == "continue"


def test_sequential_history_keeps_earlier_evidence() -> None:
    early = run(arm(thumbs_up=0.7, seed=2))
    same = arm(thumbs_up=0.6, seed=2)
    later = analyse(CHAMPION, same, VoteCounts(), EVEN, Policy(), 1, early.sequential_state())
    assert later.thumbs.p_value_sequential == early.thumbs.p_value_sequential
    assert later.decision.action == "advance"


def test_a_lucky_start_is_not_carried_past_the_burn_in() -> None:
    """Three ratings, all up, at a 5% stage: no spurious evidence kept for later looks."""
    few_champion = ArmStats(60, 60, bernoulli(0, 60), bernoulli(36, 60))
    lucky = ArmStats(3, 3, bernoulli(0, 3), bernoulli(3, 3))
    weights = {"champion": 95.0, "challenger": 5.0}
    unguarded = analyse(few_champion, lucky, VoteCounts(), weights, Policy(min_rated=0), 0)
    assert unguarded.thumbs.sequential is not None
    # What the burn-in prevents: "always-valid p < 0.001" where even Fisher's test sees nothing.
    assert unguarded.thumbs.sequential.p_greater < 0.001
    assert unguarded.thumbs.p_value is not None and unguarded.thumbs.p_value > 0.05
    early = analyse(few_champion, lucky, VoteCounts(), weights, Policy(), 0)
    assert early.thumbs.sequential is None and early.thumbs.p_value_sequential is None
    assert early.errors_guardrail is None  # errors: min_guardrail_requests per arm
    assert early.sequential_state() == {}
    assert early.decision.action == "continue"
    assert "thumbs: 3 rated requests per arm of 100" in early.decision.reasons
    same = arm(thumbs_up=0.6, seed=2)
    later = analyse(CHAMPION, same, VoteCounts(), EVEN, Policy(), 2, early.sequential_state())
    assert later.thumbs.sequential is not None and later.thumbs.sequential.p_greater > 0.05
    assert later.decision.action == "continue"
    assert set(later.sequential_state()) >= {"thumbs", "errors", "errors_guardrail"}


def test_policy_round_trip_and_validation() -> None:
    policy = Policy(stages=(10, 50, 100), primary_metric="both", margin=0.01, max_units=5000)
    assert policy.stages == (10.0, 50.0, 100.0)
    assert Policy.from_dict(policy.to_dict()) == policy
    assert Policy.from_dict({}) == Policy()
    with pytest.raises(ValueError, match="unknown policy fields: stagez"):
        Policy.from_dict({"stagez": [5]})
    with pytest.raises(ValueError, match="stages must increase"):
        Policy(stages=(50, 25))
    with pytest.raises(ValueError, match="primary_metric"):
        Policy(primary_metric="clicks")
    with pytest.raises(ValueError, match="stage_index"):
        run(CHAMPION, stage=3)
