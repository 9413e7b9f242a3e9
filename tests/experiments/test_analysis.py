import json
from typing import Any

from experiments.analysis import analyse
from experiments.policy import Policy
from experiments.stats import ArmStats, VoteCounts
from tests.experiments.helpers import arm

RATE_KEYS = {"champion", "challenger", "difference", "ci", "p_value", "p_value_sequential"}
LATENCY_KEYS = {"mann_whitney_p", "hodges_lehmann_ms", "p95_ratio"}
ARM_KEYS = {"requests", "errors", "thumbs_up", "thumbs_down", "votes"}
ARM_KEYS |= {"latency_p50_ms", "latency_p95_ms"}
VOTE_KEYS = {"challenger_wins", "champion_wins", "ties", "both_bad", "win_rate", "p_value"}
VOTE_KEYS |= {"bradley_terry"}


def _check_shape(data: dict[str, Any]) -> None:
    assert set(data) == {"arms", "metrics", "srm", "decision"}
    assert set(data["arms"]) == {"champion", "challenger"}
    assert all(set(a) == ARM_KEYS for a in data["arms"].values())
    metrics = data["metrics"]
    assert set(metrics) == {"thumbs_up_rate", "error_rate", "latency", "ttft", "votes"}
    assert set(metrics["thumbs_up_rate"]) == set(metrics["error_rate"]) == RATE_KEYS
    assert set(metrics["latency"]) == set(metrics["ttft"]) == LATENCY_KEYS
    assert set(metrics["votes"]) == VOTE_KEYS
    assert set(metrics["votes"]["bradley_terry"]) == {"champion", "challenger"}
    assert set(data["srm"]) == {"p_value", "mismatch"}
    assert set(data["decision"]) == {"action", "reasons"}
    json.dumps(data, allow_nan=False)  # raises on NaN or infinity


def test_to_dict_has_the_api_shape_with_values() -> None:
    votes = VoteCounts(challenger_wins=70, champion_wins=50, ties=8, both_bad=2)
    analysis = analyse(
        arm(seed=1),
        arm(thumbs_up=0.7, seed=2),
        votes,
        {"champion": 1, "challenger": 1},
        Policy(),
        0,
    )
    data = analysis.to_dict()
    _check_shape(data)
    assert data["arms"]["challenger"] == data["arms"]["challenger"] | {
        "requests": 2000,
        "errors": 20,
        "thumbs_up": 1400,
        "thumbs_down": 600,
        "votes": 70,
    }
    assert data["metrics"]["thumbs_up_rate"]["difference"] == analysis.thumbs.difference
    assert isinstance(data["metrics"]["thumbs_up_rate"]["ci"], list)
    assert data["metrics"]["votes"]["win_rate"] == 70 / 120
    assert data["decision"]["action"] == "advance"


def test_empty_experiment_is_json_safe_and_continues() -> None:
    analysis = analyse(
        ArmStats(), ArmStats(), VoteCounts(), {"champion": 95, "challenger": 5}, Policy(), 0
    )
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
    first = analyse(arm(seed=1), arm(seed=2), votes, {"champion": 1, "challenger": 1}, policy, 0)
    state = json.loads(json.dumps(first.sequential_state()))
    assert set(state) == {
        "thumbs",
        "errors",
        "votes",
        "thumbs_noninferiority",
        "votes_noninferiority",
        "errors_guardrail",
    }
    again = analyse(
        arm(seed=1), arm(seed=2), votes, {"champion": 1, "challenger": 1}, policy, 0, state
    )
    assert again.sequential_state() == state


def test_stage_units_feed_srm_and_the_stage_minimum() -> None:
    analysis = analyse(
        arm(seed=1),
        arm(thumbs_up=0.7, seed=2),
        VoteCounts(),
        {"champion": 75, "challenger": 25},
        Policy(),
        1,
        stage_units={"champion": 600, "challenger": 150},
    )
    assert not analysis.srm.mismatch
    assert analysis.decision.action == "continue"
    assert "challenger: 150 units in this stage of 200" in analysis.decision.reasons
