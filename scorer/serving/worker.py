"""The service's gunicorn worker: gthread, with each concern handed to a collaborator.

`ScorerWorker` is the one class between gunicorn's `ThreadWorker` and `gunicorn.conf.py`. Each
method it overrides is a hook into gthread's loop that a collaborator needs, said in one line
beside it; the behaviour lives in:

- `Line` (`line.py`): each request's wait for a thread, the line's length and pace;
- `Admission` (`admission.py`): refusing on arrival while the line stands;
- `Balancer` (`balancing.py`): stepping aside for a less busy worker when a connection comes;
- `arm_head` and `DeadlineSocket` (`deadlines.py`): the request head's deadline, and its 408;
- `Drain` (`draining.py`): refusing connections once a stop begins, retiring around a stuck one.

- `sockets.py`: the non-blocking reads and sends of the main loop, keeping the interpreter.

Tested on gunicorn 27.0.1 (`pyproject.toml` allows >=27.0.1,<28; CI runs the worker's tests on
the lowest allowed too): gthread's loop, `TConn`, its pending and kept-alive paths and
`enqueue_req` / `finish_request` are what these hooks rely on (26.x and 27.0.0 drop kept-alive
connections at a graceful stop, which the reload tests catch).
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import time
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from scorer.metrics import Metrics
from scorer.serving.admission import ADMITTED, REFUSED, UNJUDGED, Admission
from scorer.serving.balancing import Balancer
from scorer.serving.deadlines import DeadlineExpired, arm_head, end_phase, head_timeout_response
from scorer.serving.draining import Drain, close_listeners
from scorer.serving.line import Line, WSGIApp
from scorer.serving.shedding import Shedder
from scorer.serving.sockets import has_bytes


class ScorerWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """gthread that times each request's wait, refuses on arrival, balances and drains."""

    #: Seconds from a request's first byte to the end of its head; set after fork from the
    #: service's settings (gunicorn.conf.py, `post_fork`).
    head_timeout: float = 5.0
    wsgi: WSGIApp  # set by gunicorn's load_wsgi

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = Line(self.cfg.threads)
        self.balancer = Balancer(self.cfg.threads)
        self.drain = Drain()
        #: Set after fork by `admit_with`; None (SHEDDING=false, another app): all are queued.
        self.admission: Admission | None = None
        self._finishing = False  # in finish_request: a re-queue of bytes the parser read ahead

    def admit_with(self, shedder: Shedder | None, metrics: Metrics) -> None:
        """Refuse on arrival by `shedder`'s rules (None: never), counted in `metrics`."""
        self.admission = None if shedder is None else Admission(shedder, metrics)

    def retire(self, sock: socket.socket | None) -> None:
        """Stop gracefully without waiting for the connection on `sock`, answered already.

        Thread-safe (the watchdog calls it): it runs on the main loop. The caller calls it
        before the stuck request can end, so that it precedes the connection's own completion
        in the loop's queue and the connection is counted off exactly once.
        """
        self.method_queue.defer(self._abandon, sock)

    # --- Admission's host ------------------------------------------------------------------
    def may_keep_alive(self) -> bool:
        """Tell whether a connection may stay open after its answer (as gthread decides)."""
        return bool(self.cfg.keepalive) and len(self.keepalived_conns) < self.max_keepalived

    def keep_waiting(self, conn: Any) -> None:
        """Wait for conn's next request in the poller, as gthread does after an answer."""
        conn.set_timeout()
        if self._polled(conn):  # judged as it became readable: it never left the poller
            self.keepalived_conns.remove(conn)
            self.keepalived_conns.append(conn)  # the deque stays in order of timeout
            return
        self.keepalived_conns.append(conn)
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
        )

    def drop(self, conn: Any) -> None:
        """Close conn and count it off."""
        if self._polled(conn):
            self.poller.unregister(conn.sock)
            self.keepalived_conns.remove(conn)
        self.nr_conns -= 1
        conn.close()

    def park(self, conn: Any) -> None:
        """Wait in the poller for a new connection's request: gthread's own pending path."""
        conn.timeout = time.monotonic() + self.cfg.keepalive  # then murder_pending closes it
        self.pending_conns.append(conn)
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
        )

    def _polled(self, conn: Any) -> bool:
        return conn.sock in self.poller.get_map()

    def _judge(self, conn: Any) -> tuple[str, float]:
        """Ask admission about conn's request: its verdict, and the wait it was judged with.

        UNJUDGED when nothing is refused on arrival (no policy, a stop, TLS or HTTP/2, or a
        re-queue from finish_request of bytes its parser read ahead).
        """
        admission = self.admission
        if admission is None or not self.alive or self._finishing:
            return UNJUDGED, 0.0
        if conn.is_http2 or self.cfg.is_ssl:
            return UNJUDGED, 0.0
        waiting, wait = self.line.expected_wait()
        return admission.judge(self, conn, waiting, wait), wait

    # --- gthread's hooks -------------------------------------------------------------------
    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        # A kept-alive connection's request is judged before it leaves the poller: refused,
        # it stays there as it was, with no call to the poller.
        judged = self._judge(conn)
        if judged[0] is REFUSED:
            return
        conn.scorer_judged = judged
        super().on_client_socket_readable(conn, client)

    def enqueue_req(self, conn: Any) -> None:
        # Every request passes here on its way to the pool: judged (if not yet), put in line.
        verdict, wait = getattr(conn, "scorer_judged", None) or self._judge(conn)
        if verdict is REFUSED:
            return
        conn.scorer_judged = None
        ticket = conn.scorer_ticket = self.line.join()
        if verdict is ADMITTED:
            ticket.admitted = wait
        super().enqueue_req(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        # The pool is done with conn: count it off the line, unless the watchdog abandoned it.
        self.line.finished()
        if self.drain.reclaim(conn.sock):
            conn.close()  # the stuck request ended after all: counted off already
            return
        self._finishing = True
        try:
            super().finish_request(conn, fs)
        finally:
            self._finishing = False

    def handle(self, conn: Any) -> Any:
        # A pool thread takes conn: record its wait, and arm its head's deadline.
        new = not conn.initialized and not conn.data_ready
        self.line.taken(getattr(conn, "scorer_ticket", None), new and not has_bytes(conn.sock))
        arm_head(conn, self.head_timeout)
        return super().handle(conn)

    def load_wsgi(self) -> None:
        # The app gets each request's wait in its environ, and the head's deadline ends.
        super().load_wsgi()
        self.wsgi = _head_received(self.line.stamped(self.wsgi))

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        # A missed head deadline is a 408, not gunicorn's 500.
        if not isinstance(exc, DeadlineExpired):
            super().handle_error(req, client, addr, exc)
            return
        end_phase(client)
        self.log.debug("request head not received within %g s from %s", self.head_timeout, addr)
        with contextlib.suppress(OSError):  # a client already gone needs no answer
            util.write_nonblock(client, head_timeout_response(self.head_timeout))

    def accept(self, listener: Any) -> None:
        # A connection arrives: a busy worker steps aside first; a stopped one has closed it.
        if not self.alive:
            return
        if self.balancer.should_defer(self.line.active):
            super().set_accept_enabled(False)
            return
        super().accept(listener)

    def set_accept_enabled(self, enabled: bool) -> None:
        # gthread's loop asks on every turn: not while stepping aside, nor once stopping.
        if enabled and not (self.alive and self.balancer.may_accept()):
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # While stepping aside the listener is out of the poller: wake when that ends.
        super().wait_for_and_dispatch_events(self.balancer.poll_timeout(timeout))

    def handle_exit(self, sig: int, frame: Any) -> None:
        # A graceful stop refuses new connections at once instead of resetting them at exit.
        was_alive = self.alive
        super().handle_exit(sig, frame)
        if was_alive:
            super().set_accept_enabled(False)
            close_listeners(self.sockets)

    def run(self) -> None:
        # The interpreter's exit would join a stuck request's thread forever: leave without it.
        super().run()
        self.drain.exit_if_stuck()

    def _abandon(self, sock: socket.socket | None) -> None:
        if self.drain.abandon(sock):
            self.nr_conns -= 1  # gthread's drain waits while this is above zero
        self.handle_exit(signal.SIGTERM, None)


def _head_received(app: WSGIApp) -> WSGIApp:
    """Wrap the WSGI app so the head's deadline ends when gunicorn hands it the request."""

    def with_head_in(environ: dict[str, Any], start_response: Any) -> Any:
        end_phase(environ.get("gunicorn.socket"))
        return app(environ, start_response)

    return with_head_in
