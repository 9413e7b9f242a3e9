"""One parser for every JSON body the API accepts, so every route refuses the same inputs.

FastAPI parses bodies with ``request.json()``; ``JSONRoute`` hands its endpoints a
``CheckedRequest`` whose ``json()`` also refuses what the router could not store or
should not walk: invalid UTF-8, ``NaN``/``Infinity`` (not JSON), nesting deeper than
``max_json_depth`` (400 ``invalid_json``) and strings with a NUL or a lone surrogate
(400 ``invalid_text`` naming the field). Errors raised here reach the app's handlers
through FastAPI's "error parsing the body" path (see ``router.api.errors``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from router.errors import InvalidJSON, InvalidRequest
from router.storable import locate_problem

#: The only ways a NUL or a lone surrogate gets into a parsed string: raw ones are invalid
#: UTF-8 or invalid JSON and fail to parse. Bodies without these skip the walk (~13 µs).
_SUSPECT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _not_json(constant: str) -> Any:
    raise InvalidJSON(f"The request body is not valid JSON: {constant} is not a JSON value.")


def parse_body(body: bytes, *, max_depth: int) -> Any:
    """The JSON value of ``body``, or an ``InvalidJSON``/``InvalidRequest`` saying why not.

    The standard library's parser, not orjson: it keeps lone surrogates (so the refusal
    can name their field) and big integers exactly (orjson turns 2**64 into a float).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(
            f"The request body is not valid UTF-8 (byte {exc.start} is {body[exc.start]:#04x})."
        ) from exc
    try:
        value = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"The request body is not valid JSON: {exc}.") from exc
    except RecursionError as exc:  # the C scanner recurses once per level
        raise InvalidJSON(f"The request body is nested more than {max_depth} levels deep.") from exc
    if _SUSPECT.search(body) is None and body.count(b"[") + body.count(b"{") < max_depth:
        return value  # no escape that could be a NUL or a surrogate, too few brackets to nest
    problem = locate_problem(value, max_depth=max_depth)
    if problem is None:
        return value
    if problem.kind == "depth":
        raise InvalidJSON(f"The request body is not accepted: {problem.sentence}.")
    raise InvalidRequest(
        f"Invalid request: {problem.sentence}, which this router refuses (it could not be "
        "stored or passed on faithfully).",
        code="invalid_text",
        param=problem.path,
    )


class CheckedRequest(Request):
    """A request whose ``json()`` is ``parse_body`` with the app's ``max_json_depth``."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            depth = self.app.state.settings.max_json_depth
            self._json = parse_body(await self.body(), max_depth=depth)
        return self._json


class JSONRoute(APIRoute):
    """Route class of every API router: endpoints see a ``CheckedRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            return await handler(CheckedRequest(request.scope, request.receive))

        return checked
