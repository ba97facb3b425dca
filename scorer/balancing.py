"""A gthread worker that leaves a new connection to a less busy worker.

All workers poll one listening socket, and whichever wakes first accepts: with a few kept-alive
connections (a client's pool, wrk's eight) one worker can end up holding most of them while
another idles, and every request on them then waits for that worker's threads. Here a worker
with half its threads or more busy stops accepting for a moment: a less busy worker takes the
connection. If none does within `ACCEPT_DEFER_SECONDS` per request it has past that, a busy worker
takes it after all (the less busy first), one at a time while it has threads to spare, and all
that waits once it is queueing anyway: a connection never waits for long in the kernel's
backlog, where its queueing delay cannot be seen (nor its request shed, see
scorer/shedding.py).
"""

from __future__ import annotations

import select
import time
from typing import Any

from scorer.deadlines import DeadlineThreadWorker

ACCEPT_DEFER_SECONDS = 0.002
"""How long a busy worker leaves a waiting connection to the others, per request it has in
progress past half its threads."""


class BalancingThreadWorker(DeadlineThreadWorker):
    """gthread, accepting new connections at once only while half its threads are free."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connections handed to the thread pool and not finished; main thread only.
        self.active = 0
        self._waiting_since: float | None = None
        self._deferring = False
        # Up to half its threads busy, a worker takes new connections at once; past that it
        # leaves them to the others first, so a burst of connections is spread over every
        # worker (with all of a worker's threads, 8 connections over 4 workers went 4, 4, 0, 0).
        self._share = max(1, self.cfg.threads // 2)

    def enqueue_req(self, conn: Any) -> None:
        self.active += 1
        super().enqueue_req(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        self.active -= 1
        super().finish_request(conn, fs)

    def accept(self, listener: Any) -> None:
        super().accept(listener)
        if self.active <= self.cfg.threads:
            # Wait again before the next one: the busy workers take turns. A worker already
            # queueing past its threads keeps accepting instead, until the backlog is empty.
            self._waiting_since = None

    def set_accept_enabled(self, enabled: bool) -> None:
        # gunicorn's loop asks for accepting on every iteration while it has room for
        # connections; the answer depends on the threads as well.
        super().set_accept_enabled(enabled and self._may_accept())

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # gunicorn's loop turns accepting off only when the worker is full of connections:
        # turn it off here as soon as the threads are all busy.
        if self._accepting and not self._may_accept():
            super().set_accept_enabled(False)
        # While deferring, wake soon to look again: the listener is not in the poller.
        super().wait_for_and_dispatch_events(
            min(timeout, ACCEPT_DEFER_SECONDS) if self._deferring else timeout
        )

    def _may_accept(self) -> bool:
        self._deferring = False
        if self.active < self._share:
            self._waiting_since = None
            return True
        if not self.alive or not _readable(self.sockets):
            self._waiting_since = None
            self._deferring = self.alive
            return False
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        # The busier the worker, the longer it leaves the connection to the others: of two
        # busy workers waiting for the same connection, the less busy one takes it.
        if now - self._waiting_since >= ACCEPT_DEFER_SECONDS * (self.active - self._share + 1):
            return True  # no less busy worker took it: take it, and queue it here
        self._deferring = True
        return False


def _readable(sockets: list[Any]) -> bool:
    """Tell whether a connection waits on any of the listeners (without accepting it)."""
    try:
        ready, _, _ = select.select(sockets, [], [], 0)
    except (OSError, ValueError):  # a listener closed by a stop in progress
        return False
    return bool(ready)
