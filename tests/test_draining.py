"""Abandoning a stuck connection: counted off once, reclaimed once, and the exit it forces."""

from __future__ import annotations

import socket

from scorer.serving.draining import Drain, close_listeners


def test_a_connection_is_abandoned_once_and_reclaimed_once() -> None:
    drain = Drain()
    a, b = socket.socketpair()
    with a, b:
        assert drain.abandon(a)
        assert not drain.abandon(a)  # the watchdog may report it twice: counted off once
        assert not drain.abandon(None)
        assert drain.reclaim(a)
        assert not drain.reclaim(a)
        assert not drain.reclaim(b)


def test_without_a_stuck_request_the_exit_is_left_to_the_interpreter() -> None:
    Drain().exit_if_stuck()  # returns: os._exit would end this test run


def test_closed_listeners_refuse_new_clients() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    close_listeners([listener])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return
    raise AssertionError("a closed listener accepted a connection")
