"""The load-shedding policy on an injected clock, and the /score answers it gives in process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from scorer.app import create_app
from scorer.errors import Overloaded
from scorer.metrics import SHED_REASONS, Metrics
from scorer.models.model import validate_model
from scorer.serving.line import ADMITTED, QUEUE_DELAY, QUEUED_AT
from scorer.serving.shedding import Codel, Shedder, client_gone, parse_request_start, parse_timeout
from tests import fakes
from tests.conftest import make_settings, sample
from tests.fakes import Clock

TARGET, INTERVAL = 0.005, 0.100


def feed(codel: Codel, clock: Clock, delays: list[float], step: float = 0.010) -> list[bool]:
    """Observe each delay `step` seconds after the last one; return the shed verdicts."""
    verdicts = []
    for delay in delays:
        clock.now += step
        verdicts.append(codel.should_shed(delay))
    return verdicts


def test_a_burst_that_drains_within_the_interval_is_served() -> None:
    clock = Clock(1000.0)
    codel = Codel(TARGET, INTERVAL, clock)
    # Each interval has long waits, and one under the target: the queue drained.
    for _ in range(5):
        assert (
            feed(codel, clock, [0.050, 0.080, 0.002, 0.090, 0.060, 0.040, 0.030, 0.020])
            == [False] * 8
        )


def overload(codel: Codel, clock: Clock) -> None:
    """Hold the queue at 20 ms for a whole interval, then open the next one (overloaded)."""
    clock.now += INTERVAL  # past the interval the policy was made in
    assert feed(codel, clock, [0.020] * 11, step=0.0101) == [False] * 11


def test_a_standing_queue_sheds_waits_over_twice_the_target_from_the_next_interval() -> None:
    clock = Clock(1000.0)
    codel = Codel(TARGET, INTERVAL, clock)
    # An interval where no request waited under 20 ms: served, but noted; in the next one,
    # over twice the target is shed, under it is served.
    overload(codel, clock)
    assert feed(codel, clock, [0.030, 0.011, 0.010, 0.008, 0.050]) == [
        True,
        True,
        False,
        False,
        True,
    ]


def test_shedding_stops_after_an_interval_with_a_short_wait() -> None:
    clock = Clock(1000.0)
    codel = Codel(TARGET, INTERVAL, clock)
    overload(codel, clock)
    assert feed(codel, clock, [0.030, 0.001, 0.030]) == [True, False, True]
    clock.now += INTERVAL  # that interval saw 1 ms: the next one is not overloaded
    assert feed(codel, clock, [0.030, 0.030, 0.030]) == [False, False, False]


def test_an_idle_worker_starts_unloaded() -> None:
    clock = Clock(1000.0)
    codel = Codel(TARGET, INTERVAL, clock)
    clock.now += 60  # no request for a minute: no interval recorded a wait
    assert feed(codel, clock, [0.020, 0.020, 0.020]) == [False, False, False]


def shedder(clock: Clock, wall: float = 1_700_000_000.0, **kwargs: Any) -> Shedder:
    kwargs.setdefault("max_queue", 0.100)
    return Shedder(
        TARGET, INTERVAL, clock=clock, wall_clock=lambda: wall + clock.now - 1000.0, **kwargs
    )


def test_a_wait_over_the_cap_is_refused_at_once_and_a_cap_of_zero_is_none() -> None:
    clock = Clock(1000.0)
    refusal = shedder(clock).check({QUEUE_DELAY: 0.150, QUEUED_AT: clock.now - 0.150})
    assert isinstance(refusal, Overloaded)
    assert refusal.status == 503 and refusal.reason == "queue_limit"
    assert refusal.detail == (
        "overloaded: queue_limit - waited 150 ms for a worker thread, over the 100 ms limit"
    )
    assert shedder(clock, max_queue=0).check({QUEUE_DELAY: 30.0}) is None


def test_a_standing_queue_is_refused_naming_it() -> None:
    clock = Clock(1000.0)
    policy = shedder(clock)
    overload(policy.codel, clock)
    refusal = policy.check({QUEUE_DELAY: 0.020})
    assert refusal is not None and refusal.reason == "queue"
    assert refusal.detail == (
        "overloaded: queue - waited 20 ms for a worker thread;"
        " the queue has stayed over 5 ms for 100 ms"
    )


def test_waits_are_not_refused_while_a_new_worker_warms_up() -> None:
    clock = Clock(1000.0)
    policy = shedder(clock, warmup=5.0)
    assert policy.check({QUEUE_DELAY: 0.150}) is None  # its first request starts the warm-up
    overload(policy.codel, clock)
    clock.now += 4.0
    assert policy.check({QUEUE_DELAY: 0.150}) is None
    clock.now += 1.5
    refusal = policy.check({QUEUE_DELAY: 0.150})
    assert refusal is not None and refusal.reason == "queue_limit"


def test_a_deadline_is_refused_while_warming_up() -> None:
    clock = Clock(1000.0)
    policy = shedder(clock, warmup=5.0)
    policy.service_time = 0.010
    refusal = policy.check({QUEUE_DELAY: 0.001, "HTTP_X_REQUEST_TIMEOUT_MS": "2"})
    assert refusal is not None and refusal.reason == "deadline"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("t=1700000000.123", 1_700_000_000.123),  # nginx: t=${msec}
        ("1700000000123", 1_700_000_000.123),  # Heroku: milliseconds
        ("t=1700000000123456", 1_700_000_000.123456),  # Apache: t=%t, microseconds
        (" t=1700000000 ", 1_700_000_000.0),
        ("t=", None),
        ("soon", None),
        ("-5", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_request_start_is_read_in_seconds_milliseconds_or_microseconds(
    value: str, expected: float | None
) -> None:
    assert parse_request_start(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("250", 0.25), ("0.5", 0.0005), ("0", None), ("-1", None), ("x", None), ("nan", None)],
)
def test_a_budget_header_is_milliseconds_and_zero_is_no_deadline(
    value: str, expected: float | None
) -> None:
    assert parse_timeout(value) == expected


def test_the_budget_counts_from_arrival_or_from_the_proxys_start() -> None:
    clock = Clock(1000.0)
    policy = shedder(clock)
    arrived = {QUEUED_AT: clock.now - 0.040}
    assert policy.time_left(arrived) is None  # no budget given: no deadline
    assert policy.time_left({**arrived, "HTTP_X_REQUEST_TIMEOUT_MS": "250"}) == pytest.approx(0.210)
    # The smaller of both budgets; the proxy's start, 100 ms ago, is earlier than the arrival.
    both = {
        **arrived,
        "HTTP_X_REQUEST_TIMEOUT_MS": "250",
        "HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS": "200",
        "HTTP_X_REQUEST_START": "t=1699999999.900",
    }
    assert policy.time_left(both) == pytest.approx(0.100)
    # A proxy clock behind ours cannot make the request younger than its wait here.
    ahead = {**both, "HTTP_X_REQUEST_START": "t=1700000005.000"}
    assert policy.time_left(ahead) == pytest.approx(0.160)


def test_a_deadline_passed_or_shorter_than_scoring_is_refused() -> None:
    clock = Clock(1000.0)
    policy = shedder(clock)
    start = {QUEUED_AT: clock.now - 0.300, "HTTP_X_REQUEST_TIMEOUT_MS": "250"}
    refusal = policy.check(start)
    assert refusal is not None and refusal.reason == "deadline"
    assert refusal.detail == "overloaded: deadline - the client's deadline passed 50 ms ago"

    for _ in range(100):
        policy.record_service(0.020)
    assert policy.service_time == pytest.approx(0.020, rel=0.001)
    tight = {QUEUED_AT: clock.now, "HTTP_X_REQUEST_TIMEOUT_MS": "15"}
    refusal = policy.check(tight)
    assert refusal is not None and refusal.reason == "deadline"
    assert "15 ms left of the client's deadline; scoring takes about 20 ms" in refusal.detail
    assert policy.check({QUEUED_AT: clock.now, "HTTP_X_REQUEST_TIMEOUT_MS": "25"}) is None


def test_the_client_is_probed_only_after_a_wait_past_the_target() -> None:
    clock = Clock(1000.0)
    probed: list[Any] = []

    def gone(sock: Any) -> bool:
        probed.append(sock)
        return True

    policy = shedder(clock, probe=gone)
    assert policy.check_client({QUEUE_DELAY: 0.004, "gunicorn.socket": "s1"}) is None
    assert policy.check_client({"gunicorn.socket": "s2"}) is None  # wait unknown
    refusal = policy.check_client({QUEUE_DELAY: 0.300, "gunicorn.socket": "s3"})
    assert probed == ["s3"]
    assert refusal is not None and refusal.reason == "disconnected" and refusal.close
    assert refusal.detail == (
        "overloaded: disconnected - the client closed its connection while the request"
        " waited 300 ms"
    )


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection: (server side, client side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with server, client:
        yield server, client


def test_a_client_with_its_connection_open_is_there(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    server, client = connection
    assert not client_gone(server)
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")  # a pipelined request waiting: still there
    assert not client_gone(server)
    assert server.recv(100)  # and the peek consumed nothing


def test_a_client_that_closed_or_half_closed_is_gone(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    server, client = connection
    client.shutdown(socket.SHUT_WR)  # a half-close reads the same as a close: taken as gone
    assert client_gone(server)
    assert not client_gone("not a socket")


def test_every_refusal_reason_is_a_counted_reason() -> None:
    clock = Clock(1000.0)
    policy = shedder(clock, probe=lambda sock: True)
    overload(policy.codel, clock)
    refusals = [
        policy.check({QUEUE_DELAY: 0.020}),
        policy.check({QUEUE_DELAY: 0.500}),
        policy.check({"HTTP_X_REQUEST_TIMEOUT_MS": "1", QUEUED_AT: clock.now - 1}),
        policy.check_client({QUEUE_DELAY: 0.500}),
    ]
    assert [r.reason for r in refusals if r is not None] == list(SHED_REASONS)


def shedding_app(**settings: Any) -> tuple[Flask, Metrics]:
    metrics = Metrics()
    model = validate_model(fakes.echo_model([]), "m.pkl")
    return create_app(make_settings(**settings), model, metrics=metrics), metrics


def test_a_refusal_is_a_503_with_retry_after_counted_by_reason() -> None:
    app, metrics = shedding_app(SHED_MAX_QUEUE_MS=100, SHED_WARMUP_SECONDS=0)
    waited = {QUEUE_DELAY: 0.250, QUEUED_AT: 0.0}
    response = app.test_client().post("/score", json={"streams": []}, environ_base=waited)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Server-Timing"].startswith("queue;dur=250.00, app;dur=")
    assert response.json == {
        "detail": "overloaded: queue_limit - waited 250 ms for a worker thread,"
        " over the 100 ms limit"
    }
    assert sample(metrics, "scorer_requests_shed_total", reason="queue_limit") == 1
    assert sample(metrics, "scorer_requests_total", endpoint="/score", status="503") == 1
    assert sample(metrics, "scorer_queue_delay_seconds_count") == 1
    assert sample(metrics, "scorer_request_duration_seconds_count") == 0  # not a scored time
    assert sample(metrics, "scorer_inflight_requests") == 0


def test_with_shedding_off_a_late_request_is_scored() -> None:
    app, metrics = shedding_app(SHED_MAX_QUEUE_MS=100, SHEDDING="false")
    waited = {QUEUE_DELAY: 0.250, QUEUED_AT: 0.0}
    response = app.test_client().post("/score", json={"streams": []}, environ_base=waited)

    assert response.status_code == 200
    assert response.headers["Server-Timing"].startswith("queue;dur=250.00, app;dur=")
    assert sample(metrics, "scorer_queue_delay_seconds_count") == 1


def test_without_a_queue_stamp_server_timing_has_the_app_time_only() -> None:
    app, _ = shedding_app()
    response = app.test_client().post("/score", json={"streams": []})

    assert response.status_code == 200
    assert response.headers["Server-Timing"].startswith("app;dur=")


# --- on arrival: the same rules on the wait of the request longest in line -------------------


def test_on_arrival_a_line_over_the_cap_is_refused_naming_the_line() -> None:
    clock = Clock(1000.0)
    refusal = shedder(clock).check_arrival(0.150, 12, {})
    assert refusal is not None and refusal.reason == "queue_limit"
    assert refusal.detail == (
        "overloaded: queue_limit - 12 in line for a worker thread, about 150 ms to wait,"
        " over the 100 ms limit"
    )
    assert shedder(clock).check_arrival(0.090, 7, {}) is None  # under the cap, no standing queue


def test_on_arrival_a_standing_queue_refuses_a_line_over_twice_the_target() -> None:
    clock = Clock(1000.0)
    policy = shedder(clock)
    assert policy.check_arrival(0.020, 2, {}) is None  # no interval has seen a standing queue
    overload(policy.codel, clock)
    assert policy.codel.standing()
    refusal = policy.check_arrival(0.020, 2, {})
    assert refusal is not None and refusal.reason == "queue"
    assert policy.check_arrival(0.008, 1, {}) is None  # within twice the target


def test_standing_reads_the_interval_that_just_ended_without_observing() -> None:
    clock = Clock(1000.0)
    codel = Codel(TARGET, INTERVAL, clock)
    clock.now += INTERVAL  # past the interval the policy was made in
    feed(codel, clock, [0.020] * 5)  # an interval in which every wait is over the target
    assert not codel.standing()  # still inside it
    clock.now += INTERVAL
    assert codel.standing()  # it ended overloaded: a request over 2x target is shed now
    assert not codel.should_shed(0.020)  # the request that opens the next interval is not
    assert codel.should_shed(0.020)  # but the next one is, as standing() said


def test_on_arrival_a_deadline_shorter_than_the_line_is_refused() -> None:
    clock = Clock(1000.0)
    policy = shedder(clock, max_queue=0)
    policy.record_service(0.040)  # scoring takes 5 ms on average
    assert policy.check_arrival(0.200, 9, {"x-request-timeout-ms": "1000"}) is None
    refusal = policy.check_arrival(0.300, 9, {"x-request-timeout-ms": "250"})
    assert refusal is not None and refusal.reason == "deadline"
    assert refusal.detail == (
        "overloaded: deadline - 9 in line for a worker thread, about 300 ms to wait, over a"
        " quarter of the client's 250 ms budget"
    )
    # A proxy's start stamp counts: its budget passed before the request got here.
    stale = f"t={1_700_000_000.0 - 1.0:.3f}"
    refusal = policy.check_arrival(
        0.001, 1, {"x-envoy-expected-rq-timeout-ms": "500", "x-request-start": stale}
    )
    assert refusal is not None and refusal.detail.startswith(
        "overloaded: deadline - the client's deadline passed 500 ms ago"
    )


def test_on_arrival_a_new_worker_refuses_no_wait_while_warming_up() -> None:
    clock = Clock(1000.0)
    policy = shedder(clock, warmup=5.0)
    assert policy.check_arrival(10.0, 50, {}) is None
    refusal = policy.check_arrival(10.0, 50, {"x-request-timeout-ms": "100"})
    assert refusal is not None and refusal.reason == "deadline"


def test_a_request_let_in_on_arrival_is_refused_only_well_past_its_wait() -> None:
    clock = Clock(1000.0)
    policy = shedder(clock)
    overload(policy.codel, clock)
    # Let in expecting 15 ms, with a 5 ms target: held to a standing queue past 2 x 15 + 10 ms.
    assert policy.check({QUEUE_DELAY: 0.035, ADMITTED: 0.015}) is None
    assert policy.check({QUEUE_DELAY: 0.035}) is not None  # CoDel saw that delay all the same
    refusal = policy.check({QUEUE_DELAY: 0.045, ADMITTED: 0.015})
    assert refusal is not None and refusal.reason == "queue"
    # Let in at once (a short line, expecting nothing): twice the target is its wait (30 ms).
    assert policy.check({QUEUE_DELAY: 0.025, ADMITTED: 0.0}) is None
    assert policy.check({QUEUE_DELAY: 0.035, ADMITTED: 0.0}) is not None


def test_a_wait_past_a_quarter_of_the_clients_budget_is_refused_while_it_can_go_elsewhere() -> None:
    clock = Clock(1000.0)
    policy = shedder(clock, max_queue=0)
    assert policy.check({QUEUE_DELAY: 0.060, "HTTP_X_REQUEST_TIMEOUT_MS": "250"}) is None
    refusal = policy.check({QUEUE_DELAY: 0.070, "HTTP_X_REQUEST_TIMEOUT_MS": "250"})
    assert refusal is not None and refusal.reason == "deadline"
    assert "over a quarter of the client's 250 ms budget" in refusal.detail
    assert policy.check({QUEUE_DELAY: 0.070}) is None  # no budget announced: no such cap
