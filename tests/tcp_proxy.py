"""A small threaded TCP proxy for outage tests: the real server stays up, the link drops.

::

    with TcpProxy(5432) as proxy:        # 127.0.0.1:<proxy.port> -> 127.0.0.1:5432
        url = proxy.rewrite(postgres_url)
        proxy.pause()                    # every open connection closed, new ones refused
        proxy.resume()                   # connections accepted again

``pause`` looks to a client like the database server going away (its connections reset,
reconnects refused), without touching the shared server other tests use.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    """Forwards a free loopback port to ``target_host:target_port``, one thread pair per
    connection; ``pause``/``resume`` cut and restore the link."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._paused = False
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="tcp-proxy")

    def rewrite(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{self.port}"))

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def pause(self) -> None:
        """Close every open connection (both ends) and refuse new ones until ``resume``."""
        with self._lock:
            self._paused = True
            doomed, self._open = self._open, set()
        for sock in doomed:
            _close(sock)

    def resume(self) -> None:
        """Accept and forward connections again."""
        with self._lock:
            self._paused = False

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._closed = True
        self.pause()
        _close(self._listener)
        self._thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                paused = self._paused
            if paused:
                _close(client)  # refused: the client sees its connection reset at once
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
