"""DeadlineSocket over a real socket pair: one deadline for all the reads of a phase."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from scorer.serving.deadlines import DeadlineExpired, DeadlineSocket


@pytest.fixture
def pair() -> Iterator[tuple[DeadlineSocket, socket.socket]]:
    ours, peer = socket.socketpair()
    adopted = DeadlineSocket.adopt(ours)
    yield adopted, peer
    adopted.close()
    peer.close()


def send_slowly(peer: socket.socket, count: int, interval: float) -> threading.Thread:
    def run() -> None:
        for _ in range(count):
            try:
                peer.sendall(b"x")
            except OSError:
                return
            time.sleep(interval)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_without_a_phase_reads_are_plain(pair: tuple[DeadlineSocket, socket.socket]) -> None:
    sock, peer = pair
    peer.sendall(b"hello")
    assert sock.recv(10) == b"hello"
    assert sock.gettimeout() is None


def test_a_trickle_inside_each_read_timeout_still_misses_the_phase_deadline(
    pair: tuple[DeadlineSocket, socket.socket],
) -> None:
    sock, peer = pair
    send_slowly(peer, count=100, interval=0.1)  # 10 s in all, a byte every 0.1 s
    sock.start_phase(0.5)
    received = b""
    with pytest.raises(DeadlineExpired):
        while len(received) < 100:
            received += sock.recv(1)
    assert len(received) < 100
    sock.end_phase()
    assert sock.gettimeout() is None  # blocking again, as gthread left it


def test_the_clock_starts_at_the_first_read_when_asked(
    pair: tuple[DeadlineSocket, socket.socket],
) -> None:
    sock, peer = pair
    sock.start_phase(2, from_first_read=True)
    time.sleep(2.5)  # idle past the budget: not the client being slow
    send_slowly(peer, count=2, interval=0.2)
    assert sock.recv(1) == b"x"
    assert sock.recv(1) == b"x"  # waited for, within the budget counted from the first read
    with pytest.raises(DeadlineExpired):  # and once started, the budget holds
        sock.recv(1)


def test_a_phase_that_waited_gives_back_the_previous_timeout(
    pair: tuple[DeadlineSocket, socket.socket],
) -> None:
    sock, peer = pair
    sock.start_phase(10)
    send_slowly(peer, count=2, interval=0.2)
    assert sock.recv(1) == b"x"
    assert sock.recv(1) == b"x"  # this read had to wait
    sock.end_phase()
    assert sock.gettimeout() is None
    peer.sendall(b"more")
    assert sock.recv(10) == b"more"
