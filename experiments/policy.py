"""The decision policy: advance, promote, roll back, continue or halt a canary.

:class:`Policy` holds the per-experiment configuration (JSON round trip with
:meth:`Policy.from_dict` / :meth:`Policy.to_dict`); :func:`decide` reads an
:class:`experiments.analysis.Analysis` and returns a :class:`Decision`. The rules, in order:

1. **halt** on broken data (negative counts, NaN, more successes than trials, latency NaN)
   or a sample ratio mismatch (``p < srm_threshold``): stop and alert; never promote.
2. **rollback** when a guardrail fails on its own, whatever the primary metric says
   (each needs ``min_guardrail_requests`` logged requests per arm):
   error rate — the always-valid one-sided test rejects ``difference <= max_error_rate_increase``;
   latency / TTFT — p95 ratio above its bound *and* Mann-Whitney ``p < latency_alpha`` with a
   positive Hodges-Lehmann shift. Mann-Whitney is a fixed-horizon test: ``latency_alpha``
   (default 0.001) is strict so that repeated looks (Bonferroni over ~50) stay below 5%.
3. **continue** while the current stage lacks samples: ``min_units`` units per arm seen in
   this stage, ``min_rated`` rated requests per arm (thumbs), ``min_votes`` decisive votes
   (votes), cumulative over the experiment.
4. the primary metric decides, on **always-valid one-sided p-values** (mSPRT, see
   :mod:`experiments.sequential`), each with its own running minimum kept in the analysis's
   sequential state from the look where each arm has ``min_rated`` ratings (the burn-in,
   see :func:`experiments.analysis.analyse`). Superiority: better when
   ``P(H0: difference <= 0) < alpha``, worse when ``P(H0: difference >= 0) < alpha``.
   Non-inferiority with ``margin``: the null is shifted to ``-margin`` (thumbs-up rate
   points, or win-rate points below 0.5 for votes). Worse means
   **rollback**; better (non-inferior) means **advance** to the next stage or, at the last
   stage, **promote** — unless a guardrail's point estimate is past its bound, which gives
   **continue**. With ``primary_metric="both"`` both metrics must be better and either being
   worse rolls back. No conclusion: **continue**, or **rollback** once the challenger has
   ``max_units`` units (when set).

``alpha`` is therefore the probability of a false promotion for an A/A challenger under
continuous monitoring (asymptotically), and likewise of a false rollback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from experiments.analysis import Analysis

__all__ = ["ACTIONS", "Decision", "Policy", "decide"]

ACTIONS = ("advance", "promote", "rollback", "continue", "halt")
PRIMARY_METRICS = ("thumbs", "votes", "both")
TESTS = ("superiority", "non_inferiority")


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
    #: "thumbs" (thumbs-up rate), "votes" (pairwise win rate) or "both".
    primary_metric: str = "thumbs"
    #: "superiority" or "non_inferiority" (with ``margin``).
    test: str = "superiority"
    #: Non-inferiority margin, absolute: 0.02 accepts a challenger at most 2 points worse.
    margin: float = 0.0
    #: Always-valid one-sided error rate of each decision (false promotion, false rollback).
    alpha: float = 0.05
    #: Minimum distinct units per arm seen in the current stage before deciding.
    min_units: int = 200
    #: Minimum rated requests per arm (thumbs) before deciding on thumbs; also the burn-in
    #: before which the thumbs' always-valid test neither runs nor keeps a running minimum.
    min_rated: int = 100
    #: Minimum decisive votes before deciding on votes.
    min_votes: int = 30
    #: Roll back when no conclusion after this many challenger units (None: never).
    max_units: int | None = None
    #: mSPRT mixing standard deviation for thumbs-up rate and win-rate differences.
    mixing_sd: float = 0.05
    #: mSPRT mixing standard deviation for error-rate differences.
    error_mixing_sd: float = 0.02
    #: Guardrail: the challenger's error rate may exceed the champion's by at most this much.
    max_error_rate_increase: float = 0.02
    #: Guardrail: challenger p95 latency / champion p95 latency bound.
    max_latency_p95_ratio: float = 1.5
    #: Guardrail: challenger p95 TTFT / champion p95 TTFT bound.
    max_ttft_p95_ratio: float = 1.5
    #: Significance required of Mann-Whitney for a latency guardrail to fail.
    latency_alpha: float = 0.001
    #: Logged requests per arm before guardrails are evaluated (and the error-rate tests'
    #: burn-in, as ``min_rated`` is the thumbs').
    min_guardrail_requests: int = 100
    #: Sample ratio mismatch threshold on the chi-square p-value.
    srm_threshold: float = 0.001
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
            problems.append(f"primary_metric must be one of {PRIMARY_METRICS}")
        if self.test not in TESTS:
            problems.append(f"test must be one of {TESTS}")
        for name in ("alpha", "latency_alpha", "srm_threshold"):
            if not 0 < getattr(self, name) < 1:
                problems.append(f"{name} must lie in (0, 1)")
        for name in ("mixing_sd", "error_mixing_sd", "max_latency_p95_ratio", "max_ttft_p95_ratio"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be positive")
        for name in ("margin", "max_error_rate_increase"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must lie in [0, 1)")
        for name in ("min_units", "min_rated", "min_votes", "min_guardrail_requests"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.max_units is not None and self.max_units <= 0:
            problems.append("max_units must be positive or null")
        if problems:
            raise ValueError("invalid policy: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Build from JSON; unknown keys are an error (a typo must not silently default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown policy fields: {', '.join(unknown)}")
        values = dict(data)
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
    """(failures that roll back on their own, breaches of a bound that block promotion)."""
    failures: list[str] = []
    blocking: list[str] = []
    enough = min(analysis.champion.requests, analysis.challenger.requests)
    if enough < policy.min_guardrail_requests:
        return failures, [
            f"guardrails need {policy.min_guardrail_requests} requests per arm, have {enough}"
        ]
    errors, guard = analysis.errors, analysis.errors_guardrail
    bound = policy.max_error_rate_increase
    if errors.status == "ok" and errors.difference is not None:
        text = (
            f"error rate {_pct(errors.challenger)} vs {_pct(errors.champion)} "
            f"(bound +{100 * bound:.1f} points"
        )
        if guard is not None and guard.p_greater < policy.alpha:
            failures.append(f"{text}; always-valid p = {guard.p_greater:.2g} that it is within)")
        elif errors.difference > bound:
            blocking.append(f"{text}; not yet significant)")
    for name, result, limit in (
        ("latency", analysis.latency, policy.max_latency_p95_ratio),
        ("TTFT", analysis.ttft, policy.max_ttft_p95_ratio),
    ):
        if result.status != "ok" or result.p95_ratio is None or result.p95_ratio <= limit:
            continue
        text = f"{name} p95 is {result.p95_ratio:.2f}x the champion's (bound {limit:.2f}x"
        shift = result.hodges_lehmann or 0.0
        mw_p = result.mann_whitney_p if result.mann_whitney_p is not None else 1.0
        if mw_p < policy.latency_alpha and shift > 0:
            failures.append(f"{text}; Mann-Whitney p = {mw_p:.2g}, shift +{shift:.0f} ms)")
        else:
            blocking.append(f"{text}; not significant at {policy.latency_alpha:g})")
    return failures, blocking


def _verdict(analysis: Analysis, policy: Policy, metric: str) -> tuple[str, str]:
    """("better" | "worse" | "inconclusive" | "insufficient", explanation) for one metric."""
    ni = policy.test == "non_inferiority"
    if metric == "thumbs":
        rates = analysis.thumbs
        seq = analysis.thumbs_noninferiority if ni else rates.sequential
        rated = min(analysis.champion.thumbs.sum_y, analysis.challenger.thumbs.sum_y)
        # Checked first: below it the sequential test has not started (the burn-in).
        if rated < policy.min_rated:
            return (
                "insufficient",
                f"thumbs: {rated:.0f} rated requests per arm of {policy.min_rated}",
            )
        if rates.status != "ok" or seq is None or seq.status != "ok":
            return "insufficient", f"thumbs-up rate: {rates.reason or 'no variance yet'}"
        label = (
            f"thumbs-up rate {_pct(rates.challenger)} vs {_pct(rates.champion)} "
            f"(difference {100 * (rates.difference or 0.0):+.1f} points"
        )
    else:
        votes = analysis.votes
        seq = analysis.votes_noninferiority if ni else votes.sequential
        if votes.status != "ok" or seq is None or seq.status != "ok":
            return "insufficient", f"votes: {votes.reason or 'no variance yet'}"
        if votes.decisive < policy.min_votes:
            return "insufficient", f"votes: {votes.decisive} decisive votes of {policy.min_votes}"
        label = f"challenger wins {_pct(votes.win_rate)} of {votes.decisive} decisive votes ("
    target = f"non-inferior within {100 * policy.margin:.1f} points" if ni else "better"
    if seq.p_less < policy.alpha:
        worse = "inferior" if ni else "worse"
        return "worse", f"{label}; {worse}, always-valid p = {seq.p_less:.2g})"
    if seq.p_greater < policy.alpha:
        return "better", f"{label}; {target}, always-valid p = {seq.p_greater:.2g})"
    return "inconclusive", f"{label}; not yet shown {target}, always-valid p = {seq.p_greater:.2g})"


def decide(analysis: Analysis, policy: Policy, stage_index: int) -> Decision:
    """Apply the policy (rules in the module docstring) at stage ``stage_index`` (0-based)."""
    if not 0 <= stage_index < len(policy.stages):
        raise ValueError(f"stage_index {stage_index} outside 0..{len(policy.stages) - 1}")
    results = {
        "thumbs-up rate": analysis.thumbs.status,
        "error rate": analysis.errors.status,
        "latency": analysis.latency.status,
        "TTFT": analysis.ttft.status,
        "votes": analysis.votes.status,
        "SRM": analysis.srm.status,
    }
    broken = list(analysis.problems) + [
        f"{name}: {reason}"
        for name, status, reason in zip(
            results,
            results.values(),
            (
                analysis.thumbs.reason,
                analysis.errors.reason,
                analysis.latency.reason,
                analysis.ttft.reason,
                analysis.votes.reason,
                analysis.srm.reason,
            ),
            strict=True,
        )
        if status == "invalid"
    ]
    if broken:
        return Decision("halt", ("broken data, stop and alert:", *broken))
    if analysis.srm.mismatch:
        return Decision("halt", (analysis.srm.reason, "assignment or logging is broken: alert"))

    failures, blocking = _guardrails(analysis, policy)
    if failures:
        return Decision("rollback", tuple(f"guardrail failed: {f}" for f in failures))

    metrics = ["thumbs", "votes"] if policy.primary_metric == "both" else [policy.primary_metric]
    short = [
        f"{arm}: {n} units in this stage of {policy.min_units}"
        for arm, n in analysis.stage_units.items()
        if n < policy.min_units
    ]
    verdicts = [_verdict(analysis, policy, m) for m in metrics]
    reasons = [text for _, text in verdicts]
    if short or any(v == "insufficient" for v, _ in verdicts):
        return Decision("continue", ("not enough data yet:", *short, *reasons))
    if any(v == "worse" for v, _ in verdicts):
        return Decision("rollback", tuple(reasons))
    if all(v == "better" for v, _ in verdicts):
        if blocking:
            return Decision("continue", (*reasons, *(f"guardrail: {b}" for b in blocking)))
        last = stage_index == len(policy.stages) - 1
        if last:
            return Decision("promote", (*reasons, "last stage passed: promote the challenger"))
        step = f"advance to {policy.stages[stage_index + 1]:g}% challenger traffic"
        return Decision("advance", (*reasons, step))
    units = analysis.challenger.units
    if policy.max_units is not None and units >= policy.max_units:
        cap = f"no conclusion after {units} challenger units (max_units {policy.max_units})"
        return Decision("rollback", (*reasons, cap))
    return Decision("continue", tuple(reasons))
