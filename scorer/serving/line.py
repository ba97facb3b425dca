"""The line for a worker's threads: when each request joined it, how long it waited, its pace.

gunicorn's gthread worker queues a connection for its thread pool and keeps no time of it; the
request's own start is taken after the queue. The worker has each request `join` the line when
it is queued and be `taken` when a pool thread picks it up; the app then finds, in the WSGI
environ:

- `scorer.queued_at`: `time.monotonic()` when the request was queued (its arrival, as far as
  the worker can tell);
- `scorer.queue_delay`: the seconds it waited for a thread;
- `scorer.admitted`: when the worker judged it on arrival and let it in
  (`scorer.serving.admission`), the wait it was let in with (seconds): a wait up to about that
  is not held against it.

A new connection whose client has sent nothing yet when a thread takes it was waiting for its
client, not for a thread (connection pools connect ahead of their requests): it gets neither.

The line also tells what a request arriving now can expect to wait (`expected_wait`): at least
what the first in line has waited and, when no thread is free, the recent wait per place in line
times the places ahead of it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

QUEUED_AT = "scorer.queued_at"
QUEUE_DELAY = "scorer.queue_delay"
ADMITTED = "scorer.admitted"
PLACE_WEIGHT = 0.125
"""Weight of the newest request in the moving average of the wait per place in line."""

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Ticket:
    """One request's place in line: when it joined, how many were ahead, whether it was taken."""

    __slots__ = ("admitted", "ahead", "queued_at", "taken")

    def __init__(self, queued_at: float, ahead: int) -> None:
        self.queued_at = queued_at
        self.ahead = ahead
        self.taken = False  # set by the pool thread; read by the main loop
        self.admitted: float | None = None  # let in on arrival expecting this wait


class _Current(threading.local):
    """The request a pool thread is serving, for the WSGI wrapper to put in its environ."""

    queued_at: float | None = None
    delay: float = 0.0
    admitted: float | None = None


class Line:
    """The requests handed to a worker's thread pool, in order. Main-thread methods but `taken`."""

    def __init__(self, threads: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.threads = threads
        self._clock = clock
        self._tickets: deque[Ticket] = deque()  # the taken ones dropped lazily
        self._current = _Current()
        #: Requests handed to the pool and not finished yet.
        self.active = 0
        #: How long a request waits, lately, per request ahead of it: what the threads take to
        #: get through one, everything included (the interpreter's hand-offs too).
        self.wait_per_place = 0.0

    def join(self) -> Ticket:
        """Put a request in line (it is being handed to the pool); return its ticket."""
        self._trim()
        ticket = Ticket(self._clock(), len(self._tickets))
        self._tickets.append(ticket)
        self.active += 1
        return ticket

    def finished(self) -> None:
        """Count off a request the pool is done with."""
        self.active -= 1

    def expected_wait(self) -> tuple[int, float]:
        """Return how many requests wait for a thread, and how long one joining now would."""
        self._trim()
        tickets = self._tickets
        first = self._clock() - tickets[0].queued_at if tickets else 0.0
        places = self.active + 1 - self.threads
        if places <= 0:
            self.wait_per_place = 0.0  # a thread is free: the last line's pace is history
            return len(tickets), first
        return len(tickets), max(first, places * self.wait_per_place)

    def taken(self, ticket: Ticket | None, waited_for_client: bool) -> None:
        """Record in this pool thread that it took `ticket`'s request. Any thread.

        `waited_for_client`: the client had sent nothing when it was taken (see the module).
        """
        now = self._clock()
        current = self._current
        if ticket is None:
            current.queued_at = None
            return
        ticket.taken = True
        if waited_for_client:
            current.queued_at = None
            return
        current.queued_at = ticket.queued_at
        current.delay = delay = now - ticket.queued_at
        current.admitted = ticket.admitted
        if ticket.ahead:  # a line: every thread was busy
            self.wait_per_place += (delay / ticket.ahead - self.wait_per_place) * PLACE_WEIGHT

    def stamped(self, app: WSGIApp) -> WSGIApp:
        """Wrap the WSGI app so each request's environ carries its wait, once."""
        current = self._current

        def with_wait(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            queued_at = current.queued_at
            if queued_at is not None:
                current.queued_at = None  # HTTP/2: the streams after the first were not queued
                environ[QUEUED_AT] = queued_at
                environ[QUEUE_DELAY] = current.delay
                if current.admitted is not None:
                    environ[ADMITTED] = current.admitted
            return app(environ, start_response)

        return with_wait

    def _trim(self) -> None:
        tickets = self._tickets
        while tickets and tickets[0].taken:
            tickets.popleft()


def server_timing(queue_delay: float | None, app: float) -> str:
    """Return the Server-Timing value: the wait for a thread (when known) and the app's time."""
    if queue_delay is None:
        return f"app;dur={app * 1000:.2f}"
    return f"queue;dur={queue_delay * 1000:.2f}, app;dur={app * 1000:.2f}"
