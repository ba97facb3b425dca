"""The watchdog's decisions, on an injected clock (the gunicorn behaviour is in test_processes)."""

from __future__ import annotations

import socket

from scorer.metrics import Metrics
from scorer.serving.watchdog import Watchdog
from tests.conftest import sample


class Recorder:
    def __init__(self) -> None:
        self.now = 0.0
        self.retired: list[socket.socket | None] = []
        self.metrics = Metrics()

    def watchdog(self) -> Watchdog:
        return Watchdog(2, self.metrics, clock=lambda: self.now, retire=self.retired.append)

    def count(self, endpoint: str, status: str) -> float:
        return sample(self.metrics, "scorer_requests_total", endpoint=endpoint, status=status)


def test_stuck_request_gets_a_counted_504_and_the_worker_retires_around_it() -> None:
    rec = Recorder()
    dog = rec.watchdog()
    server, client = socket.socketpair()
    stuck = dog.begin({"gunicorn.socket": server}, "/score", timed=True)
    rec.now = 1.0
    other = dog.begin({}, "/score", timed=True)

    rec.now = 2.5
    dog.check()
    assert client.recv(1024).startswith(b"HTTP/1.1 504 Gateway Timeout")
    assert rec.retired == [server]  # not waiting for it; the other one is the worker's to finish
    assert rec.count("/score", "504") == 1
    assert sample(rec.metrics, "scorer_request_duration_seconds_count") == 1

    rec.now = 2.9
    dog.check()  # answered once, counted once, one retirement
    assert (rec.retired, rec.count("/score", "504")) == ([server], 1)
    assert dog.end(other) is False  # its own answer is still to be counted
    assert dog.end(stuck) is True  # it ended after all: its client had the 504 already
    for end in (server, client):
        end.close()


def test_stuck_request_of_another_endpoint_is_counted_under_it_and_not_timed() -> None:
    rec = Recorder()
    dog = rec.watchdog()
    dog.begin({}, "/health")
    rec.now = 2.1
    dog.check()
    assert rec.retired == [None]
    assert rec.count("/health", "504") == 1
    assert sample(rec.metrics, "scorer_request_duration_seconds_count") == 0


def test_requests_within_the_timeout_are_left_alone() -> None:
    rec = Recorder()
    dog = rec.watchdog()
    token = dog.begin({}, "/score", timed=True)
    rec.now = 1.9
    dog.check()
    assert dog.end(token) is False
    rec.now = 10
    dog.check()
    assert (rec.retired, rec.count("/score", "504")) == ([], 0)
