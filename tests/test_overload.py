"""Overload under real `gunicorn -c gunicorn.conf.py`: requests refused fast, none lost silently.

The model records every request it runs in a file, and holds its thread for a user id
`sleep:N`, so a test can fill a worker's threads and then see which requests ran. Nothing here
asserts a duration: queue delays are made long (seconds) so that each outcome is certain.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.local_stack import free_port
from tests import fakes
from tests.conftest import sample_value
from tests.servers import Server, gunicorn_env, start_service, stop_service, wait_until

REASONS = ("queue", "queue_limit", "deadline", "disconnected")


def start(tmp: Path, emulator: int, workers: int, **values: str) -> tuple[Server, Path]:
    calls = tmp / "calls.txt"
    calls.touch()
    model = tmp / "recording.pkl"
    model.write_bytes(fakes.pickle_by_value(fakes.recording_model(str(calls))))
    env = gunicorn_env(
        emulator,
        PORT=str(free_port()),
        MODEL_PATH=str(model),
        WEB_CONCURRENCY=str(workers),
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
        SHED_WARMUP_SECONDS="0",  # the bursts below come right after start
        **values,
    )
    return start_service(env, tmp, workers=workers), calls


@pytest.fixture(scope="module")
def service(emulator: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """2 workers of 2 threads; a request waiting over 300 ms for a thread is refused."""
    server, _ = start(
        tmp_path_factory.mktemp("overload"), emulator, 2, THREADS="2", SHED_MAX_QUEUE_MS="300"
    )
    yield server
    stop_service(server)


def calls_of(server: Server) -> list[str]:
    return (server.log.parent / "calls.txt").read_text().split()


def body_for(userid: str) -> bytes:
    return json.dumps({"user": {"userid": userid}, "streams": [{"streamUrl": "s"}]}).encode()


def request_bytes(userid: str, **headers: str) -> bytes:
    body = body_for(userid)
    head = [
        "POST /score HTTP/1.1",
        "Host: scorer",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Read one response with a Content-Length body, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        rest += chunk
    return int(lines[0].split()[1]), headers, json.loads(rest[:length])


def exchange(server: Server, raw: bytes) -> tuple[int, dict[str, str], Any]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(raw)
        return read_response(sock)


def shed_counts(server: Server) -> dict[str, float]:
    text = server.metrics()
    counts = {r: sample_value(text, "scorer_requests_shed_total", f'reason="{r}"') for r in REASONS}
    counts["503"] = sample_value(text, "scorer_requests_total", 'endpoint="/score",status="503"')
    return counts


def reason_of(answer: Any) -> str:
    detail = str(answer["detail"])
    assert detail.startswith("overloaded: "), detail
    return detail.removeprefix("overloaded: ").split(" ")[0]


def test_every_reason_is_exported_from_the_start(service: Server) -> None:
    text = service.metrics()
    for reason in REASONS:
        assert f'scorer_requests_shed_total{{reason="{reason}"}}' in text
    assert "scorer_inflight_requests " in text
    assert "scorer_queue_delay_seconds_bucket" in text


def test_a_burst_against_a_slow_model_is_refused_fast_and_counted(service: Server) -> None:
    before = shed_counts(service)
    burst = 24  # 4 threads, 0.5 s each: most of the burst would wait far past 300 ms
    barrier = threading.Barrier(burst)
    answers: list[tuple[int, dict[str, str], Any]] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        raw = request_bytes("sleep:0.5")
        barrier.wait(timeout=30)
        answer = exchange(service, raw)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(burst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    statuses = Counter(status for status, _, _ in answers)
    assert statuses[200] + statuses[503] == burst, statuses  # every request answered, no other
    assert statuses[200] >= 1 and statuses[503] >= 1, statuses
    refused = [(headers, answer) for status, headers, answer in answers if status == 503]
    assert all(headers["retry-after"] == "1" for headers, _ in refused)
    assert all("server-timing" in headers for _, headers, _ in answers)
    by_reason = Counter(reason_of(answer) for _, answer in refused)
    assert set(by_reason) <= {"queue", "queue_limit"}, by_reason
    after = shed_counts(service)
    assert after["503"] - before["503"] == statuses[503]
    assert {r: after[r] - before[r] for r in REASONS} == {r: by_reason[r] for r in REASONS}
    assert calls_of(service).count("sleep:0.5") == statuses[200]  # refused: the model never ran


def test_a_request_whose_deadline_has_passed_is_refused_without_the_model(
    service: Server,
) -> None:
    before = shed_counts(service)
    ten_seconds_ago = f"t={time.time() - 10:.3f}"
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(
            request_bytes("late-1", X_Request_Start=ten_seconds_ago, X_Request_Timeout_Ms="250")
        )
        status, headers, answer = read_response(sock)
        assert status == 503, answer
        assert reason_of(answer) == "deadline"
        assert headers["retry-after"] == "1"
        assert headers.get("connection", "").lower() != "close"

        # Envoy's header, on the same connection: the refused body was drained, the
        # connection is still usable.
        sock.sendall(
            request_bytes(
                "late-2",
                X_Request_Start=str(int((time.time() - 10) * 1000)),  # in ms, as Heroku sets it
                x_envoy_expected_rq_timeout_ms="100",
            )
        )
        status, _, answer = read_response(sock)
        assert status == 503, answer
        assert reason_of(answer) == "deadline"

        # A deadline that can be met is scored, on the same connection still.
        sock.sendall(request_bytes("in-time", X_Request_Timeout_Ms="60000"))
        status, headers, answer = read_response(sock)
        assert status == 200, answer
        assert answer["user"] == "in-time"
        timing = headers["server-timing"]
        assert timing.startswith("queue;dur=") and ", app;dur=" in timing, timing

    after = shed_counts(service)
    assert after["deadline"] - before["deadline"] == 2
    assert after["503"] - before["503"] == 2
    assert "late-1" not in calls_of(service) and "late-2" not in calls_of(service)
    assert "in-time" in calls_of(service)


def test_a_client_that_left_before_its_turn_does_not_run_the_model(
    emulator: int, tmp_path: Path
) -> None:
    # One thread: a request sent behind a slow one waits for it, whatever the load.
    server, calls = start(tmp_path, emulator, 1, THREADS="1", SHED_MAX_QUEUE_MS="60000")
    try:
        slow: list[int] = []
        worker = threading.Thread(
            target=lambda: slow.append(exchange(server, request_bytes("sleep:2"))[0])
        )
        worker.start()
        assert wait_until(lambda: "sleep:2" in calls.read_text(), 30), "the slow call never ran"

        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(request_bytes("gone"))  # then closed at once: the client gives up

        worker.join(timeout=60)
        assert slow == [200]
        assert wait_until(lambda: shed_counts(server)["disconnected"] == 1, 30)
        assert shed_counts(server)["503"] == 1
        assert "gone" not in calls.read_text().split()
    finally:
        stop_service(server)
