"""A loopback TCP proxy that a test pauses to make a database outage without touching the
database: ``pause()`` resets every open connection and resets new ones at once (what a
client sees when the server or the network goes away); ``blackhole()`` accepts new
connections and never answers (a hung server, a partition that keeps the handshake);
``resume()`` lets them through again. Threads, not asyncio, so it runs beside anything."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType
from typing import Literal


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer learns at once. ``shutdown`` first, because
    ``close`` alone does not wake a ``recv`` blocked in another thread (the socket would
    live on, and the peer would wait on it forever)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """``127.0.0.1:<port>`` -> ``host:target_port``."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self._target = (host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._mode: Literal["forward", "refuse", "blackhole"] = "forward"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, database_url: str) -> str:
        """``database_url`` with its ``host:port`` replaced by the proxy's."""
        scheme, rest = database_url.split("://", 1)
        credentials, _, location = rest.rpartition("@")
        path = location.split("/", 1)[1]
        at = f"{credentials}@" if credentials else ""
        return f"{scheme}://{at}127.0.0.1:{self.port}/{path}"

    def pause(self) -> None:
        """The database is gone: cut every connection, refuse new ones."""
        self._switch("refuse")

    def blackhole(self) -> None:
        """The database hangs: cut every connection, accept new ones and never answer."""
        self._switch("blackhole")

    def resume(self) -> None:
        self._switch("forward", cut=False)

    def _switch(self, mode: Literal["forward", "refuse", "blackhole"], cut: bool = True) -> None:
        with self._lock:
            self._mode = mode
            sockets, self._open = (self._open, set()) if cut else (set(), self._open)
        for sock in sockets:
            _reset(sock)

    def close(self) -> None:
        self._closed = True
        self.pause()
        self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self._mode
                if mode == "blackhole":
                    self._open.add(client)
            if mode == "refuse":
                _reset(client)
            if mode != "forward":
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with self._lock:
                self._open.discard(sock)
            _reset(sock)
