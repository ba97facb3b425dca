"""How new connections spread over the workers, and each worker's switch interval: real gunicorn."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from examples.local_stack import free_port
from scorer.serving.balancing import ACCEPT_DEFER_SECONDS, Balancer
from tests import fakes
from tests.fakes import Clock
from tests.servers import Server, gunicorn_env, start_service, stop_service

THREADS = 3
CONNECTIONS = 2 * THREADS


@pytest.fixture(scope="module")
def server(emulator: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("balancing")
    model = tmp / "where.pkl"
    model.write_bytes(
        fakes.pickle_by_value(fakes.echo_model(features=[], predict=fakes.where_predict))
    )
    env = gunicorn_env(
        emulator,
        PORT=str(free_port()),
        MODEL_PATH=str(model),
        THREADS=str(THREADS),
        SWITCH_INTERVAL_MS="0.5",
        SHEDDING="false",  # the burst below queues on purpose
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
    )
    server = start_service(env, tmp)
    yield server
    stop_service(server)


def score(conn: http.client.HTTPConnection, sleep: float) -> dict[str, float]:
    body = json.dumps({"user": {"sleep": sleep}, "streams": [{"streamUrl": "s"}]})
    conn.request("POST", "/score", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    answer: dict[str, float] = json.loads(response.read())
    return answer


def test_connections_opened_one_after_another_spread_over_both_workers(server: Server) -> None:
    # Each connection's first request keeps a thread busy past the last connection's arrival,
    # so every worker has to choose while the others are busy: the less busy one must take it.
    pids: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            pid = int(score(conn, 2.0)["pid"])
            for _ in range(3):  # kept alive: the same worker answers again
                assert int(score(conn, 0)["pid"]) == pid
        finally:
            conn.close()
        with lock:
            pids.append(pid)

    clients = [threading.Thread(target=client) for _ in range(CONNECTIONS)]
    for thread in clients:
        thread.start()
        time.sleep(0.15)  # one connection at a time, each request still running at the last
    for thread in clients:
        thread.join(timeout=60)

    assert len(pids) == CONNECTIONS
    assert sorted(Counter(pids).values()) == [THREADS, THREADS], Counter(pids)


def test_each_worker_runs_with_the_configured_switch_interval(server: Server) -> None:
    for _ in range(4):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            assert score(conn, 0)["switch_interval"] == pytest.approx(0.0005)
        finally:
            conn.close()


# --- the balancer alone --------------------------------------------------------------------


def test_a_worker_with_half_its_threads_free_takes_a_connection_at_once() -> None:
    balancer = Balancer(threads=4, clock=Clock(10.0))
    assert not balancer.should_defer(active=1)
    assert balancer.may_accept()
    assert balancer.poll_timeout(1.0) == 1.0


def test_a_busy_worker_steps_aside_then_takes_the_connection_nobody_took() -> None:
    clock = Clock(10.0)
    balancer = Balancer(threads=4, clock=clock)
    assert balancer.should_defer(active=3)  # two past half its threads: 2 x 2 ms aside
    assert not balancer.may_accept()
    assert abs(balancer.poll_timeout(1.0) - 2 * ACCEPT_DEFER_SECONDS) < 1e-9
    clock.now += 2 * ACCEPT_DEFER_SECONDS
    assert balancer.may_accept()
    assert not balancer.should_defer(active=3)  # still there: this worker takes it
    assert balancer.should_defer(active=3)  # the next arrival waits its turn again


def test_the_less_busy_of_two_busy_workers_takes_the_connection_first() -> None:
    clock = Clock(10.0)
    less, more = Balancer(threads=4, clock=clock), Balancer(threads=4, clock=clock)
    assert less.should_defer(active=2) and more.should_defer(active=4)
    clock.now += ACCEPT_DEFER_SECONDS
    assert less.may_accept() and not more.may_accept()


def test_a_worker_queueing_past_its_threads_takes_every_waiting_connection() -> None:
    clock = Clock(10.0)
    balancer = Balancer(threads=2, clock=clock)
    assert balancer.should_defer(active=3)
    clock.now += 3 * ACCEPT_DEFER_SECONDS
    assert not balancer.should_defer(active=3)
    assert not balancer.should_defer(active=4)  # the backlog is emptied, not trickled
    clock.now += 1.0  # long after: a new arrival is deferred afresh
    assert balancer.should_defer(active=3)


def test_after_a_deferral_ends_the_poll_is_not_shortened() -> None:
    clock = Clock(10.0)
    balancer = Balancer(threads=4, clock=clock)
    balancer.should_defer(active=2)
    clock.now += 1.0
    assert balancer.poll_timeout(1.0) == 1.0  # no busy loop on a deferral long over
