"""A gthread worker that refuses new connections once stopping, and can retire around a stuck one.

Stock gthread stops polling its listening sockets on SIGTERM but keeps them open until it exits,
so the kernel goes on completing handshakes into the backlog during the drain, and those clients
get a reset at exit. Closing this worker's copies at once makes them fail fast with "refused"
(or reach a worker still serving), while requests already accepted are answered.

A request stuck in the model holds its thread and its connection for good, so gunicorn's own
drain (which waits for every open connection, up to `graceful_timeout`) would wait the whole
bound for it, and the interpreter could not exit after it (it joins the pool's threads). The
watchdog answers such a request itself and hands its socket to `retire`: the drain then counts
it as gone, ends once every other connection has ended, and the process exits without the join.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

from scorer.admission import AdmittingThreadWorker


class DrainingThreadWorker(AdmittingThreadWorker):
    """gthread, closing its listeners when the graceful stop begins."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Sockets of connections given up as stuck; touched on the main thread only.
        self._abandoned: set[socket.socket] = set()

    def retire(self, sock: socket.socket | None) -> None:
        """Stop gracefully without waiting for the connection on `sock`, answered already.

        Thread-safe: called by the watchdog thread, it runs on the main loop. The caller must
        call it before the stuck request can end, so that it precedes the connection's own
        completion in the loop's queue and the connection is counted off exactly once.
        """
        self.method_queue.defer(self._abandon, sock)

    def _abandon(self, sock: socket.socket | None) -> None:
        if sock is not None and sock not in self._abandoned:
            self._abandoned.add(sock)
            self.nr_conns -= 1  # gunicorn's drain waits while this is above zero
        self.handle_exit(signal.SIGTERM, None)

    def finish_request(self, conn: Any, fs: Any) -> None:
        if conn.sock in self._abandoned:  # the stuck request ended after all: already counted
            self._abandoned.discard(conn.sock)
            conn.close()
            return
        super().finish_request(conn, fs)

    def run(self) -> None:
        super().run()
        if self._abandoned:
            # The interpreter's exit would join the stuck thread forever: leave without it.
            self.log.error(
                "worker %s exits with %d stuck request(s), after its other connections ended",
                os.getpid(),
                len(self._abandoned),
            )
            logging.shutdown()
            os._exit(1)

    def handle_exit(self, sig: int, frame: Any) -> None:
        was_alive = self.alive
        super().handle_exit(sig, frame)
        if was_alive:
            self.set_accept_enabled(False)
            for listener in self.sockets:
                listener.close()

    def accept(self, listener: Any) -> None:
        # The poller may report a listener that the stop has closed since: nothing to accept.
        if not self.alive:
            return
        super().accept(listener)

    def set_accept_enabled(self, enabled: bool) -> None:
        # The run loop may try to re-enable accepting in the iteration the signal interrupted.
        if enabled and not self.alive:
            return
        super().set_accept_enabled(enabled)
