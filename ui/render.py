"""Small HTML fragments the tabs share: notices, badges, tables and number formats, and
the Markdown of an answer (tool calls, JSON).

Every value that came from the router or a person is escaped here (an answer's Markdown
goes to a ``gr.Chatbot``, which sanitises it); the CSS classes are defined in
``theme.css``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

Tone = Literal["info", "success", "warning", "error"]


def esc(value: object) -> str:
    """HTML-escaped text of ``value``."""
    return html.escape(str(value), quote=True)


def notice(message: str, tone: Tone = "info", *, title: str | None = None) -> str:
    """A coloured message box; ``title`` in bold before the message."""
    head = f"<strong>{esc(title)}</strong> " if title else ""
    return f'<div class="cr-notice cr-{tone}" role="status">{head}{esc(message)}</div>'


def badge(text: str, tone: str = "neutral") -> str:
    """A small pill, e.g. an experiment's status."""
    return f'<span class="cr-badge cr-badge-{esc(tone)}">{esc(text)}</span>'


def pct(x: float | None, digits: int = 1) -> str:
    """``0.1234`` -> ``12.3%``; missing -> an em dash."""
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def ms(x: float | None) -> str:
    """Milliseconds, or seconds once they read better that way."""
    if x is None:
        return "—"
    return f"{x / 1000:.2f} s" if x >= 10_000 else f"{x:.0f} ms"


def num(x: float | None, digits: int = 1) -> str:
    """A plain number with ``digits`` decimals; missing -> an em dash."""
    return "—" if x is None else f"{x:,.{digits}f}"


def interval(ci: Sequence[float | None] | None, fmt: str = "pct", digits: int = 1) -> str:
    """``[lo, hi]`` as ``12.0-18.5%`` (``fmt='pct'``) or ``1,020-1,100`` (``'num'``)."""
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    if fmt == "pct":
        return f"{100 * ci[0]:.{digits}f}-{100 * ci[1]:.{digits}f}%"
    return f"{ci[0]:,.{digits}f}-{ci[1]:,.{digits}f}"


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    raw: bool = False,
    css_class: str = "cr-table",
) -> str:
    """An HTML table; body cells are escaped unless ``raw`` (the caller escaped them)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{v if raw else esc(v)}</td>" for v in row) + "</tr>" for row in rows
    )
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def stat(label: str, value: str, hint: str = "") -> str:
    """One figure in a stat card: a big value, its label, an optional small hint."""
    extra = f'<div class="cr-stat-hint">{esc(hint)}</div>' if hint else ""
    return (
        f'<div class="cr-stat"><div class="cr-stat-value">{esc(value)}</div>'
        f'<div class="cr-stat-label">{esc(label)}</div>{extra}</div>'
    )


def panel(title: str, body: str) -> str:
    """A white card with a title; ``body`` is HTML the caller built (and escaped)."""
    return f'<div class="cr-panel"><div class="cr-section">{esc(title)}</div>{body}</div>'


def answer_markdown(text: str | None, tool_calls: Sequence[Mapping[str, Any]] | None = None) -> str:
    """An answer as Markdown for a chat bubble: the text, then each tool call.

    A text that is a JSON object or array (``response_format``) is pretty-printed in a
    ``json`` block; any other text is returned unchanged, so an empty answer stays empty.
    A tool call is ``**Tool call** `name``` over its arguments, pretty-printed when they
    are JSON and shown as they are otherwise (a stream's arguments arrive in pieces).
    """
    parts = [_json_block(text) or text] if text else []
    for call in tool_calls or ():
        function = call.get("function") or {}
        name = str(function.get("name") or "").replace("`", "'") or "tool"
        arguments = function.get("arguments") or ""
        if not isinstance(arguments, str):  # already parsed by whoever sent it
            arguments = json.dumps(arguments, ensure_ascii=False)
        head = f"**Tool call** `{name}`"
        if arguments.strip():
            head += "\n\n" + (_json_block(arguments) or _code_block(arguments))
        parts.append(head)
    return "\n\n".join(parts)


def _json_block(text: str) -> str | None:
    """``text`` pretty-printed in a ``json`` block if it is a JSON object or array."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return _code_block(json.dumps(value, indent=2, ensure_ascii=False), "json")


def _code_block(body: str, language: str = "") -> str:
    """``body`` in a fenced block; the fence outgrows any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{body}\n{fence}"
