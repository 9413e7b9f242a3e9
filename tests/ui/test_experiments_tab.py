"""Experiments tab handlers against a real router: admin sign-in, start, act, report."""

from __future__ import annotations

from pathlib import Path

from tests.ui.conftest import TOKEN
from ui.client import RouterClient
from ui.tabs import experiments, experiments_html


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


async def test_sign_in_is_checked_by_the_router(client: RouterClient) -> None:
    wrong = await experiments.sign_in(client, "not-the-token")
    assert wrong.token is None and wrong.signed_in == {"__type__": "update", "visible": False}
    assert "cr-error" in wrong.message and "token is wrong" in wrong.message
    empty = await experiments.sign_in(client, "  ")
    assert empty.token is None and "Enter the admin token" in empty.message
    right = await experiments.sign_in(client, f" {TOKEN} ")
    assert right.token == TOKEN and right.signed_in["visible"] is True
    assert right.signed_out["visible"] is False
    assert experiments.sign_out().token is None


async def test_start_evaluate_pause_resume_rollback(client: RouterClient, tmp_path: Path) -> None:
    empty = await experiments.overview(client, "chat")
    assert "No experiment on this route yet" in empty.status

    message, view = await experiments.start(client, TOKEN, "chat", "10, 50", False)
    assert "Started exp-" in message
    experiment_id = view.picker["value"]
    assert experiment_id.startswith("exp-")
    assert "1 of 2" in view.summary and "challenger at 10%" in view.summary
    assert "90% / 10%" in view.summary and "manual" in view.summary
    assert "Policy says now" in view.decision and "continue" in view.decision
    assert "Thumbs-up rate" in view.analysis and "Sample ratio" in view.analysis

    message, view = await experiments.act(client, TOKEN, "chat", experiment_id, "evaluate")
    assert "Evaluated: decision continue, recommended only (manual mode)" in message
    assert view.history.count("<tr>") == 2  # header + the one decision

    message, view = await experiments.act(client, TOKEN, "chat", experiment_id, "pause")
    assert "Paused" in message and "paused" in view.summary
    message, view = await experiments.act(client, TOKEN, "chat", experiment_id, "resume")
    assert "running" in view.summary

    frame, download = await experiments.report(client, experiment_id, tmp_path)
    assert frame.startswith('<iframe class="cr-report"') and "srcdoc=" in frame
    assert _read(download["value"]).lstrip().lower().startswith("<!doctype html")

    message, view = await experiments.act(client, TOKEN, "chat", experiment_id, "rollback")
    assert "Rolled back" in message
    assert "rolled back" in view.summary and "Ended (rolled back)" in view.decision
    assert "100% / 0%" in view.summary  # the challenger gets no more traffic
    # Acting on an ended experiment is refused with the router's reason.
    message, _ = await experiments.act(client, TOKEN, "chat", experiment_id, "promote")
    assert "cr-error" in message and "ended" in message


async def test_admin_actions_need_a_good_token(client: RouterClient) -> None:
    message, view = await experiments.start(client, None, "chat", "5", True)
    assert "Sign in as admin first" in message and "No experiment" in view.status
    message, _ = await experiments.start(client, "forged", "chat", "5", True)
    assert "cr-error" in message and "token is wrong" in message
    message, _ = await experiments.start(client, TOKEN, "chat", "five", True)
    assert "challenger percentages" in message
    message, _ = await experiments.start(client, TOKEN, "chat", "0, 150", True)
    assert "cr-error" in message and "stages" in message
    assert await client.experiments() == []
    message, _ = await experiments.act(client, "forged", "chat", "exp-x", "promote")
    assert "cr-error" in message and "token is wrong" in message


def test_reasons_read_as_one_sentence() -> None:
    reasons = ["not enough data yet:", "champion: 3 units", "challenger: 2 units"]
    joined = experiments_html.join_reasons(reasons)
    assert joined == "not enough data yet: champion: 3 units; challenger: 2 units"
