"""One analysis of a canary: every test on both arms, and the policy's decision.

Entry point: :func:`analyse`. :meth:`Analysis.to_dict` is the JSON the experiment API
returns (no NaN: missing values are ``None``); :meth:`Analysis.sequential_state` is what the
caller stores and passes back as ``sequential_history`` at the next look so the always-valid
p-values keep their running minimum (see :mod:`experiments.sequential`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from experiments.latency import LatencyComparison, compare_latency
from experiments.policy import Decision, Policy, decide
from experiments.rates import RateComparison, compare_rates
from experiments.sequential import SequentialTest, msprt
from experiments.srm import SrmResult, check_srm
from experiments.stats import ArmStats, VoteCounts
from experiments.votes import VoteComparison, compare_votes

__all__ = ["Analysis", "SequentialHistory", "analyse"]

#: Running minima of the always-valid p-values, keyed by test then by side; JSON-able.
SequentialHistory = Mapping[str, Mapping[str, float]]

ARMS = ("champion", "challenger")


@dataclass(frozen=True, slots=True)
class Analysis:
    """All test results for one look at the experiment, plus the decision taken on them."""

    champion: ArmStats
    challenger: ArmStats
    vote_counts: VoteCounts
    weights: dict[str, float]
    stage_units: dict[str, int]  # units per arm seen while ``weights`` were in force
    thumbs: RateComparison
    errors: RateComparison
    latency: LatencyComparison
    ttft: LatencyComparison
    votes: VoteComparison
    srm: SrmResult
    thumbs_noninferiority: SequentialTest | None  # null: difference = -margin
    votes_noninferiority: SequentialTest | None  # null: win rate - 0.5 = -margin
    errors_guardrail: SequentialTest | None  # null: difference = max_error_rate_increase
    problems: tuple[str, ...]
    decision: Decision

    def sequential_state(self) -> dict[str, dict[str, float]]:
        """Running minima to pass back as ``sequential_history`` at the next look."""
        tests = {
            "thumbs": self.thumbs.sequential,
            "errors": self.errors.sequential,
            "votes": self.votes.sequential,
            "thumbs_noninferiority": self.thumbs_noninferiority,
            "votes_noninferiority": self.votes_noninferiority,
            "errors_guardrail": self.errors_guardrail,
        }
        return {key: test.state() for key, test in tests.items() if test is not None}

    def to_dict(self) -> dict[str, Any]:
        """The experiment API's ``analysis`` object (shape documented in the README)."""
        return {
            "arms": {arm: _arm_dict(self, arm) for arm in ARMS},
            "metrics": {
                "thumbs_up_rate": _rate_dict(self.thumbs),
                "error_rate": _rate_dict(self.errors),
                "latency": _latency_dict(self.latency),
                "ttft": _latency_dict(self.ttft),
                "votes": _votes_dict(self.votes),
            },
            "srm": {"p_value": _num(self.srm.p_value), "mismatch": self.srm.mismatch},
            "decision": self.decision.to_dict(),
        }


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _pair(x: tuple[float, float] | None) -> list[float | None] | None:
    return None if x is None else [_num(x[0]), _num(x[1])]


def _percentile(sample: tuple[float, ...], q: float) -> float | None:
    if not sample:
        return None
    return _num(float(np.percentile(np.asarray(sample, dtype=np.float64), q)))


def _arm_dict(analysis: Analysis, arm: str) -> dict[str, Any]:
    stats = analysis.champion if arm == "champion" else analysis.challenger
    counts = analysis.vote_counts
    wins = counts.champion_wins if arm == "champion" else counts.challenger_wins
    return {
        "requests": stats.requests,
        "errors": int(stats.errors.sum_x) if math.isfinite(stats.errors.sum_x) else None,
        "thumbs_up": int(stats.thumbs.sum_x) if math.isfinite(stats.thumbs.sum_x) else None,
        "thumbs_down": (
            int(stats.thumbs.sum_y - stats.thumbs.sum_x)
            if math.isfinite(stats.thumbs.sum_y - stats.thumbs.sum_x)
            else None
        ),
        "votes": wins,  # votes this arm won; ties and both-bad are under metrics.votes
        "latency_p50_ms": _percentile(stats.latency_ms, 50),
        "latency_p95_ms": _percentile(stats.latency_ms, 95),
    }


def _rate_dict(result: RateComparison) -> dict[str, Any]:
    return {
        "champion": _num(result.champion),
        "challenger": _num(result.challenger),
        "difference": _num(result.difference),
        "ci": _pair(result.ci),
        "p_value": _num(result.p_value),
        "p_value_sequential": _num(result.p_value_sequential),
    }


def _latency_dict(result: LatencyComparison) -> dict[str, Any]:
    return {
        "mann_whitney_p": _num(result.mann_whitney_p),
        "hodges_lehmann_ms": _num(result.hodges_lehmann),
        "p95_ratio": _num(result.p95_ratio),
    }


def _votes_dict(result: VoteComparison) -> dict[str, Any]:
    ratings = result.bradley_terry or {}
    counts = result.counts
    return {
        "challenger_wins": counts.challenger_wins,
        "champion_wins": counts.champion_wins,
        "ties": counts.ties,
        "both_bad": counts.both_bad,
        "win_rate": _num(result.win_rate),
        "p_value": _num(result.p_value),
        "bradley_terry": {arm: _num(ratings.get(arm)) for arm in ARMS},
    }


def _arm_problems(stats: ArmStats, arm: str) -> list[str]:
    problems = []
    if stats.requests < 0 or stats.units < 0:
        problems.append(f"{arm}: negative request or unit count")
    if stats.units > stats.requests >= 0:
        problems.append(f"{arm}: more units ({stats.units}) than requests ({stats.requests})")
    return problems


def _burn_in(result: RateComparison, ready: bool) -> RateComparison:
    """The comparison without its sequential test before the burn-in (see :func:`analyse`)."""
    return result if ready else replace(result, sequential=None, p_value_sequential=None)


def analyse(
    champion: ArmStats,
    challenger: ArmStats,
    votes: VoteCounts,
    weights: Mapping[str, float],
    policy: Policy,
    stage_index: int,
    sequential_history: SequentialHistory | None = None,
    *,
    stage_units: Mapping[str, int] | None = None,
) -> Analysis:
    """Run every test and the policy on cumulative per-arm statistics.

    ``weights`` are the arm weights in force (``{"champion": 95, "challenger": 5}``, any
    scale). ``stage_units`` are the distinct units per arm seen since those weights took
    effect: the SRM test and the per-stage minimum use them. Without it the cumulative
    ``units`` are used, which is right only while the experiment has had a single stage.
    ``sequential_history`` is the previous look's :meth:`Analysis.sequential_state`.

    Burn-in: an always-valid test on a plug-in standard error is only valid once each arm
    has a sample (three ratings, all up, have variance 0: "p = 1e-23" on a handful of
    users), and the running minimum would keep such a spurious look for good. So the
    thumbs tests start, and are carried to the next look, only once each arm has
    ``policy.min_rated`` ratings; the error-rate tests once each has
    ``policy.min_guardrail_requests`` requests. Before that they are absent (``None``).
    """
    history = sequential_history or {}
    thumbs_ready = min(champion.thumbs.sum_y, challenger.thumbs.sum_y) >= policy.min_rated
    errors_ready = min(champion.requests, challenger.requests) >= policy.min_guardrail_requests
    units = (
        dict(stage_units)
        if stage_units is not None
        else {
            "champion": champion.units,
            "challenger": challenger.units,
        }
    )
    problems = _arm_problems(champion, "champion") + _arm_problems(challenger, "challenger")
    thumbs = _burn_in(
        compare_rates(
            champion.thumbs,
            challenger.thumbs,
            tau2=policy.mixing_sd**2,
            alpha=policy.alpha,
            previous=history.get("thumbs"),
        ),
        thumbs_ready,
    )
    errors = _burn_in(
        compare_rates(
            champion.errors,
            challenger.errors,
            higher_is_better=False,
            tau2=policy.error_mixing_sd**2,
            alpha=policy.alpha,
            previous=history.get("errors"),
        ),
        errors_ready,
    )
    vote_result = compare_votes(
        votes, tau2=policy.mixing_sd**2, alpha=policy.alpha, previous=history.get("votes")
    )

    def shifted(
        result: RateComparison | VoteComparison, key: str, null: float, tau2: float
    ) -> SequentialTest | None:
        if isinstance(result, VoteComparison):
            if result.win_rate is None:
                return None
            estimate, se = result.win_rate - 0.5, 0.5 / math.sqrt(result.decisive)
        else:
            if result.difference is None or result.std_error is None:
                return None
            estimate, se = result.difference, result.std_error
        return msprt(
            estimate, se, tau2=tau2, alpha=policy.alpha, null=null, previous=history.get(key)
        )

    ni = policy.test == "non_inferiority"
    tau2 = policy.mixing_sd**2
    partial = Analysis(
        champion=champion,
        challenger=challenger,
        vote_counts=votes,
        weights=dict(weights),
        stage_units=units,
        thumbs=thumbs,
        errors=errors,
        latency=compare_latency(champion.latency_ms, challenger.latency_ms),
        ttft=compare_latency(champion.ttft_ms, challenger.ttft_ms),
        votes=vote_result,
        srm=check_srm(units, weights, threshold=policy.srm_threshold),
        thumbs_noninferiority=(
            shifted(thumbs, "thumbs_noninferiority", -policy.margin, tau2)
            if ni and thumbs_ready
            else None
        ),
        votes_noninferiority=(
            shifted(vote_result, "votes_noninferiority", -policy.margin, tau2) if ni else None
        ),
        errors_guardrail=(
            shifted(
                errors,
                "errors_guardrail",
                policy.max_error_rate_increase,
                policy.error_mixing_sd**2,
            )
            if errors_ready
            else None
        ),
        problems=tuple(problems),
        decision=Decision("continue"),
    )
    return replace(partial, decision=decide(partial, policy, stage_index))
