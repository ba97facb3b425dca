"""The line for a worker's threads: waits, the expected wait, and what the app's environ gets."""

from __future__ import annotations

from typing import Any

from scorer.serving.line import ADMITTED, QUEUE_DELAY, QUEUED_AT, Line
from tests.fakes import Clock


def environ_of(line: Line) -> dict[str, Any]:
    """Run the stamped app once in this thread and return the environ it was given."""
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        return []

    line.stamped(app)({}, lambda *a: None)
    return seen


def test_a_request_taken_after_a_wait_carries_it_to_the_app() -> None:
    clock = Clock(100.0)
    line = Line(threads=2, clock=clock)
    ticket = line.join()
    clock.now += 0.030
    line.taken(ticket, waited_for_client=False)
    environ = environ_of(line)
    assert environ[QUEUED_AT] == 100.0
    assert abs(environ[QUEUE_DELAY] - 0.030) < 1e-9
    assert ADMITTED not in environ
    assert QUEUED_AT not in environ_of(line)  # once: a second call in the thread has none


def test_an_admitted_request_carries_the_wait_it_was_let_in_with() -> None:
    line = Line(threads=1, clock=Clock(100.0))
    ticket = line.join()
    ticket.admitted = 0.012
    line.taken(ticket, waited_for_client=False)
    assert environ_of(line)[ADMITTED] == 0.012


def test_a_connection_whose_client_had_sent_nothing_gets_no_wait() -> None:
    clock = Clock(100.0)
    line = Line(threads=1, clock=clock)
    ticket = line.join()
    clock.now += 5
    line.taken(ticket, waited_for_client=True)
    assert QUEUE_DELAY not in environ_of(line)
    assert line.wait_per_place == 0.0


def test_with_a_free_thread_a_newcomer_expects_what_the_first_in_line_waited() -> None:
    clock = Clock(100.0)
    line = Line(threads=4, clock=clock)
    line.join()
    clock.now += 0.002
    waiting, wait = line.expected_wait()
    assert waiting == 1
    assert abs(wait - 0.002) < 1e-9


def test_with_every_thread_busy_the_wait_grows_with_the_places_ahead() -> None:
    clock = Clock(100.0)
    line = Line(threads=1, clock=clock)
    line.taken(line.join(), waited_for_client=False)  # the one thread is busy from here
    first, second = line.join(), line.join()  # the second has one ahead of it
    clock.now += 0.040
    line.taken(first, waited_for_client=False)
    clock.now += 0.040
    line.taken(second, waited_for_client=False)  # 80 ms for one place: the pace moves to it
    assert abs(line.wait_per_place - 0.080 * 0.125) < 1e-9
    # Three handed to the pool and unfinished, one thread: a newcomer has three places ahead.
    assert line.active == 3
    waiting, wait = line.expected_wait()
    assert waiting == 0
    assert abs(wait - 3 * 0.080 * 0.125) < 1e-9


def test_a_free_thread_forgets_the_last_lines_pace() -> None:
    clock = Clock(100.0)
    line = Line(threads=1, clock=clock)
    line.taken(line.join(), waited_for_client=False)
    first, second = line.join(), line.join()
    clock.now += 0.040
    line.taken(first, waited_for_client=False)
    line.taken(second, waited_for_client=False)
    assert line.wait_per_place > 0
    for _ in range(3):
        line.finished()
    assert line.active == 0
    assert line.expected_wait() == (0, 0.0)
    assert line.wait_per_place == 0.0
