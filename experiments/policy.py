"""The decision policy: advance, promote, roll back, halt, end inconclusive, or continue.

:class:`Policy` holds the per-experiment configuration (JSON round trip with
:meth:`Policy.from_dict` / :meth:`Policy.to_dict`); :func:`decide` reads an
:class:`experiments.analysis.Analysis` and returns a :class:`Decision`. The rules, in order:

1. **halt** on broken data (negative counts, NaN, more successes than trials) or a sample
   ratio mismatch (anytime-valid p < ``srm_alpha``, :mod:`experiments.srm`): challenger
   traffic stops and an operator is alerted; an admin may resume after investigating.
2. **rollback** when a guardrail fails on its own, whatever the primary metric says. Each
   guardrail is a one-sided always-valid test of its own bound (running minimum of the
   p-value < ``alpha``), after its burn-in:
   error rate — ``challenger - champion <= max_error_rate_increase`` (``error_rate_bound``
   "absolute") or ``challenger <= (1 + max_error_rate_increase) * champion`` ("relative"),
   stratified by phase, from ``min_guardrail_units`` units per arm;
   latency / TTFT — ``challenger p95 <= bound * champion p95`` on the current stage's
   requests, failures counted as the slowest (:func:`experiments.latency.tail_test`);
   the **other** metric (votes when thumbs are primary, and vice versa) — not worse than
   ``guardrail_margin`` (thumbs from ``min_rated_units`` rated units per arm, votes from
   ``min_votes`` decisive votes, clustered by voter).
3. **rollback** when the primary metric is worse (running minimum of its one-sided p).
4. **continue** while an arm has fewer than ``min_units`` units in the current stage, or
   the primary metric is in its burn-in.
5. the primary metric **better** (non-inferior with ``test="non_inferiority"``): its
   one-sided always-valid p **at this look** < ``alpha``. Evidence found at an earlier
   stage does not carry: each stage decides on the evidence at its own looks, its own data
   included. Unless a guardrail's point estimate is past its bound (that blocks it):
   **advance** to the next stage, or **promote** at the last.
6. at ``max_units`` challenger units or after ``max_days``: **rollback** if a guardrail's
   point estimate is past its bound, else **inconclusive** (the champion keeps the traffic).
7. **continue** (a blocked winner too, with the guardrail's reason).

Every estimate is stratified by phase (a period of constant weights, see
:mod:`experiments.rates`), so traffic changes while the base rate drifts cannot fake an
effect. ``alpha`` is the probability of a false promotion for an A/A challenger under
continuous monitoring (asymptotically), and likewise of a false rollback per test;
``benchmarks/sequential.py`` measures both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from experiments.analysis import Analysis

__all__ = ["ACTIONS", "Decision", "Policy", "decide"]

ACTIONS = ("advance", "promote", "rollback", "continue", "halt", "inconclusive")
PRIMARY_METRICS = ("thumbs", "votes")
TESTS = ("superiority", "non_inferiority")
ERROR_BOUNDS = ("absolute", "relative")
#: Stored policies of earlier versions: old field name -> new one (None: dropped).
_LEGACY = {
    "min_rated": "min_rated_units",
    "min_guardrail_requests": "min_guardrail_units",
    "srm_threshold": "srm_alpha",
    "latency_alpha": None,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """One of :data:`ACTIONS` with the human-readable reasons behind it."""

    action: str
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reasons": list(self.reasons)}


@dataclass(frozen=True, slots=True)
class Policy:
    """Per-experiment decision policy; every field has a documented default."""

    #: Challenger traffic percent at each stage; the last stage promotes.
    stages: tuple[float, ...] = (5.0, 25.0, 50.0)
    #: The metric that decides: "thumbs" (thumbs-up rate) or "votes" (pairwise win rate).
    #: The other one is a "not worse" guardrail.
    primary_metric: str = "thumbs"
    #: "superiority" or "non_inferiority" (with ``margin``).
    test: str = "superiority"
    #: Non-inferiority margin, absolute: 0.02 accepts a challenger at most 2 points worse.
    margin: float = 0.0
    #: Always-valid one-sided error rate of each decision (false promotion, false rollback).
    alpha: float = 0.05
    #: Minimum distinct units per arm in the current stage before advancing or promoting.
    min_units: int = 200
    #: Burn-in of the thumbs tests: rated units per arm before they run (a plug-in standard
    #: error on a handful of users is not a standard error).
    min_rated_units: int = 100
    #: Burn-in of the votes tests: decisive votes.
    min_votes: int = 30
    #: End the experiment after this many challenger units without a conclusion (None: no cap).
    max_units: int | None = 20_000
    #: End the experiment after this many days without a conclusion (None: no cap).
    max_days: float | None = 28.0
    #: mSPRT mixing standard deviation for thumbs-up rate and win-rate differences.
    mixing_sd: float = 0.05
    #: mSPRT mixing standard deviation for error-rate differences.
    error_mixing_sd: float = 0.02
    #: mSPRT mixing standard deviation for the latency tail-exceedance differences.
    tail_mixing_sd: float = 0.05
    #: How much worse the non-primary metric may be (rate points, or win-rate points below 0.5).
    guardrail_margin: float = 0.0
    #: Guardrail on the error rate: the bound, in points ("absolute") or as a fraction of the
    #: champion's rate ("relative": 0.5 allows 1.5x the champion's error rate).
    max_error_rate_increase: float = 0.02
    #: "absolute" or "relative", see ``max_error_rate_increase``.
    error_rate_bound: str = "absolute"
    #: Guardrail: challenger p95 latency / champion p95 latency bound.
    max_latency_p95_ratio: float = 1.5
    #: Guardrail: challenger p95 TTFT / champion p95 TTFT bound.
    max_ttft_p95_ratio: float = 1.5
    #: Burn-in of the error and latency guardrails: units with logged requests per arm
    #: (units, not requests: one heavy user is one sample).
    min_guardrail_units: int = 100
    #: False-alarm rate of the anytime-valid sample ratio mismatch test.
    srm_alpha: float = 0.001
    #: Act on decisions (read by the evaluator; :func:`decide` ignores it).
    auto: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(float(s) for s in self.stages))
        problems = []
        if not self.stages or any(not 0 < s <= 100 for s in self.stages):
            problems.append("stages must be challenger percents in (0, 100]")
        if any(b <= a for a, b in zip(self.stages, self.stages[1:], strict=False)):
            problems.append("stages must increase")
        if self.primary_metric not in PRIMARY_METRICS:
            problems.append(
                f"primary_metric must be one of {PRIMARY_METRICS} (the other metric is a guardrail)"
            )
        if self.test not in TESTS:
            problems.append(f"test must be one of {TESTS}")
        if self.error_rate_bound not in ERROR_BOUNDS:
            problems.append(f"error_rate_bound must be one of {ERROR_BOUNDS}")
        for name in ("alpha", "srm_alpha"):
            if not 0 < getattr(self, name) < 1:
                problems.append(f"{name} must lie in (0, 1)")
        positive = ("mixing_sd", "error_mixing_sd", "tail_mixing_sd")
        for name in (*positive, "max_latency_p95_ratio", "max_ttft_p95_ratio"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be positive")
        for name in ("margin", "guardrail_margin"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must lie in [0, 1)")
        limit = self.max_error_rate_increase
        if not (math.isfinite(limit) and limit >= 0) or (
            self.error_rate_bound == "absolute" and limit >= 1
        ):
            problems.append("max_error_rate_increase must lie in [0, 1) (absolute) or >= 0")
        for name in ("min_units", "min_rated_units", "min_votes", "min_guardrail_units"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.max_units is not None and self.max_units <= 0:
            problems.append("max_units must be positive or null")
        if self.max_days is not None and not (math.isfinite(self.max_days) and self.max_days > 0):
            problems.append("max_days must be positive or null")
        if self.max_units is None and self.max_days is None:
            problems.append("set max_units or max_days: every experiment must end")
        if problems:
            raise ValueError("invalid policy: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Build from JSON; unknown keys are an error (a typo must not silently default).

        Policies stored by earlier versions load with their renamed fields (``_LEGACY``);
        their primary metric "both" becomes "thumbs" with votes as a guardrail.
        """
        values = dict(data)
        for old, new in _LEGACY.items():
            if old in values and (new is None or new not in values):
                value = values.pop(old)
                if new is not None:
                    values[new] = value
        if values.get("primary_metric") == "both":
            values["primary_metric"] = "thumbs"
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown policy fields: {', '.join(unknown)}")
        if "stages" in values:
            values["stages"] = tuple(values["stages"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``Policy.from_dict(p.to_dict()) == p``."""
        data = asdict(self)
        data["stages"] = list(self.stages)
        return data


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _guardrails(analysis: Analysis, policy: Policy) -> tuple[list[str], list[str]]:
    """(failures that roll back on their own, point estimates past a bound that block)."""
    failures: list[str] = []
    blocking: list[str] = []
    guard = analysis.errors_guardrail
    errors = analysis.errors
    if guard is not None and guard.sequential is not None and errors.difference is not None:
        bound = policy.max_error_rate_increase
        limit = (
            f"{1 + bound:.2f}x the champion's"
            if policy.error_rate_bound == "relative"
            else f"+{100 * bound:.1f} points"
        )
        text = f"error rate {_pct(errors.challenger)} vs {_pct(errors.champion)} (bound {limit}"
        if guard.sequential.p_greater < policy.alpha:
            p = guard.sequential.p_greater
            failures.append(f"{text}; always-valid p = {p:.2g} that it is within)")
        elif guard.difference is not None and guard.difference > guard.sequential.null:
            blocking.append(f"{text}; not yet significant)")
    for name, tail in (("latency", analysis.latency_guardrail), ("TTFT", analysis.ttft_guardrail)):
        if tail.sequential is None:
            continue
        ratio = "n/a" if tail.p95_ratio is None else f"{tail.p95_ratio:.2f}x"
        text = f"{name} p95 is {ratio} the champion's (bound {tail.bound:.2f}x"
        if tail.sequential.p_greater < policy.alpha:
            failures.append(
                f"{text}; always-valid p = {tail.sequential.p_greater:.2g} that it is within)"
            )
        elif tail.p95_ratio is None or tail.p95_ratio > tail.bound:
            blocking.append(f"{text}; not yet significant)")
    # The metric that does not decide must not be worse (by more than guardrail_margin).
    other = "votes" if policy.primary_metric == "thumbs" else "thumbs"
    verdict, text = _verdict(analysis, policy, other)
    if verdict == "worse":
        failures.append(f"{other} guardrail: {text}")
    elif verdict in ("better", "inconclusive") and _point_worse(analysis, policy, other):
        blocking.append(f"{other} guardrail: {text}")
    return failures, blocking


def _point_worse(analysis: Analysis, policy: Policy, metric: str) -> bool:
    """Whether the metric's point estimate is below its null (a bound it should not cross)."""
    if metric == "thumbs":
        seq, estimate = analysis.thumbs.sequential, analysis.thumbs.difference
    else:
        seq = analysis.votes.sequential
        win_rate = analysis.votes.win_rate
        estimate = None if win_rate is None else win_rate - 0.5
    return seq is not None and estimate is not None and estimate < seq.null


def _verdict(analysis: Analysis, policy: Policy, metric: str) -> tuple[str, str]:
    """("better" | "worse" | "inconclusive" | "insufficient", explanation) for one metric.

    Better is this look's one-sided p; worse the running minimum (module docstring).
    """
    if metric == "thumbs":
        rates = analysis.thumbs
        seq = rates.sequential
        if seq is None:
            rated = min(rates.rated_units)
            reason = rates.reason or f"{rated} rated units per arm of {policy.min_rated_units}"
            return "insufficient", f"thumbs-up rate: {reason}"
        label = (
            f"thumbs-up rate {_pct(rates.challenger)} vs {_pct(rates.champion)} "
            f"(difference {100 * (rates.difference or 0.0):+.1f} points stratified by phase"
        )
        unit = "points"
    else:
        votes = analysis.votes
        seq = votes.sequential
        if seq is None:
            reason = votes.reason or f"{votes.decisive} decisive votes of {policy.min_votes}"
            return "insufficient", f"votes: {reason}"
        label = (
            f"challenger wins {_pct(votes.win_rate)} of {votes.decisive} decisive votes "
            f"from {votes.voters} voters ("
        )
        unit = "win-rate points"
    shift = -seq.null
    target = f"non-inferior within {100 * shift:.1f} {unit}" if shift > 0 else "better"
    if seq.p_less < policy.alpha:
        worse = f"worse by more than {100 * shift:.1f} {unit}" if shift > 0 else "worse"
        return "worse", f"{label}; {worse}, always-valid p = {seq.p_less:.2g})"
    if seq.p_greater_look < policy.alpha:
        return (
            "better",
            f"{label}; {target}, always-valid p = {seq.p_greater_look:.2g} at this look)",
        )
    return (
        "inconclusive",
        f"{label}; not yet shown {target}, always-valid p = {seq.p_greater_look:.2g} at this look)",
    )


def _broken(analysis: Analysis) -> list[str]:
    results: dict[str, Any] = {
        "thumbs-up rate": analysis.thumbs,
        "error rate": analysis.errors,
        "latency": analysis.latency,
        "TTFT": analysis.ttft,
        "votes": analysis.votes,
        "SRM": analysis.srm,
    }
    return list(analysis.problems) + [
        f"{name}: {result.reason}" for name, result in results.items() if result.status == "invalid"
    ]


def _at_cap(analysis: Analysis, policy: Policy) -> str | None:
    units = analysis.challenger.units
    if policy.max_units is not None and units >= policy.max_units:
        return f"no conclusion after {units} challenger units (max_units {policy.max_units})"
    days = analysis.look.elapsed_days
    if policy.max_days is not None and days >= policy.max_days:
        return f"no conclusion after {days:.1f} days (max_days {policy.max_days:g})"
    return None


def decide(analysis: Analysis, policy: Policy, stage_index: int) -> Decision:
    """Apply the policy (rules in the module docstring) at stage ``stage_index`` (0-based)."""
    if not 0 <= stage_index < len(policy.stages):
        raise ValueError(f"stage_index {stage_index} outside 0..{len(policy.stages) - 1}")
    broken = _broken(analysis)
    if broken:
        return Decision("halt", ("broken data, stop and alert:", *broken))
    if analysis.srm.mismatch:
        return Decision(
            "halt",
            (analysis.srm.reason, "assignment or logging is broken: investigate, then resume"),
        )

    failures, blocking = _guardrails(analysis, policy)
    if failures:
        return Decision("rollback", tuple(f"guardrail failed: {f}" for f in failures))
    verdict, reason = _verdict(analysis, policy, policy.primary_metric)
    if verdict == "worse":
        return Decision("rollback", (reason,))
    short = [
        f"{arm}: {n} units in this stage of {policy.min_units}"
        for arm, n in analysis.look.stage_units.items()
        if n < policy.min_units
    ]
    guard_text = tuple(f"guardrail: {b}" for b in blocking)
    if verdict == "better" and not short and not blocking:
        if stage_index == len(policy.stages) - 1:
            return Decision("promote", (reason, "last stage passed: promote the challenger"))
        step = f"advance to {policy.stages[stage_index + 1]:g}% challenger traffic"
        return Decision("advance", (reason, step))
    cap = _at_cap(analysis, policy)
    if cap is not None:
        if blocking:
            return Decision("rollback", (reason, *guard_text, cap))
        return Decision("inconclusive", (reason, cap, "the champion keeps all traffic"))
    if short or verdict == "insufficient":
        return Decision("continue", ("not enough data yet:", *short, reason))
    return Decision("continue", (reason, *guard_text))
