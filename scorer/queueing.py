"""Stamp each request with the time it waited for a worker thread, and hand it to the app.

gunicorn's gthread worker queues a connection for its thread pool (`enqueue_req`: a new
connection, a kept-alive one that became readable, a request pipelined behind another) and
keeps no time of it; the request's own start is taken after the queue. This worker stamps the
connection when it is queued, a thread measures the wait when it takes it, and the app finds,
in the request's WSGI environ:

- `scorer.queued_at`: `time.monotonic()` when the request was queued (its arrival, as far
  as this worker can tell);
- `scorer.queue_delay`: the seconds it waited for a thread;
- `scorer.admitted`: True when the worker's main loop judged it on arrival and let it in
  (scorer/admission.py), so that the wait it then has is not held against it.

A new connection whose client has sent nothing yet when a thread takes it was waiting for its
client, not for a thread (connection pools connect ahead of their requests): it gets neither.
A connection waiting in the listen backlog, before a worker accepts it, is not seen either: a
worker with a free thread accepts at once, a busy one after a few milliseconds that grow with
its load, and one already queueing past its threads empties the backlog (scorer/balancing.py).

The main loop also keeps the line itself: `line()` tells how many requests wait for a thread
and how long the first has waited, and `wait_per_place` how long a request lately waited per
request ahead of it, from which scorer/admission.py tells what a request arriving now can
expect to wait.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from scorer.balancing import BalancingThreadWorker

QUEUED_AT = "scorer.queued_at"
QUEUE_DELAY = "scorer.queue_delay"
ADMITTED = "scorer.admitted"
PLACE_WEIGHT = 0.125
"""Weight of the newest request in the moving average of the wait per place in line."""

_now = time.monotonic
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class _Stamp(threading.local):
    """The request a pool thread is serving: when it was queued, how long it waited."""

    queued_at: float | None = None
    delay: float = 0.0
    admitted: bool = False


class _Ticket:
    """One request's place in line: when it was queued, and whether a thread has taken it."""

    __slots__ = ("ahead", "queued_at", "taken")

    def __init__(self, queued_at: float, ahead: int) -> None:
        self.queued_at = queued_at
        self.ahead = ahead  # requests in line before it when it was queued
        self.taken = False  # set by the pool thread; read by the main loop


class QueueTimedThreadWorker(BalancingThreadWorker):
    """gthread that tells the app how long each request waited for a thread."""

    wsgi: Callable[..., Iterable[bytes]]  # set by gunicorn's load_wsgi

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stamp = _Stamp()
        # Requests handed to the pool in order, the taken ones dropped lazily; main thread only.
        self._line: deque[_Ticket] = deque()
        # How long a request waits, lately, per request ahead of it in line: what the threads
        # take to get through one, everything included (the interpreter's hand-offs too).
        self.wait_per_place = 0.0

    def enqueue_req(self, conn: Any) -> None:
        now = _now()
        conn.scorer_queued_at = now
        self._trim_line()
        ticket = conn.scorer_ticket = _Ticket(now, len(self._line))
        self._line.append(ticket)
        super().enqueue_req(conn)

    def line(self) -> tuple[int, float]:
        """Return how many requests wait for a thread, and how long the first has waited.

        Main thread only. The pool takes requests in the order they were queued, so a request
        queued now waits at least until those ahead of it are taken.
        """
        self._trim_line()
        line = self._line
        return (len(line), _now() - line[0].queued_at) if line else (0, 0.0)

    def _trim_line(self) -> None:
        line = self._line
        while line and line[0].taken:
            line.popleft()

    def handle(self, conn: Any) -> Any:
        taken = _now()
        ticket = getattr(conn, "scorer_ticket", None)
        if ticket is not None:
            ticket.taken = True
        stamp = self._stamp
        queued_at = getattr(conn, "scorer_queued_at", None)
        if queued_at is None or (
            not conn.initialized and not conn.data_ready and not _has_bytes(conn.sock)
        ):
            stamp.queued_at = None
            return super().handle(conn)
        stamp.queued_at = queued_at
        stamp.delay = taken - queued_at
        stamp.admitted = getattr(conn, "scorer_admitted", False)
        if ticket is not None and ticket.ahead:  # a line: every thread was busy
            per_place = stamp.delay / ticket.ahead
            self.wait_per_place += (per_place - self.wait_per_place) * PLACE_WEIGHT
        return super().handle(conn)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = stamped(self.wsgi, self._stamp)


def stamped(app: Callable[..., Iterable[bytes]], stamp: _Stamp) -> Callable[..., Iterable[bytes]]:
    """Wrap the WSGI app so each request's environ carries its thread's stamp, once."""

    def with_stamp(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        queued_at = stamp.queued_at
        if queued_at is not None:
            stamp.queued_at = None  # HTTP/2: the streams after the first were not queued
            environ[QUEUED_AT] = queued_at
            environ[QUEUE_DELAY] = stamp.delay
            if stamp.admitted:
                environ[ADMITTED] = True
        return app(environ, start_response)

    return with_stamp


def take(sock: socket.socket, size: int, flags: int = socket.MSG_DONTWAIT) -> bytes | None:
    """Return up to `size` bytes waiting on `sock`, taking them off, without waiting.

    None while the client has sent nothing yet; b"" once it has closed (or reset) the
    connection. The plain socket's recv, whatever class wraps the connection.
    """
    try:
        return socket.socket.recv(sock, size, flags)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def peek(sock: socket.socket, size: int) -> bytes | None:
    """As `take`, leaving the bytes on the socket."""
    return take(sock, size, _PEEK)


def _has_bytes(sock: socket.socket) -> bool:
    """Tell whether the client has sent anything yet (or closed), without waiting."""
    return peek(sock, 1) is not None
