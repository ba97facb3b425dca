"""Refuse a request as it arrives, in the worker's main loop, while its threads are backed up.

A request refused by a pool thread (scorer/shedding.py) has first waited in line for that
thread, behind requests whose model holds the interpreter: under overload its 503 comes as
late as a scored answer would. Here the main loop, when a connection brings a request while
one queued now would wait past twice the target (the longer of what the first in line has
waited and the recent wait per place in line times the places ahead of a free thread), reads
the request (a kept-alive connection's bytes are taken and handed to its parser if it is let
in; a new connection's are peeked at) and applies the same rules to that expected wait
(`Shedder.check_arrival`). A request refused takes no thread: the loop writes the 503 and
keeps the connection for the client's next request.

Only a plain, complete `POST /score` over HTTP/1.1 with a `Content-Length` is refused here;
anything else (a body still on its way, chunked, `Expect`, TLS, HTTP/2, bytes already read
ahead by the parser) goes to the pool as before and meets the thread's checks there. While the
line is short nothing is peeked: an unloaded worker pays one comparison per request.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from gunicorn import SERVER
from gunicorn.util import http_date

from scorer.errors import Overloaded
from scorer.fastpath import SCORE_PATH, server_timing
from scorer.metrics import Metrics
from scorer.queueing import QueueTimedThreadWorker, peek, take
from scorer.shedding import Shedder

PEEK_BYTES = 65536
"""The most of a request the main loop reads or peeks at; a longer one goes to a thread."""

_TAKE = socket.MSG_DONTWAIT
_HEAD = re.compile(
    rb"POST /score(?:\?[^ \r\n]*)? HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*[^\r\n]*\r\n)*)\r\n"
)
_LENGTH = re.compile(r"[0-9]{1,12}")
# What the main loop made of an arriving request (see AdmittingThreadWorker._judge_on_arrival).
_REFUSED, _ADMITTED, _UNJUDGED = "refused", "admitted", "unjudged"
# Any of these and the request is left to gunicorn's own parser and the pool.
_NOT_HERE = frozenset({"transfer-encoding", "expect", "upgrade", "http2-settings"})


@dataclass(frozen=True)
class Arrival:
    """A whole request waiting on a socket: its size in bytes, its headers (lower-case)."""

    size: int
    headers: dict[str, str]

    @property
    def close(self) -> bool:
        """Tell whether the client asked to close the connection after this answer."""
        return "close" in self.headers.get("connection", "").lower()


def parse_arrival(data: bytes) -> Arrival | None:
    """Return the request at the start of `data` if it is a whole plain `POST /score`, else None.

    None is not an error: the request goes to a thread, whose parser answers a bad one.
    """
    match = _HEAD.match(data)
    if match is None:
        return None
    headers: dict[str, str] = {}
    for line in match.group(1).split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        key = name.decode("ascii").lower()
        if key in headers or key in _NOT_HERE:
            return None  # a repeated header is for gunicorn to judge
        headers[key] = value.strip(b" \t").decode("latin-1")
    length = headers.get("content-length")
    if length is None or not _LENGTH.fullmatch(length):
        return None
    size = match.end() + int(length)
    if size > len(data):
        return None  # the body is still on its way
    return Arrival(size, headers)


def refusal_response(refusal: Overloaded, close: bool, decided_in: float) -> bytes:
    """Return the 503 as the pool thread's path writes it: same status, headers and body."""
    body = refusal.json()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Server: {SERVER}\r\n"
        f"Date: {http_date()}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n"
        "Content-Type: application/json\r\n"
        "Retry-After: 1\r\n"
        f"Content-Length: {len(body)}\r\n"
        # It waited for no thread: its queue time is none, the decision is its service time.
        f"Server-Timing: {server_timing(0.0, decided_in)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


class AdmittingThreadWorker(QueueTimedThreadWorker):
    """gthread that refuses a request on arrival while the line for its threads is too long."""

    #: The service's policy, set after fork by `admit_with`; with none (SHEDDING=false, or
    #: another app) every request is queued.
    shedder: Shedder | None = None
    _shed: dict[str, Any] | None = None
    _refused: Any = None

    def admit_with(self, shedder: Shedder | None, metrics: Metrics) -> None:
        """Refuse on arrival by `shedder`'s rules, counted in `metrics` as the app counts."""
        self.shedder = shedder
        self._shed = metrics.shed
        self._refused = metrics.requests.labels(SCORE_PATH, 503)

    def enqueue_req(self, conn: Any) -> None:
        shedder = self.shedder
        if shedder is not None and self.alive:
            waiting, first = self.line()
            # It waits at least as long as the first in line has and, when it will find no
            # thread free, about as long as the threads lately took per place in line for
            # each request that must be taken before it.
            places = self.active + 1 - self.cfg.threads
            if places <= 0:
                self.wait_per_place = 0.0  # a thread is free: the last line's pace is history
            wait = max(first, places * self.wait_per_place)
            if wait <= 2 * shedder.codel.target:
                conn.scorer_admitted = True  # a short line: no rule on waits would refuse it
            else:
                verdict = self._judge_on_arrival(conn, wait, waiting, shedder)
                if verdict is _REFUSED:
                    return
                conn.scorer_admitted = verdict is _ADMITTED
        super().enqueue_req(conn)

    def _judge_on_arrival(self, conn: Any, wait: float, waiting: int, shedder: Shedder) -> str:
        """Answer conn's request with a 503 here if the policy refuses it.

        Returns _REFUSED (answered or closed: not to be queued), _ADMITTED (judged and let
        in: the thread holds no standing queue against it) or _UNJUDGED (not a request this
        loop reads: the thread applies every rule).

        Every system call here lets the pool's threads take the interpreter, and the loop
        waits for it again after: a kept-alive connection's bytes are read once, and handed
        to its parser when the request is let in; a new connection's are only peeked at (its
        parser is made by the thread that serves it).
        """
        started = time.perf_counter()
        if conn.is_http2 or self.cfg.is_ssl:
            return _UNJUDGED
        parser = conn.parser
        if parser is not None:
            if parser.unreader.buf.getvalue():
                return _UNJUDGED  # the parser holds bytes read ahead: the request's start
            data = take(conn.sock, PEEK_BYTES)
            if data is None:
                return _UNJUDGED  # nothing had come after all: a thread waits for it
            if not data:  # the client has closed the connection (or reset it)
                self._close(conn)
                return _REFUSED
            while data:  # a client may have sent several requests (pipelined)
                arrival = parse_arrival(data)
                refusal = (
                    None
                    if arrival is None
                    else shedder.check_arrival(wait, waiting, arrival.headers)
                )
                if arrival is None or refusal is None:
                    parser.unreader.unread(data)
                    return _UNJUDGED if arrival is None else _ADMITTED
                if not self._send_refusal(conn, arrival, refusal, started):
                    return _REFUSED
                data = data[arrival.size :]
            self._keep_alive(conn)
            return _REFUSED
        data = peek(conn.sock, PEEK_BYTES)
        if data is None:
            return _UNJUDGED  # nothing sent yet: it takes its turn, and a thread waits for it
        arrival = parse_arrival(data)
        if arrival is None:
            return _UNJUDGED
        refusal = shedder.check_arrival(wait, waiting, arrival.headers)
        if refusal is None:
            return _ADMITTED
        left = arrival.size
        while left:  # the bytes peeked are there: this does not wait
            chunk = take(conn.sock, left)
            if not chunk:  # the client reset the connection meanwhile
                self._close(conn)
                return _REFUSED
            left -= len(chunk)
        if self._send_refusal(conn, arrival, refusal, started):
            self._keep_alive(conn)
        return _REFUSED

    def _send_refusal(
        self, conn: Any, arrival: Arrival, refusal: Overloaded, started: float
    ) -> bool:
        """Answer a request taken off conn's socket with its 503; tell whether conn lives on."""
        close = (
            arrival.close
            or not self.cfg.keepalive
            or len(self.keepalived_conns) >= self.max_keepalived
        )
        response = refusal_response(refusal, close, time.perf_counter() - started)
        try:
            sent = socket.socket.send(conn.sock, response, _TAKE)
        except OSError:
            sent = -1
        self._count(refusal)
        if close or sent != len(response):
            self._close(conn)  # a client not reading its answers is not worth a wait here
            return False
        return True

    def _keep_alive(self, conn: Any) -> None:
        """Wait for conn's next request in the poller, as gunicorn does after an answer."""
        conn.set_timeout()
        self.keepalived_conns.append(conn)
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
        )

    def _count(self, refusal: Overloaded) -> None:
        if self._shed is not None:
            self._shed[refusal.reason].inc()
            self._refused.inc()

    def _close(self, conn: Any) -> None:
        self.nr_conns -= 1
        conn.close()
