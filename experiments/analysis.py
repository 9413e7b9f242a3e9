"""One analysis of a canary: every test on both arms, and the policy's decision.

Entry point: :func:`analyse`, given the per-arm statistics and a :class:`Look` (what the
evaluator knows about the experiment's phases at this look). :meth:`Analysis.to_dict` is the
JSON the experiment API returns (no NaN: missing values are ``None``);
:meth:`Analysis.sequential_state` is what the caller stores and passes back as
``sequential_history`` at the next look, so the always-valid p-values keep their running
minimum (see :mod:`experiments.sequential`). Tests whose data restart (the SRM window, the
latency of a new stage) carry their window's name in that state and start afresh when it
changes.

Each metric has one always-valid test, the one the policy uses: the primary metric's
(null 0, or ``-margin`` for non-inferiority) and the other metric's "not worse" guardrail
(null ``-guardrail_margin``). The API shows its one-sided p-values: ``p_better`` at this
look (what promotion needs) and ``p_worse``, the running minimum (what rollback needs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from experiments.latency import LatencyComparison, TailTest, compare_latency, tail_test
from experiments.policy import Decision, Policy, decide
from experiments.rates import RateComparison, compare_rates
from experiments.sequential import SequentialTest
from experiments.srm import SrmResult, check_srm
from experiments.stats import ArmStats, VoteCounts
from experiments.votes import VoteComparison, compare_votes, vote_test

__all__ = ["Analysis", "Look", "SequentialHistory", "analyse"]

#: Running minima of the always-valid p-values, keyed by test; JSON-able.
SequentialHistory = Mapping[str, Mapping[str, Any]]

ARMS = ("champion", "challenger")


@dataclass(frozen=True, slots=True)
class Look:
    """What the evaluator knows at one look, besides the per-arm statistics."""

    stage_index: int
    #: Arm weights of the current stage (any scale), e.g. ``{"champion": 95, "challenger": 5}``.
    weights: Mapping[str, float]
    #: Distinct units the split assigned per arm in the current stage's running phases.
    stage_units: Mapping[str, int] = field(default_factory=dict)
    #: The same over the SRM window (the stage's running phases since the last halt).
    srm_units: Mapping[str, int] = field(default_factory=dict)
    #: Names the SRM window: a new value starts the SRM test afresh.
    srm_window: str = "0"
    #: Days since the experiment started.
    elapsed_days: float = 0.0


@dataclass(frozen=True, slots=True)
class Analysis:
    """All test results for one look at the experiment, plus the decision taken on them."""

    champion: ArmStats
    challenger: ArmStats
    vote_counts: VoteCounts
    look: Look
    policy: Policy
    thumbs: RateComparison  # sequential: the thumbs test the policy uses (None: burn-in)
    errors: RateComparison  # the plain difference (null 0), for reading
    errors_guardrail: RateComparison | None  # the bound's test (None: burn-in)
    latency: LatencyComparison  # descriptive: percentiles, Mann-Whitney, Hodges-Lehmann
    ttft: LatencyComparison
    latency_guardrail: TailTest
    ttft_guardrail: TailTest
    votes: VoteComparison  # sequential: the votes test the policy uses (None: burn-in)
    srm: SrmResult
    problems: tuple[str, ...]
    decision: Decision

    @property
    def errors_guardrail_test(self) -> SequentialTest | None:
        """The error bound's always-valid test (None in its burn-in)."""
        return None if self.errors_guardrail is None else self.errors_guardrail.sequential

    def sequential_state(self) -> dict[str, dict[str, Any]]:
        """Running minima to pass back as ``sequential_history`` at the next look."""
        out: dict[str, dict[str, Any]] = {}
        for key, test in (
            ("thumbs", self.thumbs.sequential),
            ("votes", self.votes.sequential),
            ("errors", self.errors.sequential),
            ("errors_guardrail", self.errors_guardrail_test),
        ):
            if test is not None:
                out[key] = test.state()
        stage = self.look.stage_index
        for key, tail in (("latency", self.latency_guardrail), ("ttft", self.ttft_guardrail)):
            if tail.sequential is not None:
                out[key] = {**tail.sequential.state(), "stage": stage}
        if self.srm.status == "ok":
            out["srm"] = {**self.srm.state(), "window": self.look.srm_window}
        return out

    def to_dict(self) -> dict[str, Any]:
        """The experiment API's ``analysis`` object (shape documented in the README)."""
        primary = self.policy.primary_metric
        return {
            "arms": {arm: _arm_dict(self, arm) for arm in ARMS},
            "metrics": {
                "thumbs_up_rate": {
                    "role": "primary" if primary == "thumbs" else "guardrail",
                    **_rate_dict(self.thumbs),
                },
                "error_rate": {
                    "role": "guardrail",
                    **_rate_dict(self.errors),
                    "bound": self.policy.max_error_rate_increase,
                    "bound_type": self.policy.error_rate_bound,
                    "p_above_bound": _p_min(self.errors_guardrail_test),
                },
                "latency": _latency_dict(self.latency, self.latency_guardrail),
                "ttft": _latency_dict(self.ttft, self.ttft_guardrail),
                "votes": {
                    "role": "primary" if primary == "votes" else "guardrail",
                    **_votes_dict(self.votes),
                },
            },
            "srm": {
                "p_value": _num(self.srm.p_value),
                "mismatch": self.srm.mismatch,
                "observed": self.srm.observed,
                "expected": self.srm.expected,
                "window": self.look.srm_window,
            },
            "decision": self.decision.to_dict(),
        }


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _pair(x: tuple[float, float] | None) -> list[float | None] | None:
    return None if x is None else [_num(x[0]), _num(x[1])]


def _p_min(test: SequentialTest | None) -> float | None:
    return None if test is None else _num(test.p_greater)


def _percentile(sample: tuple[float, ...], q: float) -> float | None:
    if not sample:
        return None
    # Failures are +inf: the percentile is unknown (None) once it lands on one.
    return _num(float(np.percentile(np.asarray(sample, dtype=np.float64), q, method="higher")))


def _arm_dict(analysis: Analysis, arm: str) -> dict[str, Any]:
    stats = analysis.champion if arm == "champion" else analysis.challenger
    counts = analysis.vote_counts
    wins = counts.champion_wins if arm == "champion" else counts.challenger_wins
    errors, thumbs = stats.errors.pooled(), stats.thumbs.pooled()
    return {
        "requests": stats.requests,
        "units": stats.units,
        "errors": int(errors.sum_x) if math.isfinite(errors.sum_x) else None,
        "thumbs_up": int(thumbs.sum_x) if math.isfinite(thumbs.sum_x) else None,
        "thumbs_down": (
            int(thumbs.sum_y - thumbs.sum_x) if math.isfinite(thumbs.sum_y - thumbs.sum_x) else None
        ),
        "votes": wins,  # votes this arm won; ties and both-bad are under metrics.votes
        "latency_p50_ms": _percentile(stats.latency_ms, 50),
        "latency_p95_ms": _percentile(stats.latency_ms, 95),
    }


def _sequential_dict(seq: SequentialTest | None, higher_is_better: bool = True) -> dict[str, Any]:
    """One-sided p-values named by what they mean for the challenger (an error rate that
    goes up is worse)."""
    better = None if seq is None else (seq.p_greater_look if higher_is_better else seq.p_less_look)
    worse = None if seq is None else (seq.p_less if higher_is_better else seq.p_greater)
    return {
        "p_better": _num(better),
        "p_worse": _num(worse),
        "p_value_sequential_two_sided": None if seq is None else _num(seq.p_value),
        "confidence_sequence": None if seq is None else _pair(seq.ci),
    }


def _rate_dict(result: RateComparison) -> dict[str, Any]:
    return {
        "champion": _num(result.champion),
        "challenger": _num(result.challenger),
        "difference": _num(result.difference),
        "ci": _pair(result.ci),
        "p_value": _num(result.p_value),
        **_sequential_dict(result.sequential, result.higher_is_better),
        "prob_challenger_better": _num(result.prob_challenger_better),
        "expected_loss": _num(result.expected_loss),
        "shrunk_difference": _num(result.shrunk_difference),
        "phases": [
            {
                "weight": _num(p.weight),
                "champion": _num(p.champion),
                "challenger": _num(p.challenger),
            }
            for p in result.phases
        ],
    }


def _latency_dict(result: LatencyComparison, guard: TailTest) -> dict[str, Any]:
    return {
        "role": "guardrail",
        "champion_p50": _num(result.champion_p50),
        "challenger_p50": _num(result.challenger_p50),
        "champion_p95": _num(guard.champion_p95),
        "challenger_p95": _num(guard.challenger_p95),
        "p95_ratio": _num(guard.p95_ratio),
        "bound": guard.bound,
        "threshold_ms": _num(guard.threshold_ms),
        "champion_exceed": _num(guard.champion_exceed),
        "challenger_exceed": _num(guard.challenger_exceed),
        "p_above_bound": _p_min(guard.sequential),
        "mann_whitney_p": _num(result.mann_whitney_p),
        "hodges_lehmann_ms": _num(result.hodges_lehmann),
    }


def _votes_dict(result: VoteComparison) -> dict[str, Any]:
    ratings = result.bradley_terry or {}
    counts = result.counts
    return {
        "challenger_wins": counts.challenger_wins,
        "champion_wins": counts.champion_wins,
        "ties": counts.ties,
        "both_bad": counts.both_bad,
        "voters": result.voters,
        "win_rate": _num(result.win_rate),
        "p_value": _num(result.p_value),
        **_sequential_dict(result.sequential),
        "bradley_terry": {arm: _num(ratings.get(arm)) for arm in ARMS},
    }


def _arm_problems(stats: ArmStats, arm: str) -> list[str]:
    problems = []
    if stats.requests < 0 or stats.units < 0:
        problems.append(f"{arm}: negative request or unit count")
    if stats.units > stats.requests >= 0:
        problems.append(f"{arm}: more units ({stats.units}) than requests ({stats.requests})")
    return problems


def _answered(sample: tuple[float, ...]) -> tuple[float, ...]:
    """The sample without failures (``+inf``)."""
    return tuple(v for v in sample if v != math.inf)


def _windowed(
    history: SequentialHistory, key: str, name: str, value: Any
) -> Mapping[str, Any] | None:
    """The stored state of ``key`` when it belongs to the same window, else None (restart)."""
    state = history.get(key)
    return state if state is not None and state.get(name) == value else None


def analyse(
    champion: ArmStats,
    challenger: ArmStats,
    votes: VoteCounts,
    policy: Policy,
    look: Look,
    sequential_history: SequentialHistory | None = None,
) -> Analysis:
    """Run every test and the policy on the per-arm statistics of the running phases.

    ``sequential_history`` is the previous look's :meth:`Analysis.sequential_state`.

    Burn-in: an always-valid test on a plug-in standard error is only valid once each arm
    has a sample (three users, all thumbs up, have variance 0: "p = 1e-23"), and the running
    minimum would keep such a spurious look for good. So the thumbs test starts, and is
    carried to the next look, once each arm has ``min_rated_units`` rated units (units,
    not ratings: one heavy user is one sample); the votes test after ``min_votes`` decisive
    votes; the error and latency guardrails after ``min_guardrail_units`` units per arm.
    """
    history = sequential_history or {}
    ni = policy.test == "non_inferiority"
    thumbs_primary = policy.primary_metric == "thumbs"
    thumbs_null = (-policy.margin if ni else 0.0) if thumbs_primary else -policy.guardrail_margin
    votes_null = (-policy.margin if ni else 0.0) if not thumbs_primary else -policy.guardrail_margin
    tau2 = policy.mixing_sd**2
    rated = min(champion.thumbs.distinct_units, challenger.thumbs.distinct_units)
    thumbs_ready = rated >= policy.min_rated_units
    guardrails_ready = (
        min(champion.errors.distinct_units, challenger.errors.distinct_units)
        >= policy.min_guardrail_units
    )
    problems = _arm_problems(champion, "champion") + _arm_problems(challenger, "challenger")

    thumbs = compare_rates(
        champion.thumbs,
        challenger.thumbs,
        null=thumbs_null,
        tau2=tau2,
        alpha=policy.alpha,
        previous=history.get("thumbs"),
    )
    if not thumbs_ready:
        thumbs = replace(thumbs, sequential=None)
    errors = compare_rates(
        champion.errors,
        challenger.errors,
        higher_is_better=False,
        tau2=policy.error_mixing_sd**2,
        alpha=policy.alpha,
        previous=history.get("errors"),
    )
    if not guardrails_ready:
        errors = replace(errors, sequential=None)
    relative = policy.error_rate_bound == "relative"
    bound = policy.max_error_rate_increase
    errors_guardrail = (
        compare_rates(
            champion.errors,
            challenger.errors,
            higher_is_better=False,
            rho=1.0 + bound if relative else 1.0,
            null=0.0 if relative else bound,
            tau2=policy.error_mixing_sd**2,
            alpha=policy.alpha,
            previous=history.get("errors_guardrail"),
        )
        if guardrails_ready
        else None
    )
    vote_result = compare_votes(votes, tau2=tau2, alpha=policy.alpha, previous=history.get("votes"))
    vote_result = replace(
        vote_result,
        sequential=(
            vote_test(
                votes,
                null_rate=0.5 + votes_null,
                tau2=tau2,
                alpha=policy.alpha,
                previous=history.get("votes"),
            )
            if vote_result.decisive >= max(policy.min_votes, 1)
            else None
        ),
    )

    def tail(
        key: str, sample_a: tuple[float, ...], sample_b: tuple[float, ...], limit: float
    ) -> TailTest:
        result = tail_test(
            sample_a,
            sample_b,
            bound=limit,
            tau2=policy.tail_mixing_sd**2,
            alpha=policy.alpha,
            previous=_windowed(history, key, "stage", look.stage_index),
        )
        return result if guardrails_ready else replace(result, sequential=None)

    srm = check_srm(
        look.srm_units,
        look.weights,
        alpha=policy.srm_alpha,
        previous=_windowed(history, "srm", "window", look.srm_window),
    )
    partial = Analysis(
        champion=champion,
        challenger=challenger,
        vote_counts=votes,
        look=look,
        policy=policy,
        thumbs=thumbs,
        errors=errors,
        errors_guardrail=errors_guardrail,
        # Descriptive comparisons read the answered requests; the guardrails count failures.
        latency=compare_latency(_answered(champion.latency_ms), _answered(challenger.latency_ms)),
        ttft=compare_latency(_answered(champion.ttft_ms), _answered(challenger.ttft_ms)),
        latency_guardrail=tail(
            "latency", champion.latency_ms, challenger.latency_ms, policy.max_latency_p95_ratio
        ),
        ttft_guardrail=tail(
            "ttft", champion.ttft_ms, challenger.ttft_ms, policy.max_ttft_p95_ratio
        ),
        votes=vote_result,
        srm=srm,
        problems=tuple(problems),
        decision=Decision("continue"),
    )
    return replace(partial, decision=decide(partial, policy, look.stage_index))
