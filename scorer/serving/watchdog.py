"""Answer a request stuck past TIMEOUT, then retire its worker so the master replaces it.

gunicorn's own timeout does not see a stuck request under gthread: the worker's main loop keeps
reporting alive while one pool thread is lost inside a model's `predict`. Python cannot stop
that thread, so the watchdog answers its client with a 504 on the raw socket, counts it, and
has the worker retire: `ScorerWorker.retire` stops accepting, finishes every other
connection it accepted (gunicorn's graceful stop, bounded by `graceful_timeout`), then exits.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scorer.errors import detail_json
from scorer.metrics import Metrics

logger = logging.getLogger(__name__)

Retire = Callable[[socket.socket | None], None]
"""Retire this worker, without waiting for the stuck request on the given socket."""


@dataclass(slots=True)
class _InFlight:
    started: float
    thread: int
    sock: socket.socket | None
    endpoint: str
    timed: bool
    answered: bool = field(default=False)


def answer_timeout(sock: socket.socket, timeout: float) -> None:
    """Write a complete 504 JSON response on the client's socket and close it."""
    body = detail_json(f"Model prediction timed out after {timeout:g} s")
    head = (
        "HTTP/1.1 504 Gateway Timeout\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    try:
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:  # the client may be gone already
        logger.info("could not answer a timed-out request: %s", exc)


def terminate_self(sock: socket.socket | None) -> None:
    """Retire by gunicorn's plain graceful stop, for a worker class without `retire`.

    Its drain waits for the stuck connection until `graceful_timeout`, and the master's
    timeout then ends the process, which cannot exit with the stuck thread on its own.
    """
    os.kill(os.getpid(), signal.SIGTERM)


class Watchdog:
    """Track requests in flight in this worker and deal with the ones that never end."""

    def __init__(
        self,
        timeout: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        retire: Retire = terminate_self,
    ) -> None:
        self.timeout = timeout
        self._metrics = metrics
        self._clock = clock
        self._retire = retire
        self._lock = threading.Lock()
        self._inflight: dict[int, _InFlight] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def begin(self, environ: dict[str, Any], endpoint: str, *, timed: bool = False) -> int:
        """Record a request starting; return the token to pass to `end`.

        `endpoint` labels its 504 in `scorer_requests_total`; a `timed` one is also observed in
        `scorer_request_duration_seconds`.
        """
        sock = environ.get("gunicorn.socket")
        entry = _InFlight(self._clock(), threading.get_ident(), sock, endpoint, timed)
        with self._lock:
            token = next(self._tokens)
            self._inflight[token] = entry
        return token

    def end(self, token: int) -> bool:
        """Record a request finishing; tell whether the watchdog answered (and counted) it."""
        with self._lock:
            entry = self._inflight.pop(token, None)
        return entry is not None and entry.answered

    def start(self, retire: Retire | None = None) -> None:
        """Start watching, in a daemon thread of this process (call after fork).

        `retire` is how this worker retires (default: SIGTERM to itself).
        """
        if retire is not None:
            self._retire = retire
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        interval = min(0.5, self.timeout / 4)
        while True:
            time.sleep(interval)
            self.check()

    def check(self) -> None:
        """Answer and count newly stuck requests, and have the worker retire around them."""
        now = self._clock()
        with self._lock:
            stuck = [
                entry
                for entry in self._inflight.values()
                if not entry.answered and now - entry.started > self.timeout
            ]
            for entry in stuck:
                entry.answered = True
                # Still under the lock: the request cannot end (nor gunicorn send its own
                # response) before this 504 is written and counted, and the worker hears of the
                # connection before the connection can finish (ScorerWorker.retire).
                if entry.sock is not None:
                    answer_timeout(entry.sock, self.timeout)
                self._metrics.requests.labels(entry.endpoint, "504").inc()
                if entry.timed:
                    self._metrics.request_duration.observe(now - entry.started)
                self._retire(entry.sock)
        for entry in stuck:
            frame = sys._current_frames().get(entry.thread)
            where = "".join(traceback.format_stack(frame)) if frame is not None else "unknown"
            logger.error(
                "request stuck for %.1f s, answered 504; retiring this worker; stack:\n%s",
                now - entry.started,
                where,
            )
