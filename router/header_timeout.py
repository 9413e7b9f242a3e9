"""uvicorn's HTTP protocols with a deadline on request headers.

uvicorn bounds idle keep-alive connections but not a request whose headers never finish,
so a client sending a header line every few seconds (slow loris) holds a connection
forever. Here a clock starts when a connection opens and when a request's first byte
arrives, stops when its headers are complete, and at ``timeout_s`` answers 408 (when
nothing else is being written on the connection) and closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class HeaderDeadline:
    """How long headers may take, and who hears about each connection closed for it."""

    timeout_s: float
    on_timeout: Callable[[], None] = lambda: None


_BODY = orjson.dumps(
    {
        "error": {
            "message": "The request headers did not arrive in time.",
            "type": "invalid_request_error",
            "code": "request_timeout",
        }
    }
)
_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


class _HeaderClock:
    """One connection's header clock."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, deadline: HeaderDeadline, expire: Callable[[], None]
    ) -> None:
        self._loop, self._deadline, self._expire = loop, deadline, expire
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start unless running: a slow loris's dripping bytes must not restart it."""
        if self._timer is None:
            self._timer = self._loop.call_later(self._deadline.timeout_s, self._fire)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._deadline.on_timeout()
        self._expire()


def _close(protocol: HttpToolsProtocol | H11Protocol) -> None:
    transport = protocol.transport
    if transport.is_closing():
        return
    if protocol.cycle is None or protocol.cycle.response_complete:
        transport.write(_408)  # no response in progress: the client may learn why
    transport.close()


class _HeaderTimeout:
    """Mixin for a uvicorn protocol: the clock runs from the connection's start until the
    subclass says its first request's headers are complete."""

    deadline: ClassVar[HeaderDeadline] = HeaderDeadline(10.0)
    _header_clock: _HeaderClock

    def connection_made(self, transport: Any) -> None:
        protocol: Any = self
        self._header_clock = _HeaderClock(protocol.loop, self.deadline, lambda: _close(protocol))
        self._header_clock.start()
        super().connection_made(transport)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_clock.stop()
        super().connection_lost(exc)  # type: ignore[misc]


class HttpToolsHeaderTimeout(_HeaderTimeout, HttpToolsProtocol):
    """uvicorn's httptools protocol (``uvicorn[standard]``) with the header deadline."""

    def on_message_begin(self) -> None:
        self._header_clock.start()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._header_clock.stop()
        super().on_headers_complete()


class H11HeaderTimeout(_HeaderTimeout, H11Protocol):
    """uvicorn's pure-Python h11 protocol with the header deadline."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # h11 reports a request once its headers are complete; until then it stays IDLE.
        if self.conn.their_state is h11.IDLE:
            self._header_clock.start()
        else:
            self._header_clock.stop()


def protocol_class(deadline: HeaderDeadline, *, http: str = "auto") -> type[Any]:
    """The protocol class for uvicorn's ``Config(http=...)``: httptools when installed
    (``auto``, as uvicorn picks) or with ``http="httptools"``, else h11."""
    base: type[HttpToolsHeaderTimeout] | type[H11HeaderTimeout]
    if http == "h11":
        base = H11HeaderTimeout
    else:
        try:
            import httptools  # noqa: F401
        except ImportError:
            if http == "httptools":
                raise
            base = H11HeaderTimeout
        else:
            base = HttpToolsHeaderTimeout
    return type(base.__name__, (base,), {"deadline": deadline})
