"""Guards on reading a request body, before anything parses it: size, time, abandonment.

Pure ASGI (it wraps ``receive``), so it costs next to nothing on the hot path. Its
errors are raised inside FastAPI's body reading, so the app's handlers answer them in
OpenAI's shape and the chat path logs the refused request like any other.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.errors import ClientDisconnected, PayloadTooLarge, RequestTimeout


class BodyGuard:
    """Until the body's last chunk has arrived, ``receive`` raises:

    - ``PayloadTooLarge`` (413) past ``max_bytes`` (declared or counted: chunked bodies
      declare no length);
    - ``RequestTimeout`` (408) when the body is not all there ``timeout_s`` after the
      request started (a slow or stalled client must not hold a worker forever);
    - ``ClientDisconnected`` (499) when the client goes away half-way.

    After the body, messages pass through untouched: a streaming response listens for
    ``http.disconnect`` itself.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        limit, timeout_s = self.max_bytes, self.timeout_s
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout_s
        received = 0
        complete = False

        async def guarded() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            if declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(
                    f"The request body is {int(declared)} bytes; this router accepts at most "
                    f"{limit}."
                )
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"The request body did not arrive within {timeout_s:g} s "
                    f"({received} bytes in {loop.time() - started:.1f} s)."
                ) from None
            if message["type"] == "http.disconnect":
                raise ClientDisconnected(
                    f"The client went away after {received} bytes of the request body."
                )
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(
                        f"The request body is over {limit} bytes, the most this router accepts."
                    )
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, guarded, send)
