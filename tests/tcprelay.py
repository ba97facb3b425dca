"""A TCP relay in front of the emulator that a test can make unreachable and bring back.

Bytes pass through untouched (S3's ETag and version headers included), unlike the HTTP fault
proxy, which rewrites answers. `refuse()` stops listening and cuts open connections; `listen()`
takes the same port again.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpRelay:
    """Forward connections on 127.0.0.1:`port` to 127.0.0.1:`upstream_port`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def listen(self) -> None:
        """Accept connections (again, on the same port)."""
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        """Stop listening and cut every open connection: the endpoint is unreachable."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections, self._open = self._open, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    close = refuse

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # refused: the listener is closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            done = threading.Barrier(2, action=lambda c=client, u=upstream: self._drop(c, u))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, target, done), daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, done: threading.Barrier) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)  # pass the end of this direction on
        with contextlib.suppress(threading.BrokenBarrierError):
            done.wait()  # the second direction to end closes both sockets

    def _drop(self, *connections: socket.socket) -> None:
        with self._lock:
            self._open.difference_update(connections)
        for connection in connections:
            connection.close()
