"""Experiments tab: a canary's status, stage, split, latest analysis and decision, its
report and history, and, behind the admin token, the buttons that act on it.

The token is checked by the router (never by the page) and kept only in this page's
session state; every admin call sends it as ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import html
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from ui.client import RouterClient, RouterError
from ui.render import notice
from ui.tabs.experiments_html import (
    analysis_html,
    choice,
    decision_html,
    history_html,
    join_reasons,
    summary_html,
)

#: The admin buttons: action -> label. ``evaluate`` asks the policy; the rest force it.
ACTIONS = {
    "evaluate": "Evaluate now",
    "pause": "Pause",
    "resume": "Resume",
    "promote": "Promote challenger",
    "rollback": "Roll back",
}
DONE = {
    "evaluate": "Evaluated",
    "pause": "Paused",
    "resume": "Resumed",
    "promote": "Promoted",
    "rollback": "Rolled back",
}
NO_EXPERIMENT = "No experiment on this route yet. Sign in as admin below to start one."


class ExperimentView(NamedTuple):
    """The read-only part of the tab, in the order it is wired."""

    picker: Any
    summary: str
    decision: str
    analysis: str
    history: str
    status: str


class AdminView(NamedTuple):
    """Outputs of sign in / sign out."""

    token: str | None
    signed_out: Any
    signed_in: Any
    message: str
    token_box: Any


async def overview(
    client: RouterClient, route: str | None, selected: str | None = None
) -> ExperimentView:
    """The route's experiments in the picker (``selected`` or the newest chosen) and the
    chosen one in full."""
    if not route:
        empty = notice("Pick a route first.", "warning")
        return ExperimentView(gr.update(choices=[], value=None), "", "", "", "", empty)
    try:
        experiments = [e for e in await client.experiments() if e["route"] == route]
    except RouterError as exc:
        failed = notice(exc.message, "error", title="Experiments could not be loaded.")
        return ExperimentView(gr.update(), "", "", "", "", failed)
    if not experiments:
        picker = gr.update(choices=[], value=None)
        return ExperimentView(picker, "", "", "", "", notice(NO_EXPERIMENT, "info"))
    ids = [e["id"] for e in experiments]
    chosen = selected if selected in ids else ids[0]
    details = await show(client, chosen)
    picker = gr.update(choices=[choice(e) for e in experiments], value=chosen)
    return details._replace(picker=picker)


async def show(client: RouterClient, experiment_id: str | None) -> ExperimentView:
    """One experiment: summary cards, the policy's decision now, the tests, the history."""
    if not experiment_id:
        return ExperimentView(gr.update(), "", "", "", "", notice(NO_EXPERIMENT, "info"))
    try:
        exp = await client.experiment(experiment_id)
        decisions = await client.decisions(experiment_id)
    except RouterError as exc:
        failed = notice(exc.message, "error", title="The experiment could not be loaded.")
        return ExperimentView(gr.update(), "", "", "", "", failed)
    analysis = exp.get("analysis") or {}
    live = exp["status"] in ("running", "paused")
    if live:
        decision = decision_html(analysis.get("decision"), title="Policy says now")
    else:
        last = next((d for d in reversed(decisions) if d.get("acted")), None)
        decision = decision_html(last, title=f"Ended ({exp['status'].replace('_', ' ')})")
    return ExperimentView(
        gr.update(),
        summary_html(exp),
        decision,
        analysis_html(analysis if live else None),
        history_html(decisions),
        "",
    )


async def report(
    client: RouterClient, experiment_id: str | None, downloads: Path
) -> tuple[str, Any]:
    """The HTML report inline (in a sandboxed frame: its styles stay its own) and as a
    file to download."""
    if not experiment_id:
        return "", gr.update(value=None, interactive=False)
    try:
        page = await client.report_html(experiment_id)
    except RouterError as exc:
        failed = notice(exc.message, "error", title="The report could not be made.")
        return failed, gr.update(value=None, interactive=False)
    path = downloads / f"{experiment_id}-report.html"
    await asyncio.to_thread(path.write_text, page, encoding="utf-8")  # reports run to MBs
    frame = (
        f'<iframe class="cr-report" title="Promotion report" sandbox="" '
        f'srcdoc="{html.escape(page, quote=True)}"></iframe>'
    )
    return frame, gr.update(value=str(path), interactive=True)


async def sign_in(client: RouterClient, token: str) -> AdminView:
    """Check ``token`` with the router; on success the admin controls appear."""
    token = (token or "").strip()
    if not token:
        message = notice("Enter the admin token.", "warning")
        return AdminView(None, gr.update(), gr.update(), message, gr.update())
    try:
        await client.check_admin_token(token)
    except RouterError as exc:
        message = notice(exc.message, "error", title="Not signed in.")
        return AdminView(None, gr.update(visible=True), gr.update(visible=False), message, "")
    message = notice("Signed in as admin.", "success")
    return AdminView(token, gr.update(visible=False), gr.update(visible=True), message, "")


def sign_out() -> AdminView:
    """Forget the token in this page."""
    message = notice("Signed out.", "info")
    return AdminView(None, gr.update(visible=True), gr.update(visible=False), message, "")


def _stages(text: str) -> list[float] | None:
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    if not parts:
        return None
    return [float(p.rstrip("%")) for p in parts]


async def start(
    client: RouterClient, token: str | None, route: str | None, stages_text: str, auto: bool
) -> tuple[str, ExperimentView]:
    """Start an experiment on ``route``; returns the admin message and the refreshed view."""
    if not token:
        return notice("Sign in as admin first.", "warning"), await overview(client, route)
    if not route:
        return notice("Pick a route first.", "warning"), await overview(client, route)
    try:
        stages = _stages(stages_text or "")
    except ValueError:
        message = notice("Stages are challenger percentages, e.g. 5, 25, 50.", "warning")
        return message, await overview(client, route)
    try:
        exp = await client.start_experiment(route, token=token, stages=stages, auto=auto)
    except RouterError as exc:
        failed = notice(exc.message, "error", title="Not started.")
        return failed, await overview(client, route)
    message = notice(f"Started {exp['id']} on {route}.", "success")
    return message, await overview(client, route, exp["id"])


async def act(
    client: RouterClient,
    token: str | None,
    route: str | None,
    experiment_id: str | None,
    action: str,
) -> tuple[str, ExperimentView]:
    """Evaluate, pause, resume, promote or roll back the chosen experiment."""
    if not token:
        return notice("Sign in as admin first.", "warning"), await overview(client, route)
    if not experiment_id:
        message = notice("Choose an experiment first.", "warning")
        return message, await overview(client, route)
    try:
        decision = await client.act(experiment_id, action, token=token)
    except RouterError as exc:
        failed = notice(exc.message, "error", title=f"{ACTIONS[action]} failed.")
        return failed, await overview(client, route, experiment_id)
    acted = "acted on" if decision.get("acted") else "recommended only (manual mode)"
    reasons = join_reasons(decision.get("reasons") or ())
    text = f"{DONE[action]}: decision {decision.get('action')}, {acted}."
    if reasons:
        text += f" Reasons: {reasons}"
    return notice(text, "success"), await overview(client, route, experiment_id)


def add_experiments_tab(
    client: RouterClient, *, route: gr.Dropdown, tab: gr.Tab, downloads: Path
) -> None:
    """The experiments tab's widgets and events, inside the current ``gr.Tab``."""
    token = gr.State(client.admin_token)
    with gr.Row(elem_classes="cr-toolbar"):
        picker = gr.Dropdown(
            label="Experiment", choices=[], value=None, scale=5, elem_id="exp-picker"
        )
        refresh_button = gr.Button(
            "Refresh", size="md", scale=0, min_width=110, elem_id="exp-refresh"
        )
    status = gr.HTML(elem_id="exp-status")
    summary = gr.HTML(elem_id="exp-summary")
    decision = gr.HTML(elem_id="exp-decision")
    with gr.Row(equal_height=False):
        analysis = gr.HTML(elem_id="exp-analysis", scale=1)
        history = gr.HTML(elem_id="exp-history", scale=1)
    with gr.Accordion("Promotion report", open=False, elem_id="exp-report-box"):
        with gr.Row():
            gr.HTML(
                '<div class="cr-muted">The experiment\'s self-contained report: decision, '
                "tests, plots over time and every decision taken.</div>"
            )
            report_file = gr.DownloadButton(
                "Download report (HTML)",
                interactive=False,
                size="sm",
                scale=0,
                min_width=220,
                elem_id="exp-report-download",
            )
        report_frame = gr.HTML(elem_id="exp-report")
    with gr.Column(elem_classes="cr-admin"):
        gr.HTML(
            '<div class="cr-section">Admin</div><div class="cr-muted">Starting, evaluating, '
            "pausing, promoting and rolling back need the router's admin token.</div>"
        )
        signed_in = bool(client.admin_token)
        with gr.Row(visible=not signed_in, elem_classes="cr-toolbar") as signed_out_row:
            token_box = gr.Textbox(
                show_label=False,
                type="password",
                placeholder="Admin token (CANARY_ADMIN_TOKEN)",
                scale=4,
                elem_id="exp-token",
            )
            sign_in_button = gr.Button(
                "Sign in",
                variant="primary",
                size="md",
                scale=0,
                min_width=120,
                elem_id="exp-sign-in",
            )
        with gr.Column(visible=signed_in) as signed_in_col:
            with gr.Row(elem_classes="cr-toolbar"):
                stages = gr.Textbox(
                    label="Stages (challenger %)", value="5, 25, 50", scale=3, elem_id="exp-stages"
                )
                auto = gr.Checkbox(label="Act automatically", value=False, scale=1, min_width=170)
                start_button = gr.Button(
                    "Start experiment",
                    variant="primary",
                    size="md",
                    scale=0,
                    min_width=170,
                    elem_id="exp-start",
                )
            with gr.Row(elem_classes="cr-actions"):
                buttons = {
                    action: gr.Button(
                        label,
                        variant="stop" if action == "rollback" else "secondary",
                        size="md",
                        elem_id=f"exp-{action}",
                    )
                    for action, label in ACTIONS.items()
                }
                sign_out_button = gr.Button("Sign out", size="md", variant="secondary")
        admin_message = gr.HTML(elem_id="exp-admin-message")

    view_outputs = [picker, summary, decision, analysis, history, status]
    report_outputs = [report_frame, report_file]

    async def on_overview(route_name: str | None, chosen: str | None) -> ExperimentView:
        return await overview(client, route_name, chosen)

    async def on_show(chosen: str | None) -> ExperimentView:
        return await show(client, chosen)

    async def on_report(chosen: str | None) -> tuple[str, Any]:
        return await report(client, chosen, downloads)

    for trigger in (route.change, refresh_button.click, tab.select):
        trigger(
            on_overview,
            inputs=[route, picker],
            outputs=view_outputs,
            api_visibility="private",
            show_progress="minimal",
        ).then(
            on_report,
            inputs=picker,
            outputs=report_outputs,
            api_visibility="private",
            show_progress="minimal",
        )
    picker.input(on_show, inputs=picker, outputs=view_outputs, api_visibility="private").then(
        on_report, inputs=picker, outputs=report_outputs, api_visibility="private"
    )

    async def on_sign_in(text: str) -> AdminView:
        return await sign_in(client, text)

    admin_outputs = [token, signed_out_row, signed_in_col, admin_message, token_box]
    gr.on(
        [sign_in_button.click, token_box.submit],
        on_sign_in,
        inputs=token_box,
        outputs=admin_outputs,
        api_visibility="private",
    )
    sign_out_button.click(sign_out, outputs=admin_outputs, api_visibility="private")

    async def on_start(
        secret: str | None, route_name: str | None, stages_text: str, automatic: bool
    ) -> tuple[Any, ...]:
        message, view = await start(client, secret, route_name, stages_text, automatic)
        return (message, *view)

    start_button.click(
        on_start,
        inputs=[token, route, stages, auto],
        outputs=[admin_message, *view_outputs],
        api_visibility="private",
    ).then(on_report, inputs=picker, outputs=report_outputs, api_visibility="private")
    for action, button in buttons.items():

        async def on_act(
            secret: str | None, route_name: str | None, chosen: str | None, name: str = action
        ) -> tuple[Any, ...]:
            message, view = await act(client, secret, route_name, chosen, name)
            return (message, *view)

        button.click(
            on_act,
            inputs=[token, route, picker],
            outputs=[admin_message, *view_outputs],
            api_visibility="private",
        ).then(on_report, inputs=picker, outputs=report_outputs, api_visibility="private")
