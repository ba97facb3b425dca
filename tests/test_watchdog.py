"""The watchdog's decisions, on an injected clock (the gunicorn behaviour is in test_processes)."""

from __future__ import annotations

import socket

from scorer.watchdog import Watchdog


class Recorder:
    def __init__(self) -> None:
        self.now = 0.0
        self.terminated = 0
        self.exits: list[int] = []

    def watchdog(self) -> Watchdog:
        return Watchdog(
            timeout=2,
            grace=5,
            clock=lambda: self.now,
            terminate=self.terminate,
            exit_process=self.exits.append,
        )

    def terminate(self) -> None:
        self.terminated += 1


def test_stuck_request_gets_a_504_and_the_worker_retires_after_the_others() -> None:
    rec = Recorder()
    dog = rec.watchdog()
    server, client = socket.socketpair()
    sockets = (server, client)
    stuck = dog.begin({"gunicorn.socket": server})
    rec.now = 1.0
    other = dog.begin({})

    rec.now = 2.5
    dog.check()
    assert rec.terminated == 1 and rec.exits == []  # the other request is still running
    assert client.recv(1024).startswith(b"HTTP/1.1 504 Gateway Timeout")

    dog.end(other)
    rec.now = 2.6
    dog.check()
    assert rec.exits == [1] and rec.terminated == 1
    dog.end(stuck)
    for end in sockets:
        end.close()


def test_grace_bounds_the_wait_for_the_others() -> None:
    rec = Recorder()
    dog = rec.watchdog()
    dog.begin({})
    rec.now = 1.9
    dog.begin({})  # a slow request that is not stuck yet
    rec.now = 2.1
    dog.check()
    assert rec.exits == []
    rec.now = 3.95  # the second one is stuck now too: answered, and nothing else is left
    dog.check()
    assert rec.exits == [1]


def test_requests_within_the_timeout_are_left_alone() -> None:
    rec = Recorder()
    dog = rec.watchdog()
    token = dog.begin({})
    rec.now = 1.9
    dog.check()
    dog.end(token)
    rec.now = 10
    dog.check()
    assert (rec.terminated, rec.exits) == (0, [])
