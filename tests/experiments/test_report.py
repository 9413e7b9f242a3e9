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
        traffic=[
            {"stage": 1, "challenger_percent": 5, "champion": 950, "challenger": 50},
            {"stage": 2, "challenger_percent": 25, "champion": 750, "challenger": 250},
        ],
        policy=Policy().to_dict(),
    )
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    images = re.findall(r'<img alt="plot" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) >= 5  # timeline, latency, TTFT, votes, traffic, SRM
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
