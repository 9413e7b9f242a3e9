"""The experiments tab's HTML: status cards, the decision, the tests, the history.

Pure functions of the router's JSON (``GET /v1/experiments/{id}`` and its decisions).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ui.render import badge, esc, interval, ms, notice, num, panel, pct, stat, table

STATUS_TONES = {
    "running": "ok",
    "paused": "warn",
    "promoted": "ok",
    "rolled_back": "bad",
    "halted": "bad",
}
ACTION_TONES = {
    "continue": "neutral",
    "advance": "ok",
    "promote": "ok",
    "rollback": "bad",
    "halt": "bad",
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
    cards = [
        '<div class="cr-stat"><div class="cr-stat-value">'
        f"{badge(status.replace('_', ' '), STATUS_TONES.get(status, 'neutral'))}</div>"
        '<div class="cr-stat-label">Status</div></div>',
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


def analysis_html(analysis: dict[str, Any] | None) -> str:
    """The tests of the latest analysis: rates with CIs and p-values, latency, votes, SRM."""
    if not analysis or "metrics" not in analysis:
        return panel("Latest analysis", notice("The experiment has ended: see its report.", "info"))
    arms, metrics = analysis.get("arms") or {}, analysis["metrics"]
    champion, challenger = arms.get("champion") or {}, arms.get("challenger") or {}
    rows = [
        ["Requests", f"{champion.get('requests', 0):,}", f"{challenger.get('requests', 0):,}"],
        ["Errors", f"{champion.get('errors') or 0:,}", f"{challenger.get('errors') or 0:,}"],
    ]
    rows.append(
        [
            "Thumbs up / down",
            f"{champion.get('thumbs_up') or 0} / {champion.get('thumbs_down') or 0}",
            f"{challenger.get('thumbs_up') or 0} / {challenger.get('thumbs_down') or 0}",
        ]
    )
    rows.append(
        [
            "Latency p50 / p95",
            f"{ms(champion.get('latency_p50_ms'))} / {ms(champion.get('latency_p95_ms'))}",
            f"{ms(challenger.get('latency_p50_ms'))} / {ms(challenger.get('latency_p95_ms'))}",
        ]
    )
    arms_table = table(["", "Champion", "Challenger"], rows, css_class="cr-table cr-arms")

    tests = []
    for key, label in (("thumbs_up_rate", "Thumbs-up rate"), ("error_rate", "Error rate")):
        m = metrics.get(key) or {}
        diff = m.get("difference")
        tests.append(
            [
                label,
                f"{pct(m.get('champion'))} → {pct(m.get('challenger'))}",
                ("—" if diff is None else f"{100 * diff:+.1f} pts")
                + (f"  ({interval(m.get('ci'))})" if interval(m.get("ci")) else ""),
                _p(m.get("p_value")),
                _p(m.get("p_value_sequential")),
            ]
        )
    for key, label in (("latency", "Latency"), ("ttft", "Time to first token")):
        m = metrics.get(key) or {}
        shift = m.get("hodges_lehmann_ms")
        tests.append(
            [
                label,
                f"p95 ratio {num(m.get('p95_ratio'), 2)}",
                "—" if shift is None else f"{shift:+.0f} ms (Hodges-Lehmann)",
                _p(m.get("mann_whitney_p")),
                "",
            ]
        )
    v = metrics.get("votes") or {}
    tests.append(
        [
            "Arena votes",
            f"{v.get('challenger_wins', 0)} : {v.get('champion_wins', 0)} "
            f"({v.get('ties', 0)} ties, {v.get('both_bad', 0)} both bad)",
            f"challenger win rate {pct(v.get('win_rate'))}",
            _p(v.get("p_value")),
            _p(v.get("p_value_sequential")) if "p_value_sequential" in v else "",
        ]
    )
    srm = analysis.get("srm") or {}
    tests.append(
        [
            "Sample ratio",
            "mismatch!" if srm.get("mismatch") else "as assigned",
            "",
            _p(srm.get("p_value")),
            "",
        ]
    )
    header = ["Test", "Champion → challenger", "Difference", "p-value", "always-valid p"]
    return panel("Latest analysis", arms_table + table(header, tests, css_class="cr-table"))


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
