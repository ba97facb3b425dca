"""Refusing on arrival, in the worker's main loop: what it peeks at, and under real gunicorn.

The gunicorn tests hold a worker's only thread with a model call that sleeps (`sleep:N`, as in
tests/test_overload.py), queue a second request behind it, and let the line's wait grow to
seconds, so that each outcome is certain; nothing here asserts a duration.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scorer.metrics import Metrics
from scorer.serving.admission import ADMITTED, REFUSED, UNJUDGED, Admission, parse_arrival
from scorer.serving.shedding import Shedder
from scorer.serving.sockets import peek
from tests.servers import Server, stop_service, wait_until
from tests.test_overload import calls_of, read_response, reason_of, request_bytes, shed_counts
from tests.test_overload import start as start_recording

BODY = b'{"user": {"userid": "u"}, "streams": []}'


def raw(head: str, body: bytes = BODY) -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def test_a_whole_post_score_is_taken_with_its_size_and_headers() -> None:
    data = raw(
        "POST /score?debug=1 HTTP/1.1\nHost: x\n"
        f"Content-Length: {len(BODY)}\nX-Request-Timeout-Ms: 250"
    )
    arrival = parse_arrival(data + b"POST /score HTTP/1.1\r\n")  # the next request pipelined
    assert arrival is not None
    assert arrival.size == len(data)
    assert arrival.headers["x-request-timeout-ms"] == "250"
    assert not arrival.close
    closing = parse_arrival(
        raw(f"POST /score HTTP/1.1\nConnection: Close\nContent-Length: {len(BODY)}")
    )
    assert closing is not None and closing.close


@pytest.mark.parametrize(
    "data",
    [
        raw(f"POST /score HTTP/1.1\nContent-Length: {len(BODY)}", BODY[:-1]),  # body on its way
        raw("POST /score HTTP/1.1\nContent-Length: 10", b""),  # the head only
        b"POST /score HTTP/1.1\r\nContent-Length: 3\r\n",  # the head not all in
        raw("POST /score HTTP/1.1\nTransfer-Encoding: chunked", b"0\r\n\r\n"),
        raw(f"POST /score HTTP/1.1\nExpect: 100-continue\nContent-Length: {len(BODY)}"),
        raw("POST /score HTTP/1.1"),  # no length: gunicorn's to judge
        raw(f"POST /score HTTP/1.1\nContent-Length: {len(BODY)}\nContent-Length: {len(BODY)}"),
        raw("POST /score HTTP/1.1\nContent-Length: -1"),
        raw(f"POST /score HTTP/1.1\nContent-Length : {len(BODY)}"),  # space before the colon
        raw(f"POST /score HTTP/1.1\nX: a\n folded\nContent-Length: {len(BODY)}"),  # obs-fold
        raw(f"POST /score HTTP/1.0\nContent-Length: {len(BODY)}"),
        raw(f"POST /scores HTTP/1.1\nContent-Length: {len(BODY)}"),
        raw(f"GET /score HTTP/1.1\nContent-Length: {len(BODY)}"),
        raw(f"POST /health HTTP/1.1\nContent-Length: {len(BODY)}"),
        b"",
    ],
)
def test_anything_but_a_whole_plain_post_score_is_left_to_a_thread(data: bytes) -> None:
    assert parse_arrival(data) is None


# --- the judge alone, on a socket pair ------------------------------------------------------


class Host:
    """What a worker gives admission: the connections it keeps waiting, and those it drops."""

    def __init__(self, keep_alive: bool = True) -> None:
        self.keep_alive = keep_alive
        self.waiting: list[Conn] = []
        self.dropped: list[Conn] = []
        self.parked: list[Conn] = []

    def may_keep_alive(self) -> bool:
        return self.keep_alive

    def keep_waiting(self, conn: Conn) -> None:
        self.waiting.append(conn)

    def drop(self, conn: Conn) -> None:
        self.dropped.append(conn)

    def park(self, conn: Conn) -> None:
        self.parked.append(conn)


class Unreader:
    def __init__(self) -> None:
        self.unread_bytes = b""

    def unread(self, data: bytes) -> None:
        self.unread_bytes = data + self.unread_bytes


@dataclass
class Parser:
    unreader: Unreader


@dataclass
class Conn:
    """A connection as gthread's TConn has it: a socket, and a parser once kept alive."""

    sock: socket.socket
    parser: Parser | None = None


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    with server, client:
        yield server, client


def admission(standing: bool) -> Admission:
    """An admission by a 10 ms target, whose last interval did or did not see a standing queue."""
    now = [0.0]
    shedder = Shedder(0.010, 0.100, 1.0, clock=lambda: now[0])
    if standing:
        now[0] = 0.1
        shedder.codel.should_shed(0.050)  # opens an interval whose shortest wait is 50 ms
        now[0] = 0.25  # which has ended, over the target
    return Admission(shedder, Metrics())


def test_a_short_line_is_let_in_without_reading_the_socket(pair: Any) -> None:
    server, client = pair
    client.sendall(request_bytes("u"))
    verdict = admission(standing=True).judge(Host(), Conn(server), waiting=3, wait=0.015)
    assert verdict is ADMITTED
    assert peek(server, 65536) == request_bytes("u")  # untouched


def test_behind_a_standing_line_a_kept_alive_request_is_refused_and_kept_open(pair: Any) -> None:
    server, client = pair
    client.sendall(request_bytes("u") + request_bytes("v"))  # two pipelined
    host, conn = Host(), Conn(server, Parser(Unreader()))
    judge = admission(standing=True)
    assert judge.judge(host, conn, waiting=4, wait=0.040) is REFUSED
    client.settimeout(5)
    answers = client.recv(65536)
    assert answers.count(b"HTTP/1.1 503 Service Unavailable") == 2
    assert b"Connection: keep-alive" in answers and b"queue" in answers
    assert host.waiting == [conn] and not host.dropped
    assert judge._refused._value.get() == 2  # counted as the app counts its 503s


def test_behind_a_burst_a_request_is_let_in_and_its_bytes_go_to_its_parser(pair: Any) -> None:
    server, client = pair
    client.sendall(request_bytes("u"))
    conn = Conn(server, Parser(Unreader()))
    assert admission(standing=False).judge(Host(), conn, waiting=4, wait=0.040) is ADMITTED
    assert conn.parser is not None and conn.parser.unreader.unread_bytes == request_bytes("u")


def test_a_new_connections_request_is_peeked_and_refused_without_a_thread(pair: Any) -> None:
    server, client = pair
    client.sendall(request_bytes("u"))
    host, conn = Host(keep_alive=False), Conn(server)
    assert admission(standing=True).judge(host, conn, waiting=4, wait=0.040) is REFUSED
    client.settimeout(5)
    assert b"Connection: close" in client.recv(65536)
    assert host.dropped == [conn]
    assert peek(server, 1) is None  # its bytes were taken: nothing left for a parser


def test_behind_a_standing_line_a_new_connection_with_nothing_sent_waits_in_the_poller(
    pair: Any,
) -> None:
    server, _ = pair
    host, conn = Host(), Conn(server)
    assert admission(standing=True).judge(host, conn, waiting=4, wait=0.040) is REFUSED
    assert host.parked == [conn] and not host.dropped and not host.waiting


def test_a_request_not_read_here_is_left_to_the_thread(pair: Any) -> None:
    server, client = pair
    client.sendall(b"POST /score HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    verdict = admission(standing=True).judge(Host(), Conn(server), waiting=4, wait=0.040)
    assert verdict is UNJUDGED


def test_a_client_gone_from_a_kept_alive_connection_is_dropped(pair: Any) -> None:
    server, client = pair
    client.close()
    host, conn = Host(), Conn(server, Parser(Unreader()))
    assert admission(standing=True).judge(host, conn, waiting=4, wait=0.040) is REFUSED
    assert host.dropped == [conn]


# --- under gunicorn ------------------------------------------------------------------------


@dataclass
class Line:
    """A worker whose only thread is held, one request queued behind it, and a kept-alive
    connection ready to send more."""

    server: Server
    sock: socket.socket
    before: dict[str, float]  # the refusal counts before the line formed
    thread: threading.Thread  # answers the held and the queued request, then ends
    statuses: list[int]  # theirs, once it has


@contextmanager
def backed_up(emulator: int, tmp: Path, seconds: float, **values: str) -> Iterator[Line]:
    """Start 1 worker x 1 thread, answer one request on a connection kept alive, then hold
    the thread for `seconds` with a request queued behind it (see back_up)."""
    server, _ = start_recording(tmp, emulator, 1, THREADS="1", **values)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            # Answered once, so the worker keeps it in its poller, as a pooled client's.
            sock.sendall(request_bytes("hello"))
            assert read_response(sock)[0] == 200
            before = shed_counts(server)
            thread, statuses = back_up(server, seconds)
            yield Line(server, sock, before, thread, statuses)
    finally:
        stop_service(server)


def back_up(server: Server, seconds: float) -> tuple[threading.Thread, list[int]]:
    """Hold the only thread for `seconds`, queue one request behind it, and wait for the line.

    Returns the thread answering both and the statuses it collected: the queued request, in
    line far past any target, is refused by the thread when its turn comes.
    """
    statuses: list[int] = []

    def run() -> None:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=60) as slow,
            socket.create_connection(("127.0.0.1", server.port), timeout=60) as queued,
        ):
            slow.sendall(request_bytes(f"sleep:{seconds}"))
            assert wait_until(lambda: f"sleep:{seconds}" in calls_of(server), 30)
            queued.sendall(request_bytes("queued"))
            statuses.extend([read_response(slow)[0], read_response(queued)[0]])

    thread = threading.Thread(target=run)
    thread.start()
    assert wait_until(lambda: f"sleep:{seconds}" in calls_of(server), 30)
    time.sleep(1.5)  # the queued request is in line for over a second: far past any limit
    return thread, statuses


def test_a_request_arriving_behind_a_long_line_is_refused_without_a_thread(
    emulator: int, tmp_path: Path
) -> None:
    with backed_up(emulator, tmp_path, 5, SHED_MAX_QUEUE_MS="300") as line:
        server, sock = line.server, line.sock

        sock.sendall(request_bytes("arriving-1"))
        status, headers, answer = read_response(sock)
        assert status == 503, answer
        assert reason_of(answer) == "queue_limit"
        assert "in line for a worker thread, about" in answer["detail"]
        assert headers["retry-after"] == "1"
        assert headers["connection"] == "keep-alive"
        assert headers["content-type"] == "application/json"
        assert headers["server-timing"].startswith("queue;dur=0.00, app;dur=")

        line.thread.join(timeout=60)
        assert line.statuses == [200, 503]  # the queued one met the thread's own check
        after = shed_counts(server)
        assert after["queue_limit"] - line.before["queue_limit"] == 2
        assert after["503"] - line.before["503"] == 2
        assert not {"queued", "arriving-1"} & set(calls_of(server))


def test_a_deadline_shorter_than_the_line_is_refused_on_arrival(
    emulator: int, tmp_path: Path
) -> None:
    with backed_up(emulator, tmp_path, 4, SHED_MAX_QUEUE_MS="60000") as line:
        server, sock = line.server, line.sock

        sock.sendall(request_bytes("short", X_Request_Timeout_Ms="500"))
        status, _, answer = read_response(sock)
        assert status == 503 and reason_of(answer) == "deadline", answer
        assert "in line for a worker thread, about" in answer["detail"]

        # A budget the line leaves room for is queued and scored, on the same connection.
        sock.sendall(request_bytes("patient", X_Request_Timeout_Ms="60000"))
        status, _, answer = read_response(sock)
        assert status == 200, answer
        assert answer["user"] == "patient"

        line.thread.join(timeout=60)
        assert line.statuses == [200, 200]  # no limit on the wait: the queued one was scored too
        after = shed_counts(server)
        assert after["deadline"] - line.before["deadline"] == 1
        assert "short" not in calls_of(server)


def test_with_shedding_off_nothing_is_refused_on_arrival(emulator: int, tmp_path: Path) -> None:
    with backed_up(emulator, tmp_path, 3, SHEDDING="false", SHED_MAX_QUEUE_MS="300") as line:
        line.sock.sendall(request_bytes("arriving", X_Request_Timeout_Ms="1"))
        status, _, answer = read_response(line.sock)
        assert status == 200, answer
        line.thread.join(timeout=60)
        assert line.statuses == [200, 200]
