"""Leave a new connection to a less busy worker for a moment.

All workers poll one listening socket, and whichever wakes first accepts: with a few kept-alive
connections (a client's pool, wrk's eight) one worker can end up holding most of them while
another idles, and every request on them then waits for that worker's threads. Here a worker
with half its threads or more busy, seeing a connection arrive, steps aside: it takes its
listener out of its poller for `ACCEPT_DEFER_SECONDS` per request it has in progress past that
half, and a less busy worker takes the connection meanwhile. If none has when the time is up,
the connection is still there and this worker takes it (of two busy workers, the less busy one
first). The wait stops growing once every thread is busy (6 ms with 4 threads), and a worker
that has waited takes every connection then waiting at once: it is queueing anyway, and a
connection in the kernel's backlog is one whose wait nobody can see.

Nothing is asked of the kernel while no connection arrives: the balance costs the requests on
kept-alive connections nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

ACCEPT_DEFER_SECONDS = 0.002
"""How long a busy worker leaves an arriving connection to the others, per request it has in
progress past half its threads."""


class Balancer:
    """One worker's choice, for each arriving connection, to take it now or step aside first."""

    def __init__(self, threads: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.threads = threads
        # Up to half its threads busy, a worker takes new connections at once (with all of a
        # worker's threads, 8 connections over 4 workers went 4, 4, 0, 0).
        self.share = max(1, threads // 2)
        self._clock = clock
        self._until: float | None = None  # stepping aside until then

    def should_defer(self, active: int) -> bool:
        """Tell whether to leave the connection now waiting to the others, `active` in progress.

        True starts (or continues) stepping aside: take the listener out of the poller until
        `may_accept` says otherwise.
        """
        if active < self.share:
            self._until = None
            return False
        now = self._clock()
        until = self._until
        if until is None or now - until > ACCEPT_DEFER_SECONDS * self.threads:
            # A new arrival (a deferral long past is history): step aside for it.
            # Past all its threads it is as busy as it gets: the wait stops growing there.
            busier = min(active, self.threads) - self.share + 1
            self._until = now + ACCEPT_DEFER_SECONDS * busier
            return True
        if now < until:
            return True
        if active < self.threads:
            self._until = None  # take this one; the next one waits its turn again
        return False

    def may_accept(self) -> bool:
        """Tell whether the listener may go back into the poller (no deferral running)."""
        until = self._until
        return until is None or self._clock() >= until

    def poll_timeout(self, timeout: float) -> float:
        """Shorten the main loop's poll so it wakes when a deferral ends."""
        until = self._until
        if until is None:
            return timeout
        left = until - self._clock()
        return min(timeout, left) if left > 0 else timeout
