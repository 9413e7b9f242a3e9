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
from ui.render import Tone, notice
from ui.tabs.experiments_html import (
    LIVE,
    analysis_html,
    choice,
    decision_html,
    history_html,
    join_reasons,
    summary_html,
)

#: The admin buttons: action -> label. ``evaluate`` asks the policy; the rest act whatever
#: it says (a promote only with the data behind it, or with "force").
ACTIONS = {
    "evaluate": "Evaluate now",
    "pause": "Pause",
    "resume": "Resume",
    "advance": "Advance stage",
    "promote": "Promote challenger",
    "rollback": "Roll back",
}
DONE = {
    "evaluate": "Evaluated",
    "pause": "Paused",
    "resume": "Resumed",
    "advance": "Advanced",
    "promote": "Promoted",
    "rollback": "Rolled back",
}
#: The router's refusals that "force" overrides: code -> (title, what to do here).
FORCEABLE = {
    "promotion_not_supported_by_data": (
        "Not promoted: the data do not back it.",
        'To promote anyway, tick "Force", give a reason, and click Promote again '
        "(both are recorded).",
    ),
    "version_rejected": (
        "Not started: this challenger version was rejected before.",
        'To test it again, tick "Force", give a reason, and click Start again (both are recorded).',
    ),
}
NO_EXPERIMENT = "No experiment on this route yet. Sign in as admin below to start one."
#: Where a person finds the admin token, under the Admin heading.
TOKEN_HELP = (
    "The admin token is <code>CANARY_ADMIN_TOKEN</code> if the router's operator set one; "
    "otherwise the router generated one at its first start, printed it, and keeps it in "
    "the file <code>admin_token</code> in its data directory "
    "(<code>data/admin_token</code> by default)."
)
#: A note on the status line per status that needs one.
STATUS_NOTES: dict[str, tuple[str, Tone]] = {
    "halted": (
        "Halted: the challenger gets no traffic. A sample ratio mismatch or broken data "
        "stopped the experiment (reasons below). Investigate assignment and logging, then "
        "Resume, or Roll back.",
        "error",
    ),
    "paused": ("Paused: the challenger gets no traffic until you resume.", "warning"),
    "inconclusive": (
        "Ended inconclusive: no conclusion within the policy's units or days; the champion "
        'keeps all traffic. Starting again with this challenger version needs "Force".',
        "info",
    ),
    "rolled_back": (
        'Rolled back. Starting again with this challenger version needs "Force".',
        "info",
    ),
}


class ExperimentView(NamedTuple):
    """The read-only part of the tab, in the order it is wired."""

    picker: Any
    summary: str
    decision: str
    analysis: str
    history: str
    status: str


class AdminResult(NamedTuple):
    """What an admin action (start or an action button) answers."""

    message: str
    view: ExperimentView
    #: Whether the router did it: then the one-shot "force" and the reason are cleared.
    ok: bool = False


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
    status = exp["status"]
    live = status in LIVE
    last = next((d for d in reversed(decisions) if d.get("acted")), None)
    if status == "halted":  # why it halted; the policy's view now starts a fresh SRM window
        decision = decision_html(last, title="Halted")
    elif live:
        decision = decision_html(analysis.get("decision"), title="Policy says now")
    else:
        decision = decision_html(last, title=f"Ended ({status.replace('_', ' ')})")
    note = STATUS_NOTES.get(status)
    return ExperimentView(
        gr.update(),
        summary_html(exp),
        decision,
        analysis_html(analysis if live else None, exp.get("policy")),
        history_html(decisions),
        notice(*note) if note else "",
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


def _refused(exc: RouterError, title: str) -> str:
    """The router's refusal as an error notice; one that "force" overrides says how."""
    forceable = FORCEABLE.get(exc.code or "")
    if forceable is None:
        return notice(exc.message, "error", title=title)
    title, hint = forceable
    return notice(f"{exc.message} {hint}", "error", title=title)


async def start(
    client: RouterClient,
    token: str | None,
    route: str | None,
    stages_text: str,
    auto: bool,
    *,
    force: bool = False,
    reason: str | None = None,
) -> AdminResult:
    """Start an experiment on ``route`` (``force``: even for a challenger version rejected
    before; ``reason`` is recorded); the admin message and the refreshed view."""
    if not token:
        return AdminResult(
            notice("Sign in as admin first.", "warning"), await overview(client, route)
        )
    if not route:
        return AdminResult(notice("Pick a route first.", "warning"), await overview(client, route))
    try:
        stages = _stages(stages_text or "")
    except ValueError:
        message = notice("Stages are challenger percentages, e.g. 5, 25, 50.", "warning")
        return AdminResult(message, await overview(client, route))
    try:
        exp = await client.start_experiment(
            route, token=token, stages=stages, auto=auto, force=force, reason=reason
        )
    except RouterError as exc:
        return AdminResult(_refused(exc, "Not started."), await overview(client, route))
    forced = " (forced)" if force else ""
    message = notice(f"Started {exp['id']} on {route}{forced}.", "success")
    return AdminResult(message, await overview(client, route, exp["id"]), ok=True)


async def act(
    client: RouterClient,
    token: str | None,
    route: str | None,
    experiment_id: str | None,
    action: str,
    *,
    force: bool = False,
    reason: str | None = None,
) -> AdminResult:
    """Evaluate, pause, resume, advance, promote or roll back the chosen experiment.

    ``force`` applies to promote only (against the data); ``reason`` is recorded with
    every action but evaluate (which asks the policy and records its own reasons).
    """
    if not token:
        return AdminResult(
            notice("Sign in as admin first.", "warning"), await overview(client, route)
        )
    if not experiment_id:
        message = notice("Choose an experiment first.", "warning")
        return AdminResult(message, await overview(client, route))
    forced = force and action == "promote"
    try:
        decision = await client.act(experiment_id, action, token=token, force=forced, reason=reason)
    except RouterError as exc:
        failed = _refused(exc, f"{ACTIONS[action]} failed.")
        return AdminResult(failed, await overview(client, route, experiment_id))
    acted = "acted on" if decision.get("acted") else "recommended only (manual mode)"
    reasons = join_reasons(decision.get("reasons") or ())
    text = f"{DONE[action]}: decision {decision.get('action')}, {acted}."
    if reasons:
        text += f" Reasons: {reasons}"
    view = await overview(client, route, experiment_id)
    return AdminResult(notice(text, "success"), view, ok=True)


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
    analysis = gr.HTML(elem_id="exp-analysis")
    history = gr.HTML(elem_id="exp-history")
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
            "pausing, advancing, promoting and rolling back need the router's admin token. "
            "Each action is recorded with its reason.</div>"
        )
        signed_in = bool(client.admin_token)
        with gr.Column(visible=not signed_in) as signed_out_row:
            gr.HTML(f'<div class="cr-muted">{TOKEN_HELP}</div>', elem_id="exp-token-help")
            with gr.Row(elem_classes="cr-toolbar"):
                token_box = gr.Textbox(
                    show_label=False,
                    type="password",
                    placeholder="Admin token (CANARY_ADMIN_TOKEN or data/admin_token)",
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
            with gr.Row(elem_classes="cr-toolbar"):
                reason = gr.Textbox(
                    label="Reason (optional, recorded with the action)",
                    max_length=1000,
                    scale=4,
                    elem_id="exp-reason",
                )
                force = gr.Checkbox(
                    label="Force (promote against the data, or restart a rejected version)",
                    value=False,
                    scale=2,
                    min_width=220,
                    elem_id="exp-force",
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

    def form(clear: bool) -> tuple[Any, Any]:
        """Updates of "force" and the reason: "force" is one-shot, cleared (with the reason)
        once an action that used it is done. Fresh each time: Gradio edits updates in place."""
        if clear:
            return gr.update(value=False), gr.update(value="")
        return gr.update(), gr.update()

    async def on_start(
        secret: str | None,
        route_name: str | None,
        stages_text: str,
        automatic: bool,
        forced: bool,
        why: str,
    ) -> tuple[Any, ...]:
        done = await start(
            client, secret, route_name, stages_text, automatic, force=forced, reason=why
        )
        return (done.message, *form(done.ok), *done.view)

    form_outputs = [admin_message, force, reason, *view_outputs]
    start_button.click(
        on_start,
        inputs=[token, route, stages, auto, force, reason],
        outputs=form_outputs,
        api_visibility="private",
    ).then(on_report, inputs=picker, outputs=report_outputs, api_visibility="private")
    for action, button in buttons.items():

        async def on_act(
            secret: str | None,
            route_name: str | None,
            chosen: str | None,
            forced: bool,
            why: str,
            name: str = action,
        ) -> tuple[Any, ...]:
            done = await act(client, secret, route_name, chosen, name, force=forced, reason=why)
            # Evaluate takes neither force nor a reason: they stay for the next action.
            return (done.message, *form(done.ok and name != "evaluate"), *done.view)

        button.click(
            on_act,
            inputs=[token, route, picker, force, reason],
            outputs=form_outputs,
            api_visibility="private",
        ).then(on_report, inputs=picker, outputs=report_outputs, api_visibility="private")
