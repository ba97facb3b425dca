"""A graceful stop that refuses new connections, and retiring a worker around a stuck request.

Stock gthread stops polling its listening sockets on SIGTERM but keeps them open until it exits,
so the kernel goes on completing handshakes into the backlog during the drain, and those clients
get a reset at exit. The worker closes its copies at once instead (`close_listeners`): clients
fail fast with "refused" (or reach a worker still serving), while requests already accepted are
answered.

A request stuck in the model holds its thread and its connection for good, so gunicorn's own
drain (which waits for every open connection, up to `graceful_timeout`) would wait the whole
bound for it, and the interpreter could not exit after it (it joins the pool's threads). The
watchdog answers such a request itself and the worker retires: the connection is `abandon`ed,
so the drain counts it as gone, ends once every other connection has ended, and the process
leaves without the join (`exit_if_stuck`).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)


class Drain:
    """The connections one worker gave up as stuck. Main thread only."""

    def __init__(self) -> None:
        self._abandoned: set[socket.socket] = set()

    def abandon(self, sock: socket.socket | None) -> bool:
        """Give up the connection on `sock` (answered already); tell whether it is newly so."""
        if sock is None or sock in self._abandoned:
            return False
        self._abandoned.add(sock)
        return True

    def reclaim(self, sock: Any) -> bool:
        """Tell whether a finished connection was abandoned (counted off already): forget it."""
        if sock in self._abandoned:
            self._abandoned.discard(sock)
            return True
        return False

    def exit_if_stuck(self) -> None:
        """Leave the process now if a stuck request's thread would block the interpreter's exit."""
        if self._abandoned:
            logger.error(
                "worker %s exits with %d stuck request(s), after its other connections ended",
                os.getpid(),
                len(self._abandoned),
            )
            logging.shutdown()
            os._exit(1)


def close_listeners(listeners: Iterable[Any]) -> None:
    """Close this worker's copies of the listening sockets: new clients are refused at once."""
    for listener in listeners:
        listener.close()
