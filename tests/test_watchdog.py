"""The watchdog's decisions, on an injected clock (the gunicorn behaviour is in test_processes)."""

from __future__ import annotations

import socket

from scorer.watchdog import Watchdog


class Recorder:
    def __init__(self) -> None:
        self.now = 0.0
        self.retired: list[socket.socket | None] = []

    def watchdog(self) -> Watchdog:
        return Watchdog(2, clock=lambda: self.now, retire=self.retired.append)


def test_stuck_request_gets_a_504_and_the_worker_retires_around_it() -> None:
    rec = Recorder()
    dog = rec.watchdog()
    server, client = socket.socketpair()
    stuck = dog.begin({"gunicorn.socket": server})
    rec.now = 1.0
    other = dog.begin({})

    rec.now = 2.5
    dog.check()
    assert client.recv(1024).startswith(b"HTTP/1.1 504 Gateway Timeout")
    assert rec.retired == [server]  # not waiting for it; the other one is the worker's to finish

    rec.now = 2.9
    dog.check()
    assert rec.retired == [server]  # answered once, one retirement
    dog.end(other)
    dog.end(stuck)
    for end in (server, client):
        end.close()


def test_requests_within_the_timeout_are_left_alone() -> None:
    rec = Recorder()
    dog = rec.watchdog()
    token = dog.begin({})
    rec.now = 1.9
    dog.check()
    dog.end(token)
    rec.now = 10
    dog.check()
    assert rec.retired == []
