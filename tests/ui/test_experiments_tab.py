"""Experiments tab handlers against a real router: admin sign-in, start, act, report."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest_asyncio

from router.config import Settings
from tests.ui.conftest import TOKEN, Running
from ui.client import RouterClient
from ui.tabs import experiments, experiments_html

ADMIN = {"authorization": f"Bearer {TOKEN}"}


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


@pytest_asyncio.fixture(loop_scope="function")
async def quiet_client(
    make_settings: Callable[..., Settings],
    run_router: Callable[..., AbstractContextManager[Running]],
) -> AsyncIterator[RouterClient]:
    """A client of a router whose evaluator never ticks on its own: a split set by hand
    stays wrong until the test evaluates."""
    settings = make_settings(admin_token=TOKEN, evaluation_interval_s=3600)
    with run_router(settings) as (server, _):
        client = RouterClient(server.url)
        yield client
        await client.aclose()


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

    started = await experiments.start(client, TOKEN, "chat", "10, 50", False)
    assert "Started exp-" in started.message and started.ok
    view = started.view
    experiment_id = view.picker["value"]
    assert experiment_id.startswith("exp-")
    assert "1 of 2" in view.summary and "challenger at 10%" in view.summary
    assert "90% / 10%" in view.summary and "manual" in view.summary
    assert "Policy says now" in view.decision and "continue" in view.decision
    assert "Thumbs-up rate" in view.analysis and "Sample ratio" in view.analysis
    assert "p (better, at this look)" in view.analysis and "p (worse)" in view.analysis
    assert "primary" in view.analysis and "guardrail" in view.analysis
    assert "p (above bound)" in view.analysis and "Anytime-valid p" in view.analysis

    done = await experiments.act(client, TOKEN, "chat", experiment_id, "evaluate")
    assert "Evaluated: decision continue, recommended only (manual mode)" in done.message
    assert done.view.history.count("<tr>") == 3  # header, the start, the evaluation
    assert "started by api" in done.view.history

    done = await experiments.act(client, TOKEN, "chat", experiment_id, "pause")
    assert "Paused" in done.message and "paused" in done.view.summary
    assert "no traffic until you resume" in done.view.status
    done = await experiments.act(client, TOKEN, "chat", experiment_id, "resume")
    assert "running" in done.view.summary and done.view.status == ""

    frame, download = await experiments.report(client, experiment_id, tmp_path)
    assert frame.startswith('<iframe class="cr-report"') and "srcdoc=" in frame
    assert _read(download["value"]).lstrip().lower().startswith("<!doctype html")

    done = await experiments.act(
        client, TOKEN, "chat", experiment_id, "rollback", reason="tone is off"
    )
    assert "Rolled back" in done.message and done.ok
    view = done.view
    assert "rolled back" in view.summary and "Ended (rolled back)" in view.decision
    assert "100% / 0%" in view.summary  # the challenger gets no more traffic
    assert "reason: tone is off" in view.history
    # Acting on an ended experiment is refused with the router's reason.
    done = await experiments.act(client, TOKEN, "chat", experiment_id, "promote")
    assert "cr-error" in done.message and "ended" in done.message and not done.ok


async def test_halt_resume_advance_and_what_force_overrides(quiet_client: RouterClient) -> None:
    client = quiet_client
    started = await experiments.start(client, TOKEN, "chat", "50, 75", False)
    experiment_id = started.view.picker["value"]
    # A replica whose split is wrong: every unit lands on the champion, so the sample
    # ratio mismatch halts the experiment (in manual mode too).
    async with httpx.AsyncClient(base_url=client.base_url or "", timeout=30) as http:
        put = await http.put("/v1/routes/chat/weights", json={"challenger": 0}, headers=ADMIN)
        assert put.status_code == 200
        for i in range(100):
            chat = {
                "model": "chat",
                "user": f"u-{i}",
                "messages": [{"role": "user", "content": "hi"}],
            }
            assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200

    done = await experiments.act(client, TOKEN, "chat", experiment_id, "evaluate")
    assert "decision halt, acted on" in done.message, done.message
    view = done.view
    assert "halted" in view.summary and "cr-badge-bad" in view.summary
    assert "Halted" in view.decision and "ratio" in view.decision.lower()
    assert "Halted" in view.status and "Resume" in view.status and "cr-error" in view.status
    assert "Sample ratio" in view.analysis  # a halted experiment still shows its analysis

    done = await experiments.act(client, TOKEN, "chat", experiment_id, "resume", reason="fixed")
    assert "Resumed" in done.message and "running" in done.view.summary
    done = await experiments.act(client, TOKEN, "chat", experiment_id, "advance")
    assert "Advanced" in done.message, done.message
    assert "2 of 2" in done.view.summary and "challenger at 75%" in done.view.summary

    refused = await experiments.act(client, TOKEN, "chat", experiment_id, "promote")
    assert not refused.ok and "cr-error" in refused.message
    assert "Not promoted: the data do not back it." in refused.message
    assert "tick &quot;Force&quot;" in refused.message
    done = await experiments.act(
        client, TOKEN, "chat", experiment_id, "rollback", force=True, reason="not better"
    )
    assert done.ok and "rolled back" in done.view.summary
    assert "needs &quot;Force&quot;" in done.view.status

    # The same challenger version again: refused unless forced.
    refused_start = await experiments.start(client, TOKEN, "chat", "50", False)
    assert not refused_start.ok
    assert "Not started: this challenger version was rejected before." in refused_start.message
    again = await experiments.start(
        client, TOKEN, "chat", "50", False, force=True, reason="retry after fix"
    )
    assert again.ok and "(forced)" in again.message
    assert (
        "reason: retry after fix" in again.view.history and "forced: version" in again.view.history
    )
    second = again.view.picker["value"]
    assert second != experiment_id
    forced = await experiments.act(
        client, TOKEN, "chat", second, "promote", force=True, reason="ship it"
    )
    assert forced.ok and "Promoted" in forced.message
    assert "promoted" in forced.view.summary and "Ended (promoted)" in forced.view.decision
    assert "forced against the policy" in forced.view.history
    assert "reason: ship it" in forced.view.history


async def test_admin_actions_need_a_good_token(client: RouterClient) -> None:
    done = await experiments.start(client, None, "chat", "5", True)
    assert "Sign in as admin first" in done.message and "No experiment" in done.view.status
    done = await experiments.start(client, "forged", "chat", "5", True)
    assert "cr-error" in done.message and "token is wrong" in done.message
    done = await experiments.start(client, TOKEN, "chat", "five", True)
    assert "challenger percentages" in done.message
    done = await experiments.start(client, TOKEN, "chat", "0, 150", True)
    assert "cr-error" in done.message and "stages" in done.message
    assert await client.experiments() == []
    done = await experiments.act(client, "forged", "chat", "exp-x", "promote")
    assert "cr-error" in done.message and "token is wrong" in done.message


def test_reasons_read_as_one_sentence() -> None:
    reasons = ["not enough data yet:", "champion: 3 units", "challenger: 2 units"]
    joined = experiments_html.join_reasons(reasons)
    assert joined == "not enough data yet: champion: 3 units; challenger: 2 units"


def test_analysis_shows_roles_bounds_and_always_valid_p_values() -> None:
    analysis = {
        "arms": {"champion": {"requests": 10}, "challenger": {"requests": 12}},
        "metrics": {
            "thumbs_up_rate": {
                "role": "primary",
                "champion": 0.5,
                "challenger": 0.6,
                "difference": 0.1,
                "confidence_sequence": [-0.02, 0.22],
                "p_better": 0.0123,
                "p_worse": 0.9,
            },
            "votes": {"role": "guardrail", "win_rate": 0.55, "p_better": None, "p_worse": 0.4},
            "error_rate": {
                "champion": 0.01,
                "challenger": 0.02,
                "difference": 0.01,
                "bound": 0.5,
                "bound_type": "relative",
                "p_above_bound": 0.0004,
            },
            "latency": {"p95_ratio": 1.234, "bound": 1.5, "p_above_bound": 0.2},
            "ttft": {},
        },
        "srm": {"p_value": 0.42, "mismatch": False, "window": "stage 0 from phase 0"},
    }
    page = experiments_html.analysis_html(analysis, {"alpha": 0.05, "srm_alpha": 0.001})
    assert "p (better, at this look)" in page and "p (worse)" in page
    assert "<td>primary</td>" in page and "<td>guardrail</td>" in page
    assert "0.012" in page and "[-2.0, +22.0]" in page
    assert "≤ 1.50x champion&#x27;s" in page and "&lt; 0.001" in page  # error bound, its p
    assert "ratio 1.23" in page and "ratio ≤ 1.50" in page
    assert "0.420 (halts below 0.001)" in page and "as assigned" in page
    assert "below &alpha; = 0.05" in page
    assert "p_value_sequential" not in page


def test_statuses_have_tones() -> None:
    def summary(status: str) -> str:
        exp = {"status": status, "stages": [5], "champion_version": "1", "challenger_version": "2"}
        return experiments_html.summary_html(exp)

    assert "cr-badge-bad" in summary("halted") and "resumable" in summary("halted")
    assert "cr-badge-neutral" in summary("inconclusive")
    assert "champion keeps the traffic" in summary("inconclusive")
    assert experiments_html.ACTION_TONES["inconclusive"] == "neutral"
