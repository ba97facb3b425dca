"""Deadlines for receiving a request: its head, then its body, each whole within a bound.

A socket timeout bounds one read: a client sending a byte just inside it, again and again, holds
a worker thread for as long as it likes. Here each phase gets a deadline instead, and every read
in it waits at most for the time left. The worker arms the head's deadline before gunicorn
parses a request and ends it when the head is in; `scorer.http.fastpath` sets the body's.
A connection gunicorn wraps in TLS leaves this socket behind: its reads keep a per-read bound
at most (the service expects TLS to end in front of it).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from scorer.errors import detail_json

_UNCHANGED = object()


class DeadlineExpired(Exception):
    """A phase of the request was not received by its deadline.

    Not an OSError on purpose: gunicorn logs those with a traceback, and hands this one to the
    worker's `handle_error`, which answers 408.
    """


class DeadlineSocket(socket.socket):
    """A client connection whose reads can be held to a deadline for a whole phase."""

    __slots__ = ("_budget", "_deadline", "_saved_timeout")

    @classmethod
    def adopt(cls, sock: socket.socket) -> DeadlineSocket:
        """Return `sock`'s connection as a DeadlineSocket (`sock` itself is detached)."""
        timeout = sock.gettimeout()
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        adopted.settimeout(timeout)
        return adopted

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._budget: float | None = None
        self._deadline: float | None = None
        self._saved_timeout: Any = _UNCHANGED

    def start_phase(self, seconds: float, *, from_first_read: bool = False) -> None:
        """Give every read from now on, together, `seconds` to complete.

        With `from_first_read`, the clock starts at the next read instead: a worker thread
        takes a connection before its client has sent anything, and idle time is not the
        client being slow.
        """
        if from_first_read:
            self._budget, self._deadline = seconds, None
        else:
            self._budget, self._deadline = None, _now() + seconds

    def end_phase(self) -> None:
        """Drop the deadline and give the socket back the timeout it had before."""
        self._budget = self._deadline = None
        if self._saved_timeout is not _UNCHANGED:
            _settimeout(self, self._saved_timeout)
            self._saved_timeout = _UNCHANGED

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        deadline = self._deadline
        if deadline is None:
            if self._budget is None:
                return _recv(self, bufsize, flags)
            deadline = self._deadline = _now() + self._budget
            self._budget = None
        if self._saved_timeout is _UNCHANGED:
            timeout = _gettimeout(self)
            if timeout is None:
                # Blocking, as gthread leaves it: take what has arrived without a wait, so a
                # request already in the kernel's buffer costs no timeout switch.
                try:
                    return _recv(self, bufsize, flags | _DONTWAIT)
                except BlockingIOError:
                    pass
            self._saved_timeout = timeout
        remaining = deadline - _now()
        if remaining <= 0:
            raise DeadlineExpired
        _settimeout(self, remaining)
        try:
            return _recv(self, bufsize, flags)
        except TimeoutError:
            raise DeadlineExpired from None


# The plain socket's methods, called directly: recv() runs for every read of every request.
_recv = socket.socket.recv
_gettimeout = socket.socket.gettimeout
_settimeout = socket.socket.settimeout
_now = time.monotonic
_DONTWAIT = socket.MSG_DONTWAIT


def arm_head(conn: Any, seconds: float) -> None:
    """Give conn's request head `seconds` from its first byte; a plain socket is adopted first."""
    sock = conn.sock
    if type(sock) is socket.socket:  # a plain TCP connection, new to a thread
        sock = conn.sock = DeadlineSocket.adopt(sock)
    if isinstance(sock, DeadlineSocket):
        sock.start_phase(seconds, from_first_read=True)


def end_phase(sock: Any) -> None:
    """End the phase running on `sock`, if it is a DeadlineSocket."""
    if isinstance(sock, DeadlineSocket):
        sock.end_phase()


def head_timeout_response(seconds: float) -> bytes:
    """Return the 408 for a head not received in time, closing the connection."""
    body = detail_json(f"request head not received within {seconds:g} s")
    head = (
        "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body
