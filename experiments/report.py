"""Self-contained HTML promotion report: inline CSS, plots as base64 PNG, the JSON analysis.

Entry point: :func:`render_html`. :func:`report_input` builds its input from an
:class:`~experiments.analysis.Analysis`. The input dict (all keys optional except
``analysis``; unknown keys are ignored):

* ``analysis`` — :meth:`Analysis.to_dict` (the experiment API's JSON).
* ``title``, ``route``, ``experiment_id``, ``champion_version``, ``challenger_version``,
  ``status``, ``stage`` (0-based index), ``generated_at`` — header fields (str or number).
* ``timeline`` — list of ``{"time": ISO-8601 str or number, "arm": "champion"|"challenger",
  "ups": int, "rated": int}`` buckets; plotted as the cumulative thumbs-up rate per arm with
  its 95% Wilson band.
* ``latency_ms`` / ``ttft_ms`` — ``{"champion": [ms, ...], "challenger": [ms, ...]}`` samples.
* ``bradley_terry_ci`` — ``{"champion": [lo, hi], "challenger": [lo, hi]}``.
* ``traffic`` — one entry per phase (a period of constant weights) or per stage:
  ``{"phase"?: int, "status"?: str, "stage": int (1-based), "challenger_percent": float,
  "started_at": str, "ended_at": str | None, "requests": {arm: n}, "units": {arm: n}}``
  (``units``: units the traffic split assigned in it); drawn as a table with each row's own
  SRM test, and a bar plot.
* ``srm_detail`` — ``{"observed": {arm: n}, "expected": {arm: x}}``.
* ``policy`` — :meth:`Policy.to_dict`; ``decisions`` — every ``{"time", "action", "reasons",
  "acted"?, "actor"?}``.
* ``final_decision`` — ``{"action", "reasons", "actor", "time"}`` of the decision that ended
  the experiment: the report's verdict (the analysis's own decision is then what the
  policy would say on the data now). ``report_run_id`` — its MLflow run, if logged.

What the analysis shows (shape in :mod:`experiments.analysis`): per metric its role
(primary / guardrail), the one-sided always-valid p-values the policy decides on
(``p_better`` at this look, ``p_worse`` its running minimum), the two-sided always-valid and
the fixed-horizon p apart, and beside each difference the shrunk estimate with the
winner's-curse caveat; the primary metric per phase; each guardrail's bound and
``p_above_bound`` (latency: its threshold too); the anytime-valid SRM p.

Plots use matplotlib's object API (``Figure``, Agg canvas): no pyplot global state, safe in
a server thread.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from experiments.analysis import Analysis
from experiments.srm import check_srm

__all__ = ["render_html", "report_input"]

COLOURS = {"champion": "#4c72b0", "challenger": "#dd8452"}
ACTION_COLOURS = {
    "promote": "#2e7d32",
    "advance": "#1565c0",
    "continue": "#616161",
    "rollback": "#c62828",
    "halt": "#6a1b9a",
}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;
color:#1f2328;line-height:1.45}
main{max-width:1080px;margin:0 auto;padding:24px}
header h1{margin:0 0 4px;font-size:1.7em} header p{margin:0;color:#57606a}
.badge{display:inline-block;padding:6px 14px;border-radius:999px;color:#fff;font-weight:600;
text-transform:uppercase;letter-spacing:.04em}
section{background:#fff;border:1px solid #d0d7de;border-radius:10px;padding:16px 20px;margin:18px 0}
h2{font-size:1.2em;margin:0 0 10px}
table{border-collapse:collapse;width:100%;font-size:.95em}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #eaeef2}
th{color:#57606a;font-weight:600} td.num{font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto} .grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
pre{background:#f6f8fa;padding:12px;border-radius:6px;overflow:auto;font-size:.85em}
ul.reasons li{margin:4px 0} .muted{color:#57606a}
"""


def _fmt(value: Any, kind: str = "num") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if kind == "pct":
        return f"{100 * float(value):.1f}%"
    if kind == "pts":
        return f"{100 * float(value):+.1f} pts"
    if kind == "p":
        return f"{float(value):.3g}"
    if kind == "ratio":
        return f"{float(value):.2f}x"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return html.escape(str(value))


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _time(value: Any) -> float | datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return float(value)
    return float(value)


def _timeline_plot(timeline: Sequence[Mapping[str, Any]]) -> str:
    fig = Figure(figsize=(9, 3.6))
    ax = fig.add_subplot()
    for arm, colour in COLOURS.items():
        rows = sorted((r for r in timeline if r.get("arm") == arm), key=lambda r: _time(r["time"]))
        if not rows:
            continue
        ups = np.cumsum([float(r["ups"]) for r in rows])
        n = np.cumsum([float(r["rated"]) for r in rows])
        keep = n > 0
        times = [_time(r["time"]) for r, k in zip(rows, keep, strict=True) if k]
        ups, n = ups[keep], n[keep]
        if not times:
            continue
        p, z = ups / n, 1.96  # Wilson score band, cumulative
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        ax.plot(times, p, color=colour, label=arm)  # type: ignore[arg-type]
        ax.fill_between(times, centre - half, centre + half, color=colour, alpha=0.2)  # type: ignore[arg-type]
    ax.set_ylabel("thumbs-up rate (cumulative)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.autofmt_xdate()
    return _png(fig)


def _distribution_plot(samples: Mapping[str, Sequence[float]], label: str) -> str:
    fig = Figure(figsize=(4.8, 3.2))
    ax = fig.add_subplot()
    values = [np.asarray(samples.get(arm, ()), dtype=np.float64) for arm in COLOURS]
    positive = np.concatenate([v[v > 0] for v in values]) if values else np.array([])
    if positive.size:
        bins = np.geomspace(positive.min(), positive.max() * 1.0001, 40).tolist()
        for (arm, colour), v in zip(COLOURS.items(), values, strict=True):
            if v.size:
                ax.hist(v[v > 0], bins=bins, color=colour, alpha=0.5, label=arm, density=True)
                ax.axvline(float(np.percentile(v, 95)), color=colour, linestyle="--", lw=1)
        ax.set_xscale("log")
        ax.legend()
    ax.set_xlabel(f"{label} (ms, log scale; dashed: p95)")
    ax.set_yticks([])
    return _png(fig)


def _votes_plot(votes: Mapping[str, Any], ci: Mapping[str, Sequence[float]] | None) -> str:
    fig = Figure(figsize=(9, 3))
    left, right = fig.subplots(1, 2)
    names = ["challenger_wins", "champion_wins", "ties", "both_bad"]
    counts = [int(votes.get(k) or 0) for k in names]
    left.barh(
        [n.replace("_", " ") for n in names], counts, color=["#dd8452", "#4c72b0", "#999", "#bbb"]
    )
    left.set_xlabel("votes")
    ratings = votes.get("bradley_terry") or {}
    arms = [a for a in COLOURS if ratings.get(a) is not None]
    for i, arm in enumerate(arms):
        r = float(ratings[arm])
        err = None
        if ci and arm in ci:
            err = [[r - float(ci[arm][0])], [float(ci[arm][1]) - r]]
        right.errorbar([r], [i], xerr=err, fmt="o", color=COLOURS[arm], capsize=5)
    right.set_yticks(range(len(arms)), arms)
    right.set_ylim(-0.7, len(arms) - 0.3)
    right.axvline(1000, color="#999", lw=1)
    right.set_xlabel("Bradley-Terry rating (95% bootstrap CI)")
    return _png(fig)


def _bars_plot(labels: list[str], series: Mapping[str, list[float]], ylabel: str) -> str:
    fig = Figure(figsize=(4.8, 3.2))
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + i * width, values, width, label=name, color=COLOURS.get(name, "#999"))
    ax.set_xticks(x + width * (len(series) - 1) / 2, labels)
    ax.set_ylabel(ylabel)
    ax.legend()
    return _png(fig)


WINNERS_CURSE = (
    "<p class=muted><b>Shrunk</b> is the difference pulled towards zero by the always-valid "
    "test's own prior, N(0, τ²) (its posterior mean): an estimate read at the look where a "
    "sequential test first crosses its boundary overstates the effect (the winner's curse), "
    "and the shrunk value is the prior-corrected one to quote. "
    "<b>p better</b> is the one-sided always-valid p at this look (what advancing and "
    "promoting need; non-inferior within the margin under a non-inferiority policy, not "
    "worse than the guardrail margin for a guardrail), <b>p worse</b> the running minimum "
    "of the other one-sided p (what a rollback needs); the two-sided always-valid and the "
    "fixed-horizon p are for reading only: the policy does not use them. CS: the "
    "always-valid confidence sequence.</p>"
)


def _interval(label: str, pair: Sequence[Any] | None, kind: str) -> str:
    lo, hi = pair if pair else (None, None)
    return f"{label} [{_fmt(lo, kind)}, {_fmt(hi, kind)}]"


def _p_cells(m: Mapping[str, Any]) -> str:
    return "".join(
        f"<td class=num>{_fmt(m.get(key), 'p')}</td>"
        for key in ("p_better", "p_worse", "p_value_sequential_two_sided", "p_value")
    )


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    """Thumbs-up rate and votes: one decides (primary), the other is a "not worse" guardrail."""
    thumbs = metrics.get("thumbs_up_rate") or {}
    votes = metrics.get("votes") or {}
    thumbs_diff = (
        f"{_fmt(thumbs.get('difference'), 'pts')}<br><span class=muted>"
        f"{_interval('95% CI', thumbs.get('ci'), 'pts')}; "
        f"{_interval('CS', thumbs.get('confidence_sequence'), 'pts')}</span>"
    )
    votes_diff = (
        f"challenger wins {_fmt(votes.get('win_rate'), 'pct')} "
        f"<span class=muted>({_fmt(votes.get('voters'))} voters, {_fmt(votes.get('ties'))} "
        f"ties, {_fmt(votes.get('both_bad'))} both bad)<br>"
        f"{_interval('CS of win rate - 50%', votes.get('confidence_sequence'), 'pts')}</span>"
    )
    rows = [
        f"<tr><td>Thumbs-up rate</td><td>{_fmt(thumbs.get('role'))}</td>"
        f"<td class=num>{_fmt(thumbs.get('champion'), 'pct')}</td>"
        f"<td class=num>{_fmt(thumbs.get('challenger'), 'pct')}</td>"
        f"<td class=num>{thumbs_diff}</td>"
        f"<td class=num>{_fmt(thumbs.get('shrunk_difference'), 'pts')}</td>{_p_cells(thumbs)}</tr>",
        f"<tr><td>Votes</td><td>{_fmt(votes.get('role'))}</td>"
        f"<td class=num>{_fmt(votes.get('champion_wins'))} wins</td>"
        f"<td class=num>{_fmt(votes.get('challenger_wins'))} wins</td>"
        f"<td class=num>{votes_diff}</td><td class=num>—</td>{_p_cells(votes)}</tr>",
    ]
    head = (
        "<tr><th>metric</th><th>role</th><th>champion</th><th>challenger</th>"
        "<th>difference</th><th>shrunk</th><th>p better (this look)</th><th>p worse</th>"
        "<th>p two-sided (always valid)</th><th>p (fixed horizon)</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>{WINNERS_CURSE}"


def _phases_table(metrics: Mapping[str, Any]) -> str:
    """The primary metric's estimate in each phase (period of constant traffic weights)."""
    primary = next(
        (
            key
            for key in ("thumbs_up_rate", "votes")
            if (metrics.get(key) or {}).get("role") == "primary"
        ),
        "thumbs_up_rate",
    )
    phases = (metrics.get(primary) or {}).get("phases")
    if primary == "votes":
        return "<p class=muted>Votes (primary) are pooled over phases: no per-phase estimates.</p>"
    if not phases:
        return "<p class=muted>No per-phase estimates yet.</p>"
    rows = []
    for k, phase in enumerate(phases, start=1):
        a, b = phase.get("champion"), phase.get("challenger")
        diff = None if a is None or b is None else b - a
        rows.append(
            f"<tr><td>{k}</td><td class=num>{_fmt(phase.get('weight'), 'pct')}</td>"
            f"<td class=num>{_fmt(a, 'pct')}</td><td class=num>{_fmt(b, 'pct')}</td>"
            f"<td class=num>{_fmt(diff, 'pts')}</td></tr>"
        )
    head = (
        "<tr><th>phase</th><th>weight in the difference</th><th>champion</th>"
        "<th>challenger</th><th>difference</th></tr>"
    )
    note = (
        "<p class=muted>Thumbs-up rate (primary) in each phase the analysis counts (in time "
        "order, halted ones left out); the difference above is the "
        "weighted sum of the phases' differences (Mantel-Haenszel weights), so a change of "
        "traffic split while the base rate drifts cannot fake an effect.</p>"
    )
    return f"{note}<table>{head}{''.join(rows)}</table>"


def _error_bound(m: Mapping[str, Any]) -> str:
    bound = m.get("bound")
    if bound is None:
        return "—"
    if m.get("bound_type") == "relative":
        return f"challenger ≤ {1 + float(bound):.2f}x champion"
    return f"difference ≤ {_fmt(bound, 'pts')}"


def _guardrails_table(metrics: Mapping[str, Any]) -> str:
    """Error rate, latency and TTFT, each tested against its own bound (always guardrails)."""
    errors = metrics.get("error_rate") or {}
    rows = [
        f"<tr><td>Error rate</td><td class=num>{_fmt(errors.get('champion'), 'pct')} → "
        f"{_fmt(errors.get('challenger'), 'pct')} "
        f"<span class=muted>({_fmt(errors.get('difference'), 'pts')})</span></td>"
        f"<td>{_error_bound(errors)}</td><td>—</td>"
        f"<td class=num>{_fmt(errors.get('p_above_bound'), 'p')}</td>"
        f"<td class=muted>fixed-horizon p (no difference) {_fmt(errors.get('p_value'), 'p')}</td>"
        "</tr>"
    ]
    for key, title in (("latency", "Latency p95"), ("ttft", "Time to first token p95")):
        m = metrics.get(key) or {}
        bound = m.get("bound")
        threshold = (
            f"{_fmt(m.get('threshold_ms'))} ms <span class=muted>(champion "
            f"{_fmt(m.get('champion_exceed'), 'pct')} above it, challenger "
            f"{_fmt(m.get('challenger_exceed'), 'pct')} above {_fmt(bound, 'ratio')} it)</span>"
        )
        rows.append(
            f"<tr><td>{title}</td><td class=num>{_fmt(m.get('champion_p95'))} → "
            f"{_fmt(m.get('challenger_p95'))} ms <span class=muted>(ratio "
            f"{_fmt(m.get('p95_ratio'), 'ratio')})</span></td>"
            f"<td>ratio ≤ {_fmt(bound, 'ratio')}</td><td>{threshold}</td>"
            f"<td class=num>{_fmt(m.get('p_above_bound'), 'p')}</td>"
            f"<td class=muted>shift {_fmt(m.get('hodges_lehmann_ms'))} ms (Hodges-Lehmann), "
            f"Mann-Whitney p {_fmt(m.get('mann_whitney_p'), 'p')}</td></tr>"
        )
    head = (
        "<tr><th>guardrail</th><th>champion → challenger</th><th>bound</th><th>threshold</th>"
        "<th>p above bound</th><th>descriptive</th></tr>"
    )
    note = (
        "<p class=muted>p above bound: the running minimum of the one-sided always-valid p "
        'of "within the bound"; below alpha the challenger is shown past it and rolls back '
        "whatever the primary metric says. The "
        "latency test compares the shares of requests above a threshold (failures count as "
        "the slowest); the descriptive columns are not used by the policy.</p>"
    )
    return f"<table>{head}{''.join(rows)}</table>{note}"


def _arms_table(arms: Mapping[str, Any]) -> str:
    keys = ["requests", "errors", "thumbs_up", "thumbs_down", "votes"]
    keys += ["latency_p50_ms", "latency_p95_ms"]
    head = "<tr><th></th>" + "".join(f"<th>{k.replace('_', ' ')}</th>" for k in keys) + "</tr>"
    rows = "".join(
        f"<tr><td>{arm}</td>"
        + "".join(f"<td class=num>{_fmt((arms.get(arm) or {}).get(k))}</td>" for k in keys)
        + "</tr>"
        for arm in COLOURS
    )
    return f"<table>{head}{rows}</table>"


def _pair_of_counts(counts: Mapping[str, Any]) -> str:
    """``champion / challenger`` with thousands separators."""
    return " / ".join(f"{int(counts.get(arm) or 0):,}" for arm in COLOURS)


def _traffic_table(traffic: Sequence[Mapping[str, Any]]) -> str:
    """Requests and units per arm in each phase (or stage), with its own SRM test."""
    phased = any("phase" in s for s in traffic)
    head = (
        ("<tr><th>phase</th>" if phased else "<tr>")
        + "<th>stage</th><th>challenger weight</th><th>from</th><th>to</th>"
        "<th>requests (champion / challenger)</th><th>units (champion / challenger)</th>"
        "<th>challenger share of units</th><th>SRM p (these units)</th></tr>"
    )
    rows = []
    for s in traffic:
        requests, units = s.get("requests") or {}, s.get("units") or {}
        percent = float(s.get("challenger_percent") or 0)
        total = sum(int(units.get(a) or 0) for a in COLOURS)
        share = int(units.get("challenger") or 0) / total if total else None
        srm = check_srm(
            {a: int(units.get(a) or 0) for a in COLOURS},
            {"champion": 100 - percent, "challenger": percent},
        )
        flag = " <b>mismatch</b>" if srm.mismatch else ""
        status = f" <span class=muted>{_fmt(s['status'])}</span>" if s.get("status") else ""
        first = f"<td>{_fmt(s.get('phase'))}{status}</td>" if phased else ""
        rows.append(
            f"<tr>{first}<td>{_fmt(s.get('stage'))}</td><td class=num>{percent:g}%</td>"
            f"<td>{_fmt(s.get('started_at'))}</td><td>{_fmt(s.get('ended_at') or 'now')}</td>"
            f"<td class=num>{_pair_of_counts(requests)}</td>"
            f"<td class=num>{_pair_of_counts(units)}</td>"
            f"<td class=num>{_fmt(share, 'pct')} <span class=muted>(expected "
            f"{percent:g}%)</span></td><td class=num>{_fmt(srm.p_value, 'p')}{flag}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _history_how(decision: Mapping[str, Any]) -> str:
    """'acted by api', 'recommended', or nothing when the entry does not say."""
    if "acted" not in decision:
        return ""
    how = "acted" if decision["acted"] else "recommended"
    return f"{how} by {_fmt(decision['actor'])}" if decision.get("actor") else how


def _section(title: str, content: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{content}</section>"


def render_html(report: Mapping[str, Any]) -> str:
    """The whole report as one HTML document (keys of ``report`` in the module docstring)."""
    analysis = report.get("analysis") or {}
    metrics = analysis.get("metrics") or {}
    recommended = analysis.get("decision") or {}
    final = report.get("final_decision") or None
    decision = final or recommended
    action = str(decision.get("action", "unknown"))
    title = report.get("title") or f"Canary report: {report.get('route', 'experiment')}"
    sub = " · ".join(
        f"{label} {_fmt(report[key])}"
        for key, label in (
            ("experiment_id", "experiment"),
            ("champion_version", "champion v"),
            ("challenger_version", "challenger v"),
            ("status", "status"),
            ("generated_at", "generated"),
        )
        if report.get(key) is not None
    )
    reasons = "".join(f"<li>{html.escape(str(r))}</li>" for r in decision.get("reasons") or [])
    colour = ACTION_COLOURS.get(action, "#616161")
    notes = ""
    if final:
        by, when = _fmt(final.get("actor")), _fmt(final.get("time"))
        notes += f"<p class=muted>Decided by {by} at {when}"
        if recommended.get("action"):
            notes += (
                f"; on the data now the policy says <b>{_fmt(recommended['action'])}</b>: "
                + html.escape("; ".join(map(str, recommended.get("reasons") or [])))
            )
        notes += ".</p>"
    if report.get("report_run_id"):
        notes += (
            f"<p class=muted>MLflow run {_fmt(report['report_run_id'])} "
            f"(runs:/{_fmt(report['report_run_id'])}/report.html)</p>"
        )
    parts = [
        f"<header><h1>{html.escape(str(title))}</h1><p>{sub}</p></header>",
        f"<section><h2>Decision</h2><span class=badge style='background:{colour}'>"
        f"{html.escape(action)}</span><ul class=reasons>{reasons}</ul>{notes}</section>",
        f"<section><h2>Arms</h2>{_arms_table(analysis.get('arms') or {})}</section>",
        _section("Metrics", _metrics_table(metrics)),
        _section("Primary metric by phase", _phases_table(metrics)),
        _section("Guardrails", _guardrails_table(metrics)),
    ]
    if report.get("timeline"):
        parts.append(_section("Thumbs-up rate over time", _timeline_plot(report["timeline"])))
    plots = [
        _distribution_plot(report[key], label)
        for key, label in (("latency_ms", "latency"), ("ttft_ms", "time to first token"))
        if any(len(v) for v in (report.get(key) or {}).values())
    ]
    if plots:
        parts.append(f"<section><h2>Latency</h2><div class=grid>{''.join(plots)}</div></section>")
    votes = metrics.get("votes") or {}
    parts.append(
        f"<section><h2>Votes and Bradley-Terry ratings</h2>"
        f"{_votes_plot(votes, report.get('bradley_terry_ci'))}</section>"
    )
    grid = []
    traffic = report.get("traffic") or []
    if traffic:
        labels = [
            ("" if s.get("phase") is None else f"phase {s['phase']}, ")
            + f"stage {s.get('stage')}: {float(s.get('challenger_percent', 0)):g}%"
            for s in traffic
        ]
        for key in ("requests", "units"):
            series = {
                arm: [float((s.get(key) or {}).get(arm) or 0) for s in traffic] for arm in COLOURS
            }
            grid.append(_bars_plot(labels, series, key))
    srm = analysis.get("srm") or {}
    detail = report.get("srm_detail") or {}
    if detail.get("observed") and detail.get("expected"):
        obs, exp = detail["observed"], detail["expected"]
        grid.append(
            _bars_plot(
                list(COLOURS),
                {
                    "observed": [float(obs.get(a, 0)) for a in COLOURS],
                    "expected": [float(exp.get(a, 0)) for a in COLOURS],
                },
                "units",
            )
        )
    verdict = (
        "<b>MISMATCH</b>: assignment or logging is broken" if srm.get("mismatch") else "no mismatch"
    )
    window = f", window {_fmt(srm['window'])}" if srm.get("window") is not None else ""
    srm_text = (
        f"<p>Sample ratio mismatch test (anytime valid{window}): "
        f"p = {_fmt(srm.get('p_value'), 'p')} — {verdict}. <span class=muted>The running "
        "minimum over the looks at the current stage's units since the last halt (Lindon &amp; "
        "Malek 2022); each row below tests that row's units alone.</span></p>"
    )
    table = _traffic_table(traffic) if traffic else ""
    parts.append(
        _section(
            "Traffic per stage and sample ratio",
            f"{srm_text}{table}<div class=grid>{''.join(grid)}</div>",
        )
    )
    history = report.get("decisions") or []
    if history:
        rows = "".join(
            f"<tr><td>{_fmt(d.get('time'))}</td><td>{_fmt(d.get('action'))}</td>"
            f"<td>{_history_how(d)}</td>"
            f"<td>{html.escape('; '.join(map(str, d.get('reasons') or [])))}</td></tr>"
            for d in history
        )
        head = "<tr><th>time</th><th>action</th><th></th><th>reasons</th></tr>"
        parts.append(f"<section><h2>Decision history</h2><table>{head}{rows}</table></section>")
    if report.get("policy"):
        policy_json = html.escape(json.dumps(report["policy"], indent=2))
        parts.append(f"<section><h2>Policy</h2><pre>{policy_json}</pre></section>")
    analysis_json = html.escape(json.dumps(analysis, indent=2, allow_nan=False))
    parts.append(f"<section><h2>Analysis (JSON)</h2><pre>{analysis_json}</pre></section>")
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(str(title))}</title>"
        f"<style>{CSS}</style></head><body><main>{body}</main></body></html>"
    )


def report_input(analysis: Analysis, **extra: Any) -> dict[str, Any]:
    """``render_html`` input from an :class:`Analysis`; ``extra`` adds header, timeline, traffic."""
    report: dict[str, Any] = {
        "analysis": analysis.to_dict(),
        "latency_ms": {
            "champion": list(analysis.champion.latency_ms),
            "challenger": list(analysis.challenger.latency_ms),
        },
        "ttft_ms": {
            "champion": list(analysis.champion.ttft_ms),
            "challenger": list(analysis.challenger.ttft_ms),
        },
        "srm_detail": {"observed": analysis.srm.observed, "expected": analysis.srm.expected},
    }
    if analysis.votes.bradley_terry_ci:
        report["bradley_terry_ci"] = {
            a: list(v) for a, v in analysis.votes.bradley_terry_ci.items()
        }
    report.update(extra)
    return report
