"""End to end in a real headless Chromium: the router's main job serves ``/ui``; a person
plays an arena round with a follow-up, votes, sees the reveal, chats with thumbs, watches
the dashboard and acts on an experiment (a forced promotion with its reason). Screenshots
of every tab land in ``artifacts/screenshots``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from router.config import Settings
from tests.conftest import fake_routes
from tests.ui.conftest import TOKEN, Running

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (CI installs it)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402


@pytest.fixture
def served(
    make_settings: Callable[..., Settings],
    run_router: Callable[..., AbstractContextManager[Running]],
) -> Iterator[Running]:
    """The main job as the README runs it (UI mounted), with fake arms that stream."""
    routes = fake_routes(
        champion={"mode": "canned", "text": "Paris is the capital of France.", "tokens_per_s": 40},
        challenger={
            "text": "The capital of France is Paris, on the Seine.",
            "tokens_per_s": 40,
        },
    )
    settings = make_settings(routes=routes, admin_token=TOKEN, ui_enabled=True)
    with run_router(settings) as running:
        yield running


@pytest.fixture
def page(served: Running) -> Iterator[Page]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = browser.new_context(viewport={"width": 1360, "height": 1000})
        page = context.new_page()
        # Generous: CI machines are small and busy; a passing run takes seconds.
        page.set_default_timeout(20_000)
        expect.set_options(timeout=20_000)
        page.goto(f"{served[0].url}/")  # the router's own address leads to the UI
        # The page is ready once its load event has filled the route picker.
        expect(page.locator("#cr-route input")).to_have_value("chat")
        yield page
        browser.close()


def _open(page: Page, tab: str) -> None:
    page.get_by_role("tab", name=tab).click()
    expect(page.get_by_role("tab", name=tab)).to_have_attribute("aria-selected", "true")


def _type(page: Page, selector: str, value: str) -> None:
    box = page.locator(selector)
    box.fill(value)
    expect(box).to_have_value(value)


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def test_a_person_uses_every_tab(page: Page, served: Running) -> None:
    server, app = served
    url = server.url

    # -- Arena: a blind round, a follow-up, the vote, the reveal -------------------------
    _type(page, "#arena-prompt textarea", "What is the capital of France?")
    page.click("#arena-send")
    expect(page.locator("#vote-a")).to_be_enabled()
    for side in ("a", "b"):
        answer = page.locator(f"#arena-{side}")
        expect(answer).to_contain_text("Paris")
        assert not re.search("champion|challenger|fake-", answer.inner_text())
    # A follow-up: both sides answer again, each under its own conversation.
    _type(page, "#arena-prompt textarea", "And what is it known for?")
    page.click("#arena-send")
    for side in ("a", "b"):
        expect(page.locator(f"#arena-{side}")).to_contain_text("And what is it known for?")
    expect(page.locator("#vote-a")).to_be_enabled()  # the click waits for it too
    page.click("#vote-b")
    reveal = page.locator(".cr-reveal")
    expect(reveal).to_contain_text("You voted: B is better")
    expect(reveal).to_contain_text("champion")
    expect(reveal).to_contain_text("challenger")
    expect(page.locator("#vote-a")).to_be_disabled()
    _shot(page, "arena")
    with app.state.engine.connect() as conn:
        votes = conn.execute(text("SELECT battle_id, winner FROM votes")).all()
    assert len(votes) == 1 and votes[0].battle_id and votes[0].winner == "b"

    # -- Dashboard: the vote and both answers are counted --------------------------------
    _open(page, "Dashboard")
    votes_card = page.locator(".cr-stat", has_text="Arena votes").locator(".cr-stat-value")
    expect(votes_card).to_have_text("1")
    requests_card = page.locator(".cr-stat", has_text="Requests").locator(".cr-stat-value")
    expect(requests_card).to_have_text("4")  # two turns, both sides
    expect(page.locator("#dash-votes")).to_contain_text("Challenger win rate")
    expect(page.locator("#dash-plot").get_by_role("img", name=re.compile("plot"))).to_be_visible()
    _shot(page, "dashboard")

    # -- Chat: an answer, thumbs up, the feedback row ------------------------------------
    _open(page, "Chat")
    _type(page, "#chat-prompt textarea", "Hello! Where is Paris?")
    page.click("#chat-send")
    expect(page.locator("#chat-bot")).to_contain_text("Paris")
    expect(page.locator("#chat-send")).to_be_enabled()  # the answer has finished
    expect(page.locator("#chat-debug-panel")).to_be_empty()  # the arm stays hidden
    page.locator("#chat-debug input").check()
    request_id = page.locator("#chat-debug-panel td", has_text="chatcmpl-").inner_text()
    _type(page, "#chat-comment textarea", "Short and right.")
    page.locator("#chat-bot button[aria-label='Like']").click()
    expect(page.locator("#chat-status")).to_contain_text("thumbs up was recorded")
    _shot(page, "chat")
    row = httpx.get(f"{url}/v1/requests/{request_id}").json()
    assert [(f["value"], f["comment"]) for f in row["feedback"]] == [("up", "Short and right.")]
    assert row["unit_id"].startswith("ui-")  # this browser's sticky unit

    # -- Experiments: admin sign-in, start, evaluate, the report -------------------------
    _open(page, "Experiments")
    expect(page.locator("#exp-status")).to_contain_text("No experiment on this route yet")
    _type(page, "#exp-token input", "wrong-token")
    page.click("#exp-sign-in")
    expect(page.locator("#exp-admin-message")).to_contain_text("token is wrong")
    _type(page, "#exp-token input", TOKEN)
    page.click("#exp-sign-in")
    page.click("#exp-start")
    expect(page.locator("#exp-summary")).to_contain_text("1 of 3")
    page.click("#exp-evaluate")
    expect(page.locator("#exp-admin-message")).to_contain_text("Evaluated: decision continue")
    expect(page.locator("#exp-history")).to_contain_text("continue")
    expect(page.locator("#exp-analysis")).to_contain_text("p (better, at this look)")
    expect(page.locator("#exp-advance")).to_be_visible()
    page.get_by_text("Promotion report").click()
    report = page.frame_locator("#exp-report iframe")
    expect(report.get_by_text("Canary report: chat")).to_be_visible()
    _shot(page, "experiments")
    [experiment] = httpx.get(f"{url}/v1/experiments").json()
    assert experiment["status"] == "running" and experiment["stages"] == [5, 25, 50]

    # A promote the data do not back is refused until "Force" is ticked; then the
    # reason is recorded and the one-shot "Force" clears itself.
    page.click("#exp-promote")
    expect(page.locator("#exp-admin-message")).to_contain_text("the data do not back it")
    _type(page, "#exp-reason textarea", "Reviewed by hand.")
    page.locator("#exp-force input").check()
    page.click("#exp-promote")
    expect(page.locator("#exp-admin-message")).to_contain_text("Promoted")
    expect(page.locator("#exp-summary")).to_contain_text("promoted")
    expect(page.locator("#exp-force input")).not_to_be_checked()
    expect(page.locator("#exp-reason textarea")).to_have_value("")
    [experiment] = httpx.get(f"{url}/v1/experiments").json()
    assert experiment["status"] == "promoted"
    [*_, forced] = httpx.get(f"{url}/v1/experiments/{experiment['id']}/decisions").json()
    assert "reason: Reviewed by hand." in forced["reasons"]
