import html
import json
import re

from experiments.analysis import analyse
from experiments.policy import Policy
from experiments.report import render_html, report_input
from experiments.stats import ArmStats, VoteCounts
from tests.experiments.helpers import arm


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
            "stage": 1,
            "challenger_percent": 5,
            "started_at": "2026-01-01T00:00:00+00:00",
            "ended_at": "2026-01-01T04:00:00+00:00",
            "requests": {"champion": 1900, "challenger": 100},
            "units": {"champion": 950, "challenger": 50},
        },
        {
            "stage": 2,
            "challenger_percent": 25,
            "started_at": "2026-01-01T04:00:00+00:00",
            "ended_at": None,
            "requests": {"champion": 1500, "challenger": 500},
            "units": {"champion": 900, "challenger": 100},  # 10% where 25% was due: SRM
        },
    ]


def test_full_report_renders_plots_decision_and_json() -> None:
    votes = VoteCounts(challenger_wins=70, champion_wins=50, ties=8, both_bad=2)
    analysis = analyse(
        arm(seed=1),
        arm(thumbs_up=0.7, seed=2),
        votes,
        {"champion": 50, "challenger": 50},
        Policy(),
        2,
    )
    report = report_input(
        analysis,
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
        ArmStats(), ArmStats(), VoteCounts(), {"champion": 1, "challenger": 1}, Policy(), 0
    )
    page = render_html({"analysis": analysis.to_dict()})
    assert "continue" in page and "not enough data yet:" in page
    assert "data:image/png;base64," in page  # the votes panel always renders


def _section(page: str, title: str) -> str:
    """The HTML of the report section headed ``title``."""
    match = re.search(rf"<section><h2>{re.escape(title)}</h2>(.*?)</section>", page, re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def test_report_has_every_item_the_promotion_report_needs() -> None:
    votes = VoteCounts(challenger_wins=70, champion_wins=50, ties=8, both_bad=2)
    analysis = analyse(
        arm(seed=1),
        arm(thumbs_up=0.7, seed=2),
        votes,
        {"champion": 75, "challenger": 25},
        Policy(),
        1,
        stage_units={"champion": 900, "challenger": 100},
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
    # Traffic per stage: a table with requests and units per arm and each stage's SRM test,
    # and its plots (requests, units), beside the SRM plot.
    traffic = _section(page, "Traffic per stage and sample ratio")
    assert traffic.count(plot) == 3
    rows = re.findall(r"<tr><td>(\d)</td>(.*?)</tr>", traffic, re.S)
    assert [r[0] for r in rows] == ["1", "2"]
    assert "1,900 / 100" in rows[0][1] and "950 / 50" in rows[0][1]
    assert "5.0%" in rows[0][1] and "mismatch" not in rows[0][1]
    assert "900 / 100" in rows[1][1] and "10.0%" in rows[1][1] and "mismatch" in rows[1][1]
    assert "now" in rows[1][1]  # the open stage
    assert "Sample ratio mismatch test: p =" in traffic
    # The decision that ended the experiment leads; the policy's view on the data follows.
    decision = _section(page, "Decision")
    assert ">halt<" in decision and "canary-evaluator" in decision
    assert "on the data now the policy says" in decision
    assert "runs:/abc123/report.html" in decision
    history = _section(page, "Decision history")
    assert "acted by api" in history and history.count("<tr>") == 3
