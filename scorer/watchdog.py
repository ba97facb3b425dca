"""Answer a request stuck past TIMEOUT, then retire its worker so the master replaces it.

gunicorn's own timeout does not see a stuck request under gthread: the worker's main loop keeps
reporting alive while one pool thread is lost inside a model's `predict`. Python cannot stop
that thread, so the watchdog answers its client with a 504 on the raw socket, lets the worker's
other requests finish (SIGTERM: gunicorn's graceful stop), and then ends the process.
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

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _InFlight:
    started: float
    thread: int
    sock: socket.socket | None
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


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class Watchdog:
    """Track requests in flight in this worker and deal with the ones that never end."""

    def __init__(
        self,
        timeout: float,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
        terminate: Callable[[], None] = _terminate_self,
        exit_process: Callable[[int], Any] = os._exit,
    ) -> None:
        self.timeout = timeout
        self._grace = grace
        self._clock = clock
        self._terminate = terminate
        self._exit = exit_process
        self._lock = threading.Lock()
        self._inflight: dict[int, _InFlight] = {}
        self._tokens = itertools.count()
        self._retire_by: float | None = None
        self._thread: threading.Thread | None = None

    def begin(self, environ: dict[str, Any]) -> int:
        """Record a request starting; return the token to pass to `end`."""
        entry = _InFlight(self._clock(), threading.get_ident(), environ.get("gunicorn.socket"))
        with self._lock:
            token = next(self._tokens)
            self._inflight[token] = entry
        return token

    def end(self, token: int) -> None:
        """Record a request finishing."""
        with self._lock:
            self._inflight.pop(token, None)

    def start(self) -> None:
        """Start watching, in a daemon thread of this process (call after fork)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        interval = min(0.5, self.timeout / 4)
        while True:
            time.sleep(interval)
            self.check()

    def check(self) -> None:
        """Answer newly stuck requests; exit once only stuck ones are left or grace ran out."""
        now = self._clock()
        with self._lock:
            stuck = [
                entry
                for entry in self._inflight.values()
                if not entry.answered and now - entry.started > self.timeout
            ]
            for entry in stuck:
                entry.answered = True
                # Still under the lock: the request cannot end (and gunicorn cannot send its own
                # response) until this 504 is written and the socket shut.
                if entry.sock is not None:
                    answer_timeout(entry.sock, self.timeout)
            others = sum(1 for entry in self._inflight.values() if not entry.answered)
        for entry in stuck:
            frame = sys._current_frames().get(entry.thread)
            where = "".join(traceback.format_stack(frame)) if frame is not None else "unknown"
            logger.error(
                "request stuck for %.1f s, answered 504; retiring this worker; stack:\n%s",
                now - entry.started,
                where,
            )
        if stuck and self._retire_by is None:
            self._retire_by = now + self._grace
            self._terminate()  # gunicorn stops accepting and lets the others finish
        if self._retire_by is not None and (others == 0 or now >= self._retire_by):
            logger.error("worker %d exits: a stuck request cannot be stopped", os.getpid())
            logging.shutdown()
            self._exit(1)
