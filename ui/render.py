"""Small HTML fragments the tabs share: notices, badges, tables and number formats.

Every value that came from the router or a person is escaped here; the CSS classes are
defined in ``theme.css``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Literal

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
