import json
from typing import Any

from experiments.analysis import Look, analyse
from experiments.policy import Policy
from experiments.stats import ArmStats, PhasedSums, VoteCounts
from tests.experiments.helpers import arm, bernoulli, look

SEQUENTIAL_KEYS = {"p_better", "p_worse", "p_value_sequential_two_sided", "confidence_sequence"}
RATE_KEYS = {"champion", "challenger", "difference", "ci", "p_value", *SEQUENTIAL_KEYS}
RATE_KEYS |= {"prob_challenger_better", "expected_loss", "shrunk_difference", "phases"}
LATENCY_KEYS = {"champion_p50", "challenger_p50", "champion_p95", "challenger_p95", "p95_ratio"}
LATENCY_KEYS |= {"bound", "threshold_ms", "champion_exceed", "challenger_exceed", "p_above_bound"}
LATENCY_KEYS |= {"mann_whitney_p", "hodges_lehmann_ms", "role"}
ARM_KEYS = {"requests", "units", "errors", "thumbs_up", "thumbs_down", "votes"}
ARM_KEYS |= {"latency_p50_ms", "latency_p95_ms"}
VOTE_KEYS = {"role", "challenger_wins", "champion_wins", "ties", "both_bad", "voters"}
VOTE_KEYS |= {"win_rate", "p_value", "bradley_terry", *SEQUENTIAL_KEYS}


def _check_shape(data: dict[str, Any]) -> None:
    assert set(data) == {"arms", "metrics", "srm", "decision"}
    assert set(data["arms"]) == {"champion", "challenger"}
    assert all(set(a) == ARM_KEYS for a in data["arms"].values())
    metrics = data["metrics"]
    assert set(metrics) == {"thumbs_up_rate", "error_rate", "latency", "ttft", "votes"}
    assert set(metrics["thumbs_up_rate"]) == RATE_KEYS | {"role"}
    assert set(metrics["error_rate"]) == RATE_KEYS | {
        "role",
        "bound",
        "bound_type",
        "p_above_bound",
    }
    assert set(metrics["latency"]) == set(metrics["ttft"]) == LATENCY_KEYS
    assert set(metrics["votes"]) == VOTE_KEYS
    assert set(metrics["votes"]["bradley_terry"]) == {"champion", "challenger"}
    assert set(data["srm"]) == {"p_value", "mismatch", "observed", "expected", "window"}
    assert set(data["decision"]) == {"action", "reasons"}
    json.dumps(data, allow_nan=False)  # raises on NaN or infinity


def test_to_dict_has_the_api_shape_with_values() -> None:
    votes = VoteCounts(challenger_wins=70, champion_wins=50, ties=8, both_bad=2)
    champion, challenger = arm(seed=1), arm(thumbs_up=0.7, seed=2)
    analysis = analyse(champion, challenger, votes, Policy(), look(champion, challenger))
    data = analysis.to_dict()
    _check_shape(data)
    assert data["arms"]["challenger"] == data["arms"]["challenger"] | {
        "requests": 2000,
        "errors": 20,
        "thumbs_up": 1400,
        "thumbs_down": 600,
        "votes": 70,
    }
    thumbs = data["metrics"]["thumbs_up_rate"]
    assert thumbs["role"] == "primary" and data["metrics"]["votes"]["role"] == "guardrail"
    assert thumbs["difference"] == analysis.thumbs.difference
    assert analysis.thumbs.sequential is not None
    assert thumbs["p_better"] == analysis.thumbs.sequential.p_greater_look
    assert thumbs["p_worse"] == analysis.thumbs.sequential.p_less
    # The shrunk estimate sits between 0 and the raw difference (winner's curse).
    assert 0 < thumbs["shrunk_difference"] < thumbs["difference"]
    assert isinstance(thumbs["ci"], list)
    assert data["metrics"]["votes"]["win_rate"] == 70 / 120
    assert data["decision"]["action"] == "advance"
    # An error rate that goes up is worse: p_worse is the evidence of more errors.
    more_errors = arm(error_rate=0.05, seed=2)
    errors = analyse(champion, more_errors, votes, Policy(), look(champion, more_errors))
    error_rate = errors.to_dict()["metrics"]["error_rate"]
    assert error_rate["p_worse"] < 1e-6 and error_rate["p_better"] == 1.0


def test_empty_experiment_is_json_safe_and_continues() -> None:
    empty = Look(0, {"champion": 95, "challenger": 5})
    analysis = analyse(ArmStats(), ArmStats(), VoteCounts(), Policy(), empty)
    data = analysis.to_dict()
    _check_shape(data)
    assert data["metrics"]["thumbs_up_rate"]["p_value"] is None
    assert data["metrics"]["latency"]["p95_ratio"] is None
    assert data["arms"]["champion"]["latency_p95_ms"] is None
    assert data["decision"]["action"] == "continue"
    assert analysis.sequential_state() == {}


def test_sequential_state_is_json_and_round_trips() -> None:
    policy = Policy(test="non_inferiority", margin=0.02)
    votes = VoteCounts(30, 20)
    champion, challenger = arm(seed=1), arm(seed=2)
    the_look = look(champion, challenger)
    first = analyse(champion, challenger, votes, policy, the_look)
    state = json.loads(json.dumps(first.sequential_state()))
    assert set(state) == {"thumbs", "errors", "errors_guardrail", "votes", "latency", "ttft", "srm"}
    again = analyse(champion, challenger, votes, policy, the_look, state)
    assert again.sequential_state() == state


def test_windowed_tests_restart_with_their_window() -> None:
    """Latency restarts at a new stage and SRM at a new window; the rates carry on."""
    champion, challenger = arm(seed=1), arm(thumbs_up=0.7, seed=2, latency_median=900.0)
    first = analyse(champion, challenger, VoteCounts(), Policy(), look(champion, challenger))
    state = first.sequential_state()
    assert state["latency"]["greater"] < 0.05 and state["latency"]["stage"] == 0
    fast = arm(thumbs_up=0.6, seed=3)
    same_stage = analyse(champion, fast, VoteCounts(), Policy(), look(champion, fast), state)
    assert same_stage.latency_guardrail.sequential is not None
    assert same_stage.latency_guardrail.sequential.p_greater == state["latency"]["greater"]
    next_stage = analyse(
        champion, fast, VoteCounts(), Policy(), look(champion, fast, stage=1), state
    )
    assert next_stage.latency_guardrail.sequential is not None
    assert next_stage.latency_guardrail.sequential.p_greater > 0.05
    assert next_stage.thumbs.sequential is not None
    assert next_stage.thumbs.sequential.p_greater == state["thumbs"]["greater"]


def test_stage_units_feed_srm_and_the_stage_minimum() -> None:
    champion, challenger = arm(seed=1), arm(thumbs_up=0.7, seed=2)
    the_look = Look(
        stage_index=1,
        weights={"champion": 75, "challenger": 25},
        stage_units={"champion": 600, "challenger": 150},
        srm_units={"champion": 600, "challenger": 150},
    )
    analysis = analyse(champion, challenger, VoteCounts(), Policy(), the_look)
    assert not analysis.srm.mismatch
    assert analysis.decision.action == "continue"
    assert "challenger: 150 units in this stage of 200" in analysis.decision.reasons


def test_phases_are_stratified() -> None:
    """Two phases where the challenger had more traffic on the good days: pooled it looks
    better, stratified by phase it is not."""

    def phased(good: tuple[int, int], bad: tuple[int, int]) -> PhasedSums:
        first = PhasedSums.in_phase(bernoulli(*good), 0)
        return first + PhasedSums.in_phase(bernoulli(*bad), 1)

    # Phase 0: base rate 0.7, challenger 5%; phase 1: base rate 0.5, challenger 50%.
    champion_thumbs = phased((6650, 9500), (1000, 2000))
    challenger_thumbs = phased((350, 500), (1000, 2000))
    champion = ArmStats(11500, 11500, champion_thumbs, champion_thumbs)
    challenger = ArmStats(2500, 2500, challenger_thumbs, challenger_thumbs)
    analysis = analyse(
        champion, challenger, VoteCounts(), Policy(), Look(1, {"champion": 1, "challenger": 1})
    )
    assert analysis.thumbs.challenger is not None and analysis.thumbs.champion is not None
    assert analysis.thumbs.challenger - analysis.thumbs.champion < -0.1  # pooled: Simpson
    assert analysis.thumbs.difference is not None and abs(analysis.thumbs.difference) < 1e-12
    assert len(analysis.thumbs.phases) == 2
