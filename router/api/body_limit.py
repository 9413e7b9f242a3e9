"""Refuse request bodies over ``max_body_bytes`` with 413, before anything parses them."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.errors import PayloadTooLarge


class BodyLimit:
    """Wraps ``receive``: the raise lands inside FastAPI's body reading, so the app's error
    handler answers 413 (and logs the refused chat request like any other).
    Pure ASGI, so it costs next to nothing on the hot path."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        received = 0
        limit = self.max_bytes

        async def limited() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(
                    f"The request body is {int(declared)} bytes; this router accepts at most "
                    f"{limit}."
                )
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))  # chunked bodies declare no length
                if received > limit:
                    raise PayloadTooLarge(
                        f"The request body is over {limit} bytes, the most this router accepts."
                    )
            return message

        await self.app(scope, limited, send)
