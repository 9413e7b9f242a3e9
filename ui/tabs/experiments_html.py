"""The experiments tab's HTML: status cards, the decision, the tests, the history.

Pure functions of the router's JSON (``GET /v1/experiments/{id}`` and its decisions).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ui.render import badge, esc, ms, notice, num, panel, pct, stat, table

STATUS_TONES = {
    "running": "ok",
    "paused": "warn",
    "halted": "bad",
    "promoted": "ok",
    "rolled_back": "bad",
    "inconclusive": "neutral",
}
#: What each status means for traffic and what an admin may do next.
STATUS_HINTS = {
    "running": "challenger gets its stage's share",
    "paused": "challenger gets no traffic; resume to go on",
    "halted": "stopped by a sample ratio mismatch or broken data; resumable",
    "promoted": "challenger is the champion now",
    "rolled_back": "champion kept; challenger removed",
    "inconclusive": "no conclusion in time; champion keeps the traffic",
}
#: Statuses an experiment can still leave (the rest are final).
LIVE = ("running", "paused", "halted")
ACTION_TONES = {
    "start": "neutral",
    "continue": "neutral",
    "advance": "ok",
    "promote": "ok",
    "rollback": "bad",
    "halt": "bad",
    "inconclusive": "neutral",
    "pause": "warn",
    "resume": "ok",
}


def when(value: str | None) -> str:
    if not value:
        return "—"
    moment = datetime.fromisoformat(value)
    return moment.strftime("%Y-%m-%d %H:%M")


def choice(exp: dict[str, Any]) -> tuple[str, str]:
    label = (
        f"{exp['id']} · {exp['status'].replace('_', ' ')} · "
        f"v{exp['champion_version']} vs v{exp['challenger_version']} · "
        f"{when(exp.get('created_at'))}"
    )
    return label, exp["id"]


def summary_html(exp: dict[str, Any]) -> str:
    """Status, stage, split, versions and mode as stat cards."""
    stages = exp.get("stages") or []
    weights = exp.get("weights") or {}
    stage = exp.get("stage") or exp.get("stage_index", 0) + 1
    current = stages[stage - 1] if 0 < stage <= len(stages) else None
    auto = (exp.get("policy") or {}).get("auto")
    status = exp["status"]
    hint = STATUS_HINTS.get(status, "")
    cards = [
        '<div class="cr-stat"><div class="cr-stat-value">'
        f"{badge(status.replace('_', ' '), STATUS_TONES.get(status, 'neutral'))}</div>"
        '<div class="cr-stat-label">Status</div>'
        + (f'<div class="cr-stat-hint">{esc(hint)}</div>' if hint else "")
        + "</div>",
        stat(
            "Stage",
            f"{stage} of {len(stages)}",
            f"challenger at {num(current, 0)}%" if current is not None else "",
        ),
        stat(
            "Traffic split",
            f"{pct(weights.get('champion'), 0)} / {pct(weights.get('challenger'), 0)}",
            "champion / challenger",
        ),
        stat(
            "Versions",
            f"v{exp['champion_version']} → v{exp['challenger_version']}",
            "champion → challenger",
        ),
        stat(
            "Mode",
            "automatic" if auto else "manual",
            "acts on decisions" if auto else "recommends only",
        ),
    ]
    return '<div class="cr-stats">' + "".join(cards) + "</div>"


def decision_html(decision: dict[str, Any] | None, *, title: str = "Policy says") -> str:
    """The decision (action) in a coloured banner with its reasons."""
    if not decision:
        return notice("No decision yet.", "info")
    action = decision.get("action", "continue")
    reasons = "".join(f"<li>{esc(r)}</li>" for r in decision.get("reasons") or ())
    tone = ACTION_TONES.get(action, "neutral")
    return (
        f'<div class="cr-decision cr-decision-{tone}"><div class="cr-decision-head">'
        f"{esc(title)}: {badge(action, tone)}</div>"
        + (f'<ul class="cr-reasons">{reasons}</ul>' if reasons else "")
        + "</div>"
    )


def analysis_html(analysis: dict[str, Any] | None, policy: dict[str, Any] | None = None) -> str:
    """The latest analysis: arm figures, the decision metrics (primary and guardrail) with
    their always-valid p-values, the error and latency guardrails against their bounds, and
    the sample ratio check. ``policy`` (the experiment's) names the alphas in a footnote."""
    if not analysis or "metrics" not in analysis:
        return panel("Latest analysis", notice("The experiment has ended: see its report.", "info"))
    metrics = analysis["metrics"]
    return panel(
        "Latest analysis",
        _arms_table(analysis.get("arms") or {})
        + _metrics_table(metrics)
        + _guardrails_table(metrics)
        + _srm_table(analysis.get("srm") or {}, policy)
        + _footnote(policy),
    )


def _arms_table(arms: dict[str, Any]) -> str:
    champion, challenger = arms.get("champion") or {}, arms.get("challenger") or {}
    rows = [
        ["Requests", f"{champion.get('requests', 0):,}", f"{challenger.get('requests', 0):,}"],
        ["Units", f"{champion.get('units') or 0:,}", f"{challenger.get('units') or 0:,}"],
        ["Errors", f"{champion.get('errors') or 0:,}", f"{challenger.get('errors') or 0:,}"],
        [
            "Thumbs up / down",
            f"{champion.get('thumbs_up') or 0} / {champion.get('thumbs_down') or 0}",
            f"{challenger.get('thumbs_up') or 0} / {challenger.get('thumbs_down') or 0}",
        ],
        [
            "Latency p50 / p95",
            f"{ms(champion.get('latency_p50_ms'))} / {ms(champion.get('latency_p95_ms'))}",
            f"{ms(challenger.get('latency_p50_ms'))} / {ms(challenger.get('latency_p95_ms'))}",
        ],
    ]
    return table(["", "Champion", "Challenger"], rows, css_class="cr-table cr-arms")


def _metrics_table(metrics: dict[str, Any]) -> str:
    """Thumbs-up rate and votes: one decides (primary), the other must not be worse."""
    thumbs = metrics.get("thumbs_up_rate") or {}
    votes = metrics.get("votes") or {}
    diff = thumbs.get("difference")
    rows = [
        [
            "Thumbs-up rate",
            thumbs.get("role") or "—",
            f"{pct(thumbs.get('champion'))} → {pct(thumbs.get('challenger'))}",
            ("—" if diff is None else f"{100 * diff:+.1f} pts")
            + _sequence(thumbs.get("confidence_sequence")),
            _p(thumbs.get("p_better")),
            _p(thumbs.get("p_worse")),
        ],
        [
            "Arena votes",
            votes.get("role") or "—",
            f"{votes.get('challenger_wins', 0)} : {votes.get('champion_wins', 0)} "
            f"({votes.get('ties', 0)} ties, {votes.get('both_bad', 0)} both bad)",
            f"challenger win rate {pct(votes.get('win_rate'))}"
            + _sequence(votes.get("confidence_sequence")),
            _p(votes.get("p_better")),
            _p(votes.get("p_worse")),
        ],
    ]
    header = [
        "Metric",
        "Role",
        "Champion → challenger",
        "Difference (confidence sequence)",
        "p (better, at this look)",
        "p (worse)",
    ]
    return table(header, rows, css_class="cr-table cr-metrics")


def _guardrails_table(metrics: dict[str, Any]) -> str:
    """Error rate, latency and TTFT, each tested against its own bound."""
    errors = metrics.get("error_rate") or {}
    diff = errors.get("difference")
    rows = [
        [
            "Error rate",
            f"{pct(errors.get('champion'))} → {pct(errors.get('challenger'))}"
            + ("" if diff is None else f" ({100 * diff:+.1f} pts)"),
            _error_bound(errors.get("bound"), errors.get("bound_type")),
            _p(errors.get("p_above_bound")),
            "",
        ]
    ]
    for key, label in (("latency", "Latency p95"), ("ttft", "Time to first token p95")):
        m = metrics.get(key) or {}
        shift = m.get("hodges_lehmann_ms")
        more = [f"Mann-Whitney p {_p(m.get('mann_whitney_p'))}"]
        if shift is not None:
            more.append(f"shift {shift:+.0f} ms (Hodges-Lehmann)")
        rows.append(
            [
                label,
                f"{ms(m.get('champion_p95'))} → {ms(m.get('challenger_p95'))} "
                f"(ratio {num(m.get('p95_ratio'), 2)})",
                "—" if m.get("bound") is None else f"ratio ≤ {num(m.get('bound'), 2)}",
                _p(m.get("p_above_bound")),
                "; ".join(more),
            ]
        )
    header = ["Guardrail", "Champion → challenger", "Bound", "p (above bound)", "Also"]
    return table(header, rows, css_class="cr-table cr-guardrails")


def _srm_table(srm: dict[str, Any], policy: dict[str, Any] | None) -> str:
    observed, expected = srm.get("observed") or {}, srm.get("expected") or {}
    alpha = (policy or {}).get("srm_alpha")
    row = [
        "Sample ratio",
        "mismatch!" if srm.get("mismatch") else "as assigned",
        f"{_count(observed.get('champion'))} / {_count(observed.get('challenger'))}",
        f"{_count(expected.get('champion'))} / {_count(expected.get('challenger'))}",
        _p(srm.get("p_value")) + ("" if alpha is None else f" (halts below {alpha:g})"),
        str(srm.get("window") or "—"),
    ]
    header = [
        "Check",
        "Result",
        "Units (champion / challenger)",
        "Expected",
        "Anytime-valid p",
        "Window",
    ]
    return table(header, [row], css_class="cr-table cr-srm")


def _footnote(policy: dict[str, Any] | None) -> str:
    alpha = (policy or {}).get("alpha")
    at = "&alpha;" if alpha is None else f"&alpha; = {alpha:g}"
    return (
        '<div class="cr-muted">Always-valid p-values, stratified by phase. The primary metric '
        f"advances or promotes when its p (better, at this look) is below {at}; any test "
        f"rolls back when its p (worse) or p (above bound) falls below {at}.</div>"
    )


def _error_bound(bound: float | None, kind: str | None) -> str:
    if bound is None:
        return "—"
    if kind == "relative":
        return f"≤ {1 + bound:.2f}x champion's"
    return f"≤ champion {100 * bound:+.1f} pts"


def _sequence(cs: Sequence[float | None] | None) -> str:
    """A confidence sequence of a difference, in points."""
    if not cs or cs[0] is None or cs[1] is None:
        return ""
    return f" [{100 * cs[0]:+.1f}, {100 * cs[1]:+.1f}]"


def _count(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def join_reasons(reasons: Sequence[str]) -> str:
    """Reasons on one line; a reason ending in ':' introduces the ones after it."""
    text = ""
    for reason in reasons:
        text += reason if not text else (" " if text.endswith(":") else "; ") + reason
    return text


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def history_html(decisions: list[dict[str, Any]]) -> str:
    """Every decision, newest first."""
    if not decisions:
        return panel("Decision history", notice("No decisions yet.", "info"))
    rows = []
    for d in reversed(decisions):
        action = d.get("action", "")
        by = f"{d.get('actor') or '?'}, {'acted' if d.get('acted') else 'advice only'}"
        rows.append(
            [
                esc(when(d.get("created_at"))),
                esc(str((d.get("stage_index") or 0) + 1)),
                badge(action, ACTION_TONES.get(action, "neutral")),
                esc(by),
                esc(join_reasons(d.get("reasons") or ())),
            ]
        )
    header = ["When", "Stage", "Decision", "By", "Reasons"]
    return panel("Decision history", table(header, rows, raw=True, css_class="cr-table cr-history"))
