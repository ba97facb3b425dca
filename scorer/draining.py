"""A gthread worker that refuses new connections as soon as it is told to stop.

Stock gthread stops polling its listening sockets on SIGTERM but keeps them open until it exits,
so the kernel goes on completing handshakes into the backlog during the drain, and those clients
get a reset at exit. Closing this worker's copies at once makes them fail fast with "refused"
(or reach a worker still serving), while requests already accepted are answered.
"""

from __future__ import annotations

from typing import Any

from scorer.deadlines import DeadlineThreadWorker


class DrainingThreadWorker(DeadlineThreadWorker):
    """gthread, closing its listeners when the graceful stop begins."""

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
