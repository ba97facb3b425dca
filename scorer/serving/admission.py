"""Refuse a request as it arrives, in the worker's main loop, while its threads are backed up.

A request refused by a pool thread (`scorer.serving.shedding`) has first waited in line for that
thread, behind requests whose model holds the interpreter: under overload its 503 comes as
late as a scored answer would. Here the main loop, when a connection brings a request while
one queued now would wait past twice the target (the longer of what the first in line has
waited and the recent wait per place in line times the places ahead of a free thread), reads
the request (a kept-alive connection's bytes are taken and handed to its parser if it is let
in; a new connection's are peeked at) and applies the same rules to that expected wait
(`Shedder.check_arrival`). A request refused takes no thread: the loop writes the 503 and
keeps the connection for the client's next request. The worker asks `Admission.judge` for
every request it queues (`scorer.serving.worker`).

Only a plain, complete `POST /score` over HTTP/1.1 with a `Content-Length` is refused here;
anything else (a body still on its way, chunked, `Expect`, TLS, HTTP/2, bytes already read
ahead by the parser) goes to the pool as before and meets the thread's checks there. While the
line is short nothing is peeked: an unloaded worker pays one comparison per request.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from gunicorn import SERVER
from gunicorn.util import http_date

from scorer.errors import Overloaded
from scorer.metrics import Metrics
from scorer.serving.line import server_timing
from scorer.serving.shedding import Shedder
from scorer.serving.sockets import peek, send_now, take

PEEK_BYTES = 65536
"""The most of a request the main loop reads or peeks at; a longer one goes to a thread."""

SCORE_PATH = "/score"
"""The one path refused on arrival (and the label its refusals are counted under)."""

_HEAD = re.compile(
    rb"POST /score(?:\?[^ \r\n]*)? HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*[^\r\n]*\r\n)*)\r\n"
)
_LENGTH = re.compile(r"[0-9]{1,12}")
# What the main loop made of an arriving request (see Admission.judge).
REFUSED, ADMITTED, UNJUDGED = "refused", "admitted", "unjudged"
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


class Host(Protocol):
    """What admission needs of the worker whose connections it judges."""

    def may_keep_alive(self) -> bool:
        """Tell whether a connection may stay open after its answer."""

    def keep_waiting(self, conn: Any) -> None:
        """Put conn back in the poller for its client's next request."""

    def drop(self, conn: Any) -> None:
        """Close conn and count it off."""

    def park(self, conn: Any) -> None:
        """Put a new connection in the poller until its client sends its request."""


class Admission:
    """Refuse a request on arrival by a shedding policy; count refusals as the app counts them.

    Main thread only. `judge` reads the request only while a request queued now would wait
    past twice the policy's target; below that it is one comparison.
    """

    def __init__(self, shedder: Shedder, metrics: Metrics) -> None:
        self.shedder = shedder
        self._threshold = 2 * shedder.codel.target
        self._shed = metrics.shed
        self._refused = metrics.requests.labels(SCORE_PATH, 503)

    def judge(self, host: Host, conn: Any, waiting: int, wait: float) -> str:
        """Return REFUSED (answered, closed or parked: not to be queued), ADMITTED (judged and
        let in: the thread holds it to the wait it was let in with) or UNJUDGED (the thread
        applies every rule), for conn's request, `waiting` in line ahead of it, `wait` expected.

        A kept-alive connection's bytes are read once, and handed to its parser when the
        request is let in; a new connection's are only peeked at (its parser is made by the
        thread that serves it). The reads and the send keep the interpreter (`sockets`).
        """
        if wait <= self._threshold:
            return ADMITTED  # a short line: no rule on waits would refuse it
        started = time.perf_counter()
        parser = conn.parser
        if parser is not None:
            return self._judge_kept_alive(host, conn, parser, waiting, wait, started)
        data = peek(conn.sock, PEEK_BYTES)
        if data is None:
            # Nothing sent yet: queued now, it would meet the line unjudged and be refused late
            # by its thread. It waits in the poller for its request, to be judged then.
            host.park(conn)
            return REFUSED
        arrival = parse_arrival(data)
        if arrival is None:
            return UNJUDGED
        refusal = self.shedder.check_arrival(wait, waiting, arrival.headers)
        if refusal is None:
            return ADMITTED
        left = arrival.size
        while left:  # the bytes peeked are there: this does not wait
            chunk = take(conn.sock, left)
            if not chunk:  # the client reset the connection meanwhile
                host.drop(conn)
                return REFUSED
            left -= len(chunk)
        if self._refuse(host, conn, arrival, refusal, started):
            host.keep_waiting(conn)
        return REFUSED

    def _judge_kept_alive(
        self, host: Host, conn: Any, parser: Any, waiting: int, wait: float, started: float
    ) -> str:
        data = take(conn.sock, PEEK_BYTES)
        if data is None:
            return UNJUDGED  # nothing had come after all: a thread waits for it
        if not data:  # the client has closed the connection (or reset it)
            host.drop(conn)
            return REFUSED
        while data:  # a client may have sent several requests (pipelined)
            arrival = parse_arrival(data)
            refusal = (
                None
                if arrival is None
                else self.shedder.check_arrival(wait, waiting, arrival.headers)
            )
            if arrival is None or refusal is None:
                # gunicorn's own way to hand bytes read ahead to a connection's parser.
                parser.unreader.unread(data)
                return UNJUDGED if arrival is None else ADMITTED
            if not self._refuse(host, conn, arrival, refusal, started):
                return REFUSED
            data = data[arrival.size :]
        host.keep_waiting(conn)
        return REFUSED

    def _refuse(
        self, host: Host, conn: Any, arrival: Arrival, refusal: Overloaded, started: float
    ) -> bool:
        """Answer a request taken off conn's socket with its 503; tell whether conn lives on."""
        close = arrival.close or not host.may_keep_alive()
        response = refusal_response(refusal, close, time.perf_counter() - started)
        sent = send_now(conn.sock, response)
        self._shed[refusal.reason].inc()
        self._refused.inc()
        if close or not sent:
            host.drop(conn)  # a client not reading its answers is not worth a wait here
            return False
        return True
