"""The event log for real: gunicorn with 2 workers publishing to a tansu broker on 127.0.0.1.

Every logged answer arrives once; a stalled broker before a stop or a reload loses nothing; a
broker that is away changes no answer, no latency, and its drops are counted.
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from examples.local_kafka import create_topic, read_events, start_tansu
from examples.local_stack import free_port
from scorer.eventlog.event import is_logged
from tests import fakes
from tests.conftest import Broker, counter_total, sample_value
from tests.servers import Server, gunicorn_env, start_service, stop_service, wait_until, worker_pids


def serve(emulator: int, tmp: Path, bootstrap: str, topic: str, **values: str) -> Iterator[Server]:
    model = tmp / "ranker.pkl"
    model.write_bytes(fakes.pickle_by_value(fakes.echo_model([], predict=fakes.echo_pid_predict)))
    env = gunicorn_env(
        emulator,
        PORT=str(free_port()),
        MODEL_PATH=str(model),
        MODEL_POLL_SECONDS="0",
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
        SHEDDING="false",
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        KAFKA_TOPIC=topic,
        **{"KAFKA_FRACTION": "1", **values},
    )
    server = start_service(env, tmp)
    try:
        yield server
    finally:
        stop_service(server)


@pytest.fixture
def server(emulator: int, kafka: Broker, topic: str, tmp_path: Path) -> Iterator[Server]:
    yield from serve(emulator, tmp_path, kafka.bootstrap, topic)


def body(userid: str) -> dict[str, Any]:
    return {
        "user": {"userid": userid},
        "streams": [{"streamUrl": f"https://s/{userid}/{n}"} for n in range(3)],
        "playlist": {"clientOs": "ios", "playlistId": 7, "category": "news"},
    }


def score_all(server: Server, userids: list[str]) -> dict[str, Any]:
    """Score one request per user; return each user's answer (every one must be a 200)."""
    answers = {}
    for userid in userids:
        status, answer = server.post("/score?source=test", body(userid))
        assert status == 200, answer
        answers[userid] = answer
    return answers


def arrived(kafka: Broker, topic: str, expected: int, seconds: float = 20) -> dict[str, Any]:
    """Read the topic; return the events by key, failing on a duplicate or a key not a userid."""
    events = read_events(kafka.bootstrap, topic, expected, seconds)
    by_key = {}
    for key, value in events:
        event = orjson.loads(value)
        assert key is not None and key.decode() == event["userid"]
        assert key.decode() not in by_key, f"{key!r} arrived twice"
        by_key[key.decode()] = event
    return by_key


def test_every_logged_users_answer_arrives_once_with_the_seeds_fields(
    emulator: int, kafka: Broker, topic: str, tmp_path: Path
) -> None:
    users = [f"viewer-{n}" for n in range(120)]
    logged = {u for u in users if is_logged(u, 0.3)}
    servers = serve(emulator, tmp_path, kafka.bootstrap, topic, KAFKA_FRACTION="0.3")
    server = next(servers)

    answers = score_all(server, users)
    events = arrived(kafka, topic, len(logged))

    assert set(events) == logged
    assert {answers[u]["pid"] for u in logged} == worker_pids(server.process.pid)  # both workers
    for userid, event in events.items():
        assert event["model_output"] == answers[userid]
        assert event["model_input"] == body(userid)
        assert (event["client_os"], event["model_name"], event["model_type"]) == (
            "ios",
            "ranker",
            "streams",
        )
        assert event["meta"]["query_params"] == {"source": "test"}
        assert event["meta"]["playlist_id"] == "7"
    metrics = server.metrics()
    assert counter_total(metrics, "scorer_events_delivered_total") == len(logged)
    assert counter_total(metrics, "scorer_events_dropped_total") == 0
    next(servers, None)


def stalled_then(server: Server, kafka: Broker, users: list[str], sig: signal.Signals) -> None:
    """Answer every user's request while the broker is paused, signal gunicorn, resume 1 s on."""
    kafka.pause()
    try:
        score_all(server, users)
        server.process.send_signal(sig)
        time.sleep(1)
    finally:
        kafka.resume()


def test_events_queued_behind_a_stalled_broker_arrive_after_a_stop(
    server: Server, kafka: Broker, topic: str
) -> None:
    users = [f"stop-{n}" for n in range(200)]

    stalled_then(server, kafka, users, signal.SIGTERM)

    assert server.process.wait(timeout=40) == 0
    assert set(arrived(kafka, topic, 200)) == set(users)
    assert "not flushed" not in server.log.read_text()


def test_events_queued_behind_a_stalled_broker_arrive_across_a_reload(
    server: Server, kafka: Broker, topic: str
) -> None:
    users = [f"hup-{n}" for n in range(200)]
    old = worker_pids(server.process.pid)

    stalled_then(server, kafka, users, signal.SIGHUP)

    assert wait_until(lambda: not old & worker_pids(server.process.pid), 30)
    assert set(arrived(kafka, topic, 200)) == set(users)


def test_a_reload_between_two_batches_loses_and_doubles_nothing(
    server: Server, kafka: Broker, topic: str
) -> None:
    first, second = [f"a-{n}" for n in range(100)], [f"b-{n}" for n in range(100)]
    old = worker_pids(server.process.pid)

    score_all(server, first)
    server.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: len(worker_pids(server.process.pid) - old) == 2, 30)
    assert wait_until(lambda: not old & worker_pids(server.process.pid), 30)
    score_all(server, second)

    assert set(arrived(kafka, topic, 200)) == set(first + second)


def p99(server: Server, users: list[str]) -> float:
    """Return the 99th percentile of the time to answer each user's request, one at a time."""
    seconds = []
    for userid in users:
        started = time.perf_counter()
        status, _ = server.post("/score", body(userid))
        seconds.append(time.perf_counter() - started)
        assert status == 200
    return sorted(seconds)[int(len(seconds) * 0.99) - 1]


def test_a_broker_away_changes_no_answer_nor_latency_and_drops_are_counted(
    emulator: int, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there yet: the service must start all the same
    bootstrap = f"127.0.0.1:{port}"
    queue = 50
    servers = serve(emulator, tmp_path, bootstrap, "away", KAFKA_QUEUE_MAX_MESSAGES=str(queue))
    server = next(servers)
    broker: subprocess.Popen[bytes] | None = None
    try:
        down = p99(server, [f"down-{n}" for n in range(300)])
        with urllib.request.urlopen(server.url("/health"), timeout=5) as health:
            assert health.status == 200
        metrics = server.metrics()
        dropped = sample_value(metrics, "scorer_events_dropped_total", 'reason="queue_full"')
        queued = counter_total(metrics, "scorer_events_queued_total")
        assert queued <= 2 * queue
        assert dropped == 300 - queued

        broker = start_tansu(port)
        create_topic(bootstrap, "away")
        assert wait_until(
            lambda: counter_total(server.metrics(), "scorer_events_delivered_total") > 0, 30
        )
        up = p99(server, [f"up-{n}" for n in range(300)])

        assert down <= up + 0.020, (down, up)
    finally:
        next(servers, None)  # stops gunicorn
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
