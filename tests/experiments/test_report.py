import html
import json
import re

from experiments.analysis import Analysis, Look, analyse
from experiments.policy import Policy
from experiments.report import render_html, report_input
from experiments.stats import ArmStats, PhasedSums, VoteCounts
from tests.experiments.helpers import arm, bernoulli, look

VOTES = VoteCounts(challenger_wins=70, champion_wins=50, ties=8, both_bad=2)


def _timeline() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for hour in range(12):
        rows.append(
            {"time": f"2026-01-01T{hour:02d}:00:00Z", "arm": "champion", "ups": 30, "rated": 50}
        )
        rows.append(
            {"time": f"2026-01-01T{hour:02d}:00:00Z", "arm": "challenger", "ups": 35, "rated": 50}
        )
    return rows


def _traffic() -> list[dict[str, object]]:
    return [
        {
            "phase": 1,
            "stage": 1,
            "status": "running",
            "challenger_percent": 5,
            "started_at": "2026-01-01T00:00:00+00:00",
            "ended_at": "2026-01-01T04:00:00+00:00",
            "requests": {"champion": 1900, "challenger": 100},
            "units": {"champion": 950, "challenger": 50},
        },
        {
            "phase": 2,
            "stage": 2,
            "status": "running",
            "challenger_percent": 25,
            "started_at": "2026-01-01T04:00:00+00:00",
            "ended_at": None,
            "requests": {"champion": 1500, "challenger": 500},
            "units": {"champion": 900, "challenger": 100},  # 10% where 25% was due: SRM
        },
    ]


def _analysis(policy: Policy | None = None, *, stage: int = 2) -> Analysis:
    """Challenger 70% thumbs up against 60%, 2,000 units each, at the last stage."""
    champion, challenger = arm(seed=1), arm(thumbs_up=0.7, seed=2)
    policy = policy or Policy()
    return analyse(champion, challenger, VOTES, policy, look(champion, challenger, stage=stage))


def _section(page: str, title: str) -> str:
    """The HTML of the report section headed ``title``."""
    match = re.search(rf"<section><h2>{re.escape(title)}</h2>(.*?)</section>", page, re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def _row(table: str, label: str) -> str:
    match = re.search(rf"<tr><td>{re.escape(label)}</td>(.*?)</tr>", table, re.S)
    assert match, f"no row {label!r}"
    return match.group(1)


def _p(value: float) -> str:
    return f"{value:.3g}"


def _tables(analysis: Analysis) -> str:
    """The page without samples to plot (fast): enough for the tables."""
    return render_html({"analysis": analysis.to_dict()})


def test_full_report_renders_plots_decision_and_json() -> None:
    report = report_input(
        _analysis(),
        title="chat: v2 vs v1 <script>alert(1)</script>",
        route="chat",
        champion_version="1",
        challenger_version="2",
        timeline=_timeline(),
        traffic=_traffic(),
        policy=Policy().to_dict(),
    )
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    images = re.findall(r'<img alt="plot" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) >= 7  # timeline, latency, TTFT, votes, requests and units, SRM
    assert all(len(i) > 1000 for i in images)
    assert "promote" in page and "last stage passed: promote the challenger" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert html.escape(json.dumps(report["analysis"], indent=2)) in page


def test_minimal_report_with_an_empty_analysis() -> None:
    analysis = analyse(
        ArmStats(), ArmStats(), VoteCounts(), Policy(), Look(0, {"champion": 1, "challenger": 1})
    )
    page = render_html({"analysis": analysis.to_dict()})
    assert "continue" in page and "not enough data yet:" in page
    assert "data:image/png;base64," in page  # the votes panel always renders
    assert "No per-phase estimates yet" in _section(page, "Primary metric by phase")


def test_metrics_show_roles_one_sided_p_values_and_the_shrunk_estimate() -> None:
    analysis = _analysis()
    metrics = analysis.to_dict()["metrics"]
    table = _section(_tables(analysis), "Metrics")
    thumbs, votes = _row(table, "Thumbs-up rate"), _row(table, "Votes")
    assert "<td>primary</td>" in thumbs and "<td>guardrail</td>" in votes
    t = metrics["thumbs_up_rate"]
    # The p-values the policy used, then the two-sided and the fixed-horizon ones, in order.
    cells = re.findall(r"<td class=num>([^<]*)</td>", thumbs)[-4:]
    expected = [t["p_better"], t["p_worse"], t["p_value_sequential_two_sided"], t["p_value"]]
    assert cells == [_p(v) for v in expected]
    assert t["p_better"] < 0.05 < t["p_worse"]
    v = metrics["votes"]
    assert re.findall(r"<td class=num>([^<]*)</td>", votes)[-4:] == [
        _p(v["p_better"]),
        _p(v["p_worse"]),
        _p(v["p_value_sequential_two_sided"]),
        _p(v["p_value"]),
    ]
    assert f"{v['voters']} voters" in votes
    head = table[: table.index("</tr>")]
    assert "p better (this look)" in head and "p two-sided (always valid)" in head
    assert "p (fixed horizon)" in head and "p (always valid)</th>" not in head
    # Beside the difference, the shrunk estimate, smaller, and the winner's-curse caveat.
    assert 0 < t["shrunk_difference"] < t["difference"]
    assert f"{100 * t['difference']:+.1f} pts" in thumbs
    assert f"{100 * t['shrunk_difference']:+.1f} pts" in thumbs
    cs = t["confidence_sequence"]
    assert f"CS [{100 * cs[0]:+.1f} pts, {100 * cs[1]:+.1f} pts]" in thumbs
    assert "winner's curse" in table and "overstates the effect" in table


def test_votes_primary_swaps_the_roles() -> None:
    page = _tables(_analysis(Policy(primary_metric="votes")))
    table = _section(page, "Metrics")
    assert "<td>guardrail</td>" in _row(table, "Thumbs-up rate")
    assert "<td>primary</td>" in _row(table, "Votes")
    assert "pooled over phases" in _section(page, "Primary metric by phase")


def test_primary_metric_by_phase() -> None:
    def two_phases(first: tuple[int, int], second: tuple[int, int]) -> ArmStats:
        thumbs = PhasedSums.in_phase(bernoulli(*first), 0) + PhasedSums.in_phase(
            bernoulli(*second), 1
        )
        units = first[1] + second[1]
        return ArmStats(
            requests=units,
            units=units,
            errors=PhasedSums.single(bernoulli(0, units)),
            thumbs=thumbs,
        )

    # Weights 95/5 then 50/50: phase rates 60% / 70% (champion), 62% / 72% (challenger).
    champion, challenger = two_phases((570, 950), (350, 500)), two_phases((31, 50), (360, 500))
    analysis = analyse(champion, challenger, VoteCounts(), Policy(), look(champion, challenger))
    phases = analysis.to_dict()["metrics"]["thumbs_up_rate"]["phases"]
    section = _section(_tables(analysis), "Primary metric by phase")
    rows = re.findall(r"<tr><td>(\d)</td>(.*?)</tr>", section, re.S)
    assert [r[0] for r in rows] == ["1", "2"]
    for (_, cells), phase in zip(rows, phases, strict=True):
        assert f"{100 * phase['weight']:.1f}%" in cells
        assert f"{100 * phase['champion']:.1f}%" in cells
        assert f"{100 * phase['challenger']:.1f}%" in cells
    assert "60.0%" in rows[0][1] and "62.0%" in rows[0][1] and "+2.0 pts" in rows[0][1]
    assert "70.0%" in rows[1][1] and "72.0%" in rows[1][1] and "+2.0 pts" in rows[1][1]
    assert "Thumbs-up rate (primary)" in section


def test_guardrails_show_bounds_thresholds_and_p_above_bound() -> None:
    analysis = _analysis(Policy(error_rate_bound="relative", max_error_rate_increase=0.5))
    metrics = analysis.to_dict()["metrics"]
    table = _section(_tables(analysis), "Guardrails")
    errors = _row(table, "Error rate")
    assert "challenger ≤ 1.50x champion" in errors
    assert _p(metrics["error_rate"]["p_above_bound"]) in errors
    for key, title in (("latency", "Latency p95"), ("ttft", "Time to first token p95")):
        m, row = metrics[key], _row(table, title)
        assert "ratio ≤ 1.50x" in row and f"ratio {m['p95_ratio']:.2f}x" in row
        assert f"{m['threshold_ms']:,.1f} ms" in row
        assert f"{100 * m['challenger_exceed']:.1f}%" in row
        assert _p(m["p_above_bound"]) in row
    absolute = _section(_tables(_analysis()), "Guardrails")
    assert "difference ≤ +2.0 pts" in _row(absolute, "Error rate")


def test_report_has_every_item_the_promotion_report_needs() -> None:
    champion, challenger = arm(seed=1), arm(thumbs_up=0.7, seed=2)
    analysis = analyse(
        champion,
        challenger,
        VOTES,
        Policy(),
        Look(
            stage_index=1,
            weights={"champion": 75, "challenger": 25},
            stage_units={"champion": 900, "challenger": 100},
            srm_units={"champion": 900, "challenger": 100},
            srm_window="stage 1",
        ),
    )
    page = render_html(
        report_input(
            analysis,
            timeline=_timeline(),
            traffic=_traffic(),
            final_decision={
                "action": "halt",
                "reasons": ["sample ratio mismatch"],
                "actor": "canary-evaluator",
                "time": "2026-01-01T05:00:00+00:00",
            },
            report_run_id="abc123",
            decisions=[
                {"time": "t1", "action": "advance", "acted": True, "actor": "api", "reasons": []},
                {"time": "t2", "action": "halt", "acted": True, "actor": "x", "reasons": ["r"]},
            ],
        )
    )
    plot = '<img alt="plot" src="data:image/png;base64,'
    # Thumbs-up rate over time with its band per arm.
    assert plot in _section(page, "Thumbs-up rate over time")
    # Latency (and TTFT) distributions.
    assert _section(page, "Latency").count(plot) == 2
    # Votes and Bradley-Terry ratings.
    assert plot in _section(page, "Votes and Bradley-Terry ratings")
    # Traffic per phase: a table with requests and units per arm and each phase's SRM test,
    # and its plots (requests, units), beside the SRM plot.
    traffic = _section(page, "Traffic per stage and sample ratio")
    assert traffic.count(plot) == 3
    rows = re.findall(
        r"<tr><td>(\d) <span class=muted>running</span></td>(.*?)</tr>", traffic, re.S
    )
    assert [r[0] for r in rows] == ["1", "2"]
    assert "1,900 / 100" in rows[0][1] and "950 / 50" in rows[0][1]
    assert "5.0%" in rows[0][1] and "mismatch" not in rows[0][1]
    assert "900 / 100" in rows[1][1] and "10.0%" in rows[1][1] and "mismatch" in rows[1][1]
    assert "now" in rows[1][1]  # the open phase
    # The anytime-valid SRM test of the analysis, with its window.
    srm = analysis.to_dict()["srm"]
    assert srm["mismatch"] and srm["p_value"] < Policy().srm_alpha
    assert (
        f"Sample ratio mismatch test (anytime valid, window stage 1): p = {_p(srm['p_value'])}"
        " — <b>MISMATCH</b>" in traffic
    )
    # The decision that ended the experiment leads; the policy's view on the data follows.
    decision = _section(page, "Decision")
    assert ">halt<" in decision and "canary-evaluator" in decision
    assert "on the data now the policy says" in decision
    assert "runs:/abc123/report.html" in decision
    history = _section(page, "Decision history")
    assert "acted by api" in history and history.count("<tr>") == 3
