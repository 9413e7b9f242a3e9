"""Text a database can store: no NUL characters, no lone UTF-16 surrogates.

Postgres ``text`` and ``jsonb`` refuse U+0000, and no UTF-8 encoder (Postgres, SQLite,
orjson) accepts a lone surrogate (U+D800..U+DFFF), which JSON's ``"\\ud800"`` escape
produces. Two tools, used at two depths:

- ``find_problem`` walks a parsed request body: the API refuses such strings, and JSON
  nested deeper than a limit, with a 400 naming the field;
- ``escape`` makes any value storable (``\\x00`` -> ``\\u0000``, a lone surrogate ->
  ``\\udXXX`` as text), so a refused request still gets its row and nothing a client
  sends can fail a batch of the inference log.

Pure functions, no imports from the rest of the router: the public schemas use them.
"""

from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _escape_char(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def escape_text(text: str) -> str:
    """``text`` with NUL and lone surrogates written out as ``\\uXXXX``."""
    return _UNSTORABLE.sub(_escape_char, text) if _UNSTORABLE.search(text) else text


def escape(value: Any) -> Any:
    """``value`` with every string in it (keys included) made storable; other values as is."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {escape(k): escape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escape(v) for v in value]
    return value


def describe(text: str) -> str:
    """What is wrong with ``text``, for an error message ("a NUL character", ...)."""
    match = _UNSTORABLE.search(text)
    if match is None:
        return "nothing"
    if match.group() == "\x00":
        return "a NUL character (\\u0000)"
    return f"a lone UTF-16 surrogate (\\u{ord(match.group()):04x})"


class Problem(NamedTuple):
    """What ``locate_problem`` found: where (``messages.0.content``; "body" for the top),
    whether it is ``depth`` or ``text``, and the sentence ``find_problem`` returns."""

    path: str
    kind: Literal["depth", "text"]
    sentence: str


def locate_problem(
    value: Any, *, max_depth: int, _path: str = "", _depth: int = 0
) -> Problem | None:
    """The first unstorable string or too-deep nesting in a JSON value, or None."""
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            where = _path or "body"
            return Problem(where, "text", f"{where} contains {describe(value)}")
        return None
    if isinstance(value, dict | list):
        if _depth >= max_depth:
            where = _path or "body"
            return Problem(where, "depth", f"{where} is nested more than {max_depth} levels deep")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            where = f"{_path}.{key}" if _path else str(key)
            if isinstance(key, str) and _UNSTORABLE.search(key):
                inside = _path or "body"
                return Problem(inside, "text", f"a key in {inside} contains {describe(key)}")
            problem = locate_problem(item, max_depth=max_depth, _path=where, _depth=_depth + 1)
            if problem is not None:
                return problem
    return None


def find_problem(value: Any, *, max_depth: int) -> str | None:
    """The first unstorable string or too-deep nesting in a JSON value, as a sentence
    naming its path (``messages.0.content contains a NUL character``), or None."""
    problem = locate_problem(value, max_depth=max_depth)
    return None if problem is None else problem.sentence
