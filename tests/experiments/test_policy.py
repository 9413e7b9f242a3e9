import dataclasses
import math

import pytest

from experiments.analysis import Analysis, analyse
from experiments.policy import Policy
from experiments.stats import ArmStats, PhasedSums, RatioSums, VoteCounts
from tests.experiments.helpers import arm, bernoulli, look

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
    history: dict | None = None,
    elapsed_days: float = 1.0,
    **policy: object,
) -> Analysis:
    the_look = look(champion, challenger, stage=stage, weights=weights, elapsed_days=elapsed_days)
    return analyse(champion, challenger, votes, Policy(**policy), the_look, history)  # type: ignore[arg-type]


def voters(wins: int, losses: int, *, per_voter: int = 1) -> VoteCounts:
    """Decisive votes from voters who each cast ``per_voter`` votes, all one way."""
    n_win, n_lose = wins // per_voter, losses // per_voter
    v = per_voter
    sums = RatioSums(
        n_win + n_lose, wins, wins + losses, n_win * v * v, (n_win + n_lose) * v * v, n_win * v * v
    )
    return VoteCounts(challenger_wins=wins, champion_wins=losses, per_voter=sums)


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


def test_no_conclusion_continues_until_a_cap_then_ends_inconclusive() -> None:
    same = arm(thumbs_up=0.6, seed=2)
    assert run(same).decision.action == "continue"
    capped = run(same, max_units=1000).decision
    assert capped.action == "inconclusive" and "max_units 1000" in capped.reasons[1]
    old = run(same, elapsed_days=30.0).decision
    assert old.action == "inconclusive" and "max_days 28" in old.reasons[1]


def test_the_cap_fires_without_any_thumbs() -> None:
    """max_units ends an experiment whose primary metric never got data."""
    no_thumbs = dataclasses.replace(arm(seed=2), thumbs=PhasedSums())
    champion = dataclasses.replace(CHAMPION, thumbs=PhasedSums())
    assert run(no_thumbs, champion=champion).decision.action == "continue"
    decision = run(no_thumbs, champion=champion, max_units=1000).decision
    assert decision.action == "inconclusive"


def test_the_cap_rolls_back_when_a_guardrail_blocks() -> None:
    """A guardrail past its bound (not yet significant) blocks promotion; at the cap the
    experiment ends in a rollback instead of running forever."""
    blocked = arm(thumbs_up=0.7, error_rate=0.035, seed=2)
    assert run(blocked, stage=2).decision.action == "continue"
    decision = run(blocked, stage=2, max_units=1000).decision
    assert decision.action == "rollback"
    assert any(r.startswith("guardrail: error rate") for r in decision.reasons)


def test_sample_ratio_mismatch_halts_even_a_winner() -> None:
    better = dataclasses.replace(arm(thumbs_up=0.7, seed=2), units=1500)
    analysis = run(better)
    assert analysis.srm.mismatch
    assert analysis.decision.action == "halt"
    assert "sample ratio mismatch" in analysis.decision.reasons[0]
    assert "resume" in analysis.decision.reasons[1]
    # The same counts are fine when they were collected under a 57/43 split.
    fine = run(better, weights={"champion": 57.14, "challenger": 42.86})
    assert fine.decision.action == "advance"


def test_one_unit_in_a_five_percent_arm_does_not_halt() -> None:
    """The first unit landing in a 5% arm: chi-square p = 1.3e-5, anytime-valid: no halt."""
    one = ArmStats(requests=1, units=1)
    analysis = run(one, champion=ArmStats(), weights={"champion": 95.0, "challenger": 5.0})
    assert analysis.srm.chi2_p is not None and analysis.srm.chi2_p < 1e-4
    assert not analysis.srm.mismatch
    assert analysis.decision.action == "continue"


@pytest.mark.parametrize(
    "broken",
    [
        dataclasses.replace(arm(seed=2), errors=PhasedSums.single(bernoulli(-3, 2000))),
        dataclasses.replace(arm(seed=2), thumbs=PhasedSums.single(bernoulli(2500, 2000))),
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


def test_error_bound_absolute_or_relative() -> None:
    """3% vs 1% errors: +2 points is inside an absolute +3-point bound, but 3x the champion's
    rate is past a relative 1.5x bound."""
    doubled = arm(units=8000, thumbs_up=0.6, error_rate=0.03, seed=2)
    champion = arm(units=8000, thumbs_up=0.6, error_rate=0.01, seed=1)
    absolute = run(doubled, champion=champion, max_error_rate_increase=0.03)
    assert not absolute.decision.reasons[0].startswith("guardrail failed")
    relative = run(
        doubled, champion=champion, max_error_rate_increase=0.5, error_rate_bound="relative"
    )
    assert relative.decision.action == "rollback"
    assert "1.50x the champion's" in relative.decision.reasons[0]


@pytest.mark.parametrize(
    ("field", "name"), [("latency_median", "latency"), ("ttft_median", "TTFT")]
)
def test_latency_guardrails_fail_a_canary_past_its_bound(field: str, name: str) -> None:
    slow = arm(thumbs_up=0.75, seed=2, **{field: 1000.0 if name == "latency" else 300.0})  # type: ignore[arg-type]
    decision = run(slow).decision
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith(f"guardrail failed: {name} p95 is")


def test_latency_inside_its_bound_does_not_fail() -> None:
    """1.3x slower everywhere, bound 1.5x: a Mann-Whitney test sees the shift (p << 0.001),
    the tail test of the bound does not fail it."""
    slower = arm(thumbs_up=0.75, seed=2, latency_median=520.0, samples=20_000)
    champion = arm(seed=1, samples=20_000)
    analysis = run(slower, champion=champion)
    assert analysis.latency.mann_whitney_p is not None and analysis.latency.mann_whitney_p < 1e-6
    assert analysis.latency_guardrail.sequential is not None
    assert analysis.latency_guardrail.sequential.p_greater > 0.5
    assert analysis.decision.action == "advance"


def test_failed_requests_count_as_the_slowest() -> None:
    """A challenger as fast as the champion when it answers, but 10% of its requests time
    out: the failures are its tail, and the latency guardrail fails."""
    base = arm(thumbs_up=0.6, seed=2)
    n = len(base.latency_ms)
    timeouts = dataclasses.replace(
        base, latency_ms=base.latency_ms[: n * 9 // 10] + (math.inf,) * (n // 10)
    )
    analysis = run(timeouts)
    assert analysis.latency_guardrail.sequential is not None
    assert analysis.latency_guardrail.sequential.p_greater < 0.05
    assert analysis.latency.status == "ok"  # the descriptive comparison reads the answers
    assert any(r.startswith("guardrail failed: latency") for r in analysis.decision.reasons)


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
    assert decision.action == "rollback" and "worse by more than 2.0 points" in decision.reasons[0]


def test_votes_primary() -> None:
    wins, losses = voters(300, 200), voters(200, 300)
    same = arm(thumbs_up=0.6, seed=2)
    assert run(same, votes=wins, primary_metric="votes").decision.action == "advance"
    assert run(same, votes=losses, primary_metric="votes").decision.action == "rollback"
    few = run(same, votes=voters(5, 3), primary_metric="votes").decision
    assert few.action == "continue" and any("8 decisive votes of 30" in r for r in few.reasons)


def test_votes_primary_with_thumbs_much_worse_is_not_promoted() -> None:
    """29 of 30 votes won, but thumbs 40% vs 70%: the thumbs guardrail rolls it back."""
    worse = arm(units=300, thumbs_up=0.4, seed=2)
    champion = arm(units=300, thumbs_up=0.7, seed=1)
    analysis = run(
        worse,
        champion=champion,
        votes=voters(29, 1),
        primary_metric="votes",
        stage=2,
        min_units=100,
    )
    assert analysis.votes.sequential is not None
    assert analysis.decision.action == "rollback"
    assert analysis.decision.reasons[0].startswith("guardrail failed: thumbs guardrail")


def test_thumbs_primary_with_every_vote_lost_is_not_promoted() -> None:
    better = arm(thumbs_up=0.7, seed=2)
    decision = run(better, votes=voters(0, 60), stage=2).decision
    assert decision.action == "rollback"
    assert decision.reasons[0].startswith("guardrail failed: votes guardrail")


def test_votes_are_clustered_by_voter() -> None:
    """The same 300-200 split from 5 voters (100 votes each) is no evidence; from 500 voters
    it is."""
    same = arm(thumbs_up=0.6, seed=2)
    many = run(same, votes=voters(300, 200), primary_metric="votes")
    few = run(same, votes=voters(300, 200, per_voter=100), primary_metric="votes")
    assert many.votes.voters == 500 and few.votes.voters == 5
    assert many.votes.sequential is not None and few.votes.sequential is not None
    assert few.votes.sequential.p_greater_look > 100 * many.votes.sequential.p_greater_look
    assert few.decision.action == "continue"


def test_evidence_of_an_earlier_stage_does_not_carry() -> None:
    """Stage 1 said better; stage 2's data say nothing: the running minimum is kept, but
    advancing needs this look's p, so stage 2 does not advance on stage 1's evidence."""
    early = run(arm(thumbs_up=0.7, seed=2))
    assert early.decision.action == "advance"
    same = arm(thumbs_up=0.6, seed=2)
    later = run(same, stage=1, history=early.sequential_state())
    assert later.thumbs.sequential is not None
    assert later.thumbs.sequential.p_greater == early.thumbs.sequential.p_greater  # type: ignore[union-attr]
    assert later.thumbs.sequential.p_greater_look > 0.05
    assert later.decision.action == "continue"


def test_a_lucky_start_is_not_carried_past_the_burn_in() -> None:
    """Three ratings, all up, at a 5% stage: no spurious evidence kept for later looks."""
    few_champion = ArmStats(
        60, 60, PhasedSums.single(bernoulli(0, 60)), PhasedSums.single(bernoulli(36, 60))
    )
    lucky = ArmStats(3, 3, PhasedSums.single(bernoulli(0, 3)), PhasedSums.single(bernoulli(3, 3)))
    weights = {"champion": 95.0, "challenger": 5.0}
    unguarded = run(lucky, champion=few_champion, weights=weights, min_rated_units=0)
    assert unguarded.thumbs.sequential is not None
    # What the burn-in prevents: "always-valid p < 0.001" on three users.
    assert unguarded.thumbs.sequential.p_greater < 0.001
    early = run(lucky, champion=few_champion, weights=weights)
    assert early.thumbs.sequential is None
    assert early.errors_guardrail is None  # errors: min_guardrail_units per arm
    assert early.sequential_state() == {"srm": early.sequential_state()["srm"]}
    assert early.decision.action == "continue"
    assert "thumbs-up rate: 3 rated units per arm of 100" in early.decision.reasons
    same = arm(thumbs_up=0.6, seed=2)
    later = run(same, stage=2, history=early.sequential_state())
    assert later.thumbs.sequential is not None and later.thumbs.sequential.p_greater > 0.05
    assert later.decision.action == "continue"
    assert set(later.sequential_state()) >= {"thumbs", "errors", "errors_guardrail", "latency"}


def test_policy_round_trip_and_validation() -> None:
    policy = Policy(stages=(10, 50, 100), primary_metric="votes", margin=0.01, max_units=5000)
    assert policy.stages == (10.0, 50.0, 100.0)
    assert Policy.from_dict(policy.to_dict()) == policy
    assert Policy.from_dict({}) == Policy()
    with pytest.raises(ValueError, match="unknown policy fields: stagez"):
        Policy.from_dict({"stagez": [5]})
    with pytest.raises(ValueError, match="stages must increase"):
        Policy(stages=(50, 25))
    with pytest.raises(ValueError, match="primary_metric"):
        Policy(primary_metric="clicks")
    with pytest.raises(ValueError, match="every experiment must end"):
        Policy(max_units=None, max_days=None)
    with pytest.raises(ValueError, match="stage_index"):
        run(CHAMPION, stage=3)


def test_policies_stored_by_earlier_versions_load() -> None:
    old = {
        "min_guardrail_requests": 80,
        "min_rated": 50,
        "srm_threshold": 0.0005,
        "latency_alpha": 0.001,
        "primary_metric": "both",
    }
    policy = Policy.from_dict(old)
    assert policy.min_guardrail_units == 80
    assert (policy.min_rated_units, policy.srm_alpha, policy.primary_metric) == (
        50,
        0.0005,
        "thumbs",
    )
