"""Failing dependencies: real gunicorn, moto over HTTP, and a fault-injecting proxy in between.

The service reads DynamoDB through `tests/faultproxy.py` (AWS_ENDPOINT_URL_DYNAMODB) and S3
straight from moto. Each test uses stream URLs of its own, and reads and writes through one
kept-alive connection where it needs the same worker (and so the same cache) for every request.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from examples.local_stack import aws_client, create_features_table, free_port, upload_model
from tests import fakes
from tests.conftest import counter_total, sample_value, seed_features
from tests.faultproxy import (
    BATCH_GET,
    CLOSE,
    DELAY,
    FAIL_500,
    PASS,
    THROTTLE,
    UNPROCESSED,
    FaultProxy,
)
from tests.servers import (
    Server,
    gunicorn_env,
    run_gunicorn,
    start_service,
    stop_service,
    wait_until,
    worker_pids,
)

TABLE = "fault-features"
NAMES = fakes.FEATURES
BUDGET = 0.5  # FEATURE_TIMEOUT_SECONDS: room for 3 emulator round trips on a busy machine
BOUND = 4 * BUDGET  # answered within the budget, with slack; an unbounded slow read takes > 3 s
PTEE = "ProvisionedThroughputExceededException"
_urls = (f"https://faults/{n}" for n in itertools.count())


@dataclass
class Stack:
    server: Server
    proxy: FaultProxy
    emulator: int
    connections: list[Connection] = field(default_factory=list)

    def connect(self) -> Connection:
        """Open a client connection, closed when the test ends."""
        connection = Connection(self.server.port)
        self.connections.append(connection)
        return connection

    def metrics(self) -> str:
        return self.server.metrics()


class Connection:
    """One kept-alive client connection, so every request lands on the same worker."""

    def __init__(self, port: int) -> None:
        self._http = http.client.HTTPConnection("127.0.0.1", port, timeout=20)

    def score(self, *urls: str) -> tuple[int, dict[str, dict[str, Any]], float]:
        """POST /score; return the status, the features each url came back with, the seconds."""
        body = {"user": {"userid": "u"}, "streams": [{"streamUrl": u} for u in urls]}
        started = time.monotonic()
        self._http.request(
            "POST", "/score", body=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        response = self._http.getresponse()
        answer = json.loads(response.read())
        elapsed = time.monotonic() - started
        features = {
            s["streamUrl"]: {k: v for k, v in s.items() if k != "streamUrl"}
            for s in answer.get("streams", [])
        }
        return response.status, features, elapsed

    def close(self) -> None:
        self._http.close()


def full(url: str) -> dict[str, str]:
    return {n: f"{url}|{n}" for n in NAMES}


def fresh(count: int, emulator: int) -> list[str]:
    """Return new stream URLs with all their features in the table."""
    urls = [next(_urls) for _ in range(count)]
    seed_features(aws_client("dynamodb", emulator), TABLE, urls, NAMES)
    return urls


def degraded(text: str) -> float:
    return counter_total(text, "scorer_degraded_requests_total")


def errors(text: str, error: str) -> float:
    return sample_value(text, "scorer_dynamodb_errors_total", f'error="{error}"')


@pytest.fixture(scope="module")
def stack(emulator: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("faults")
    create_features_table(aws_client("dynamodb", emulator), TABLE)
    model = upload_model(
        aws_client("s3", emulator),
        "fault-models",
        "echo.pkl",
        fakes.pickle_by_value(fakes.echo_model()),
    )
    proxy = FaultProxy(emulator)
    env = gunicorn_env(
        emulator,
        PORT=str(free_port()),
        S3_MODEL_PATH=model,
        FEATURES_TABLE=TABLE,
        FEATURE_TIMEOUT_SECONDS=str(BUDGET),
        AWS_ENDPOINT_URL_DYNAMODB=proxy.url,
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
        # A wave of 8 requests meets 2 x 4 threads unevenly, and a slow store makes a request
        # wait a whole budget for a thread: shedding would refuse it (tests/test_overload.py).
        SHEDDING="false",
    )
    server = start_service(env, tmp)
    yield Stack(server, proxy, emulator)
    stop_service(server)
    proxy.close()


@pytest.fixture
def faults(stack: Stack) -> Iterator[Stack]:
    """The stack, with the proxy back to passing everything through after the test."""
    yield stack
    stack.proxy.listen()
    stack.proxy.set_mode(PASS)
    while stack.connections:
        stack.connections.pop().close()


# --- the store unreachable -----------------------------------------------------------------
@pytest.mark.parametrize("fault", ["refused", CLOSE, FAIL_500])
def test_unreachable_store_scores_from_cache_then_recovers_without_restart(
    faults: Stack, fault: str
) -> None:
    cached, uncached = fresh(2, faults.emulator)
    pids = worker_pids(faults.server.process.pid)
    connection = faults.connect()
    assert connection.score(cached)[1] == {cached: full(cached)}
    before = faults.metrics()

    if fault == "refused":
        faults.proxy.refuse()
    else:
        faults.proxy.set_mode(fault)
    status, features, elapsed = connection.score(cached, uncached)

    assert status == 200
    assert features == {cached: full(cached), uncached: {}}
    assert elapsed < BOUND
    assert degraded(faults.metrics()) >= degraded(before) + 1

    faults.proxy.listen()
    faults.proxy.set_mode(PASS)
    assert wait_until(lambda: connection.score(uncached)[1] == {uncached: full(uncached)}, 10)
    assert worker_pids(faults.server.process.pid) == pids  # same workers: no restart


# --- throttling ----------------------------------------------------------------------------
def test_transient_unprocessed_keys_are_retried_within_the_budget(faults: Stack) -> None:
    urls = fresh(4, faults.emulator)  # 12 keys, one BatchGetItem chunk
    before, calls = faults.metrics(), faults.proxy.seen[BATCH_GET]
    faults.proxy.set_mode(UNPROCESSED, times=2)  # 6 keys come back unprocessed, then 3

    status, features, elapsed = faults.connect().score(*urls)

    after = faults.metrics()
    assert status == 200
    assert features == {u: full(u) for u in urls}
    assert elapsed < BOUND
    assert faults.proxy.seen[BATCH_GET] - calls == 3
    unprocessed = "scorer_dynamodb_unprocessed_keys_total"
    assert sample_value(after, unprocessed) - sample_value(before, unprocessed) == 9
    assert degraded(after) == degraded(before)


def test_persistent_unprocessed_keys_degrade_and_are_not_cached_as_absent(faults: Stack) -> None:
    urls = fresh(2, faults.emulator)
    before = faults.metrics()
    faults.proxy.set_mode(UNPROCESSED)  # every answer hands back half its keys, forever
    connection = faults.connect()

    status, features, elapsed = connection.score(*urls)

    assert status == 200
    assert elapsed < BOUND
    assert features != {u: full(u) for u in urls}  # the last key never comes back
    assert degraded(faults.metrics()) > degraded(before)  # "unprocessed", or "timeout" if slow

    faults.proxy.set_mode(PASS)
    # Same worker: what was unprocessed is read again, not remembered as "not in the table".
    assert connection.score(*urls)[1] == {u: full(u) for u in urls}


def test_transient_throughput_exceeded_is_retried_within_the_budget_and_counted(
    faults: Stack,
) -> None:
    before = faults.metrics()
    results = []
    for _ in range(3):  # three requests, each meeting one throttled call
        urls = fresh(2, faults.emulator)
        faults.proxy.set_mode(THROTTLE, times=1)
        status, features, elapsed = faults.connect().score(*urls)
        results.append((status, features == {u: full(u) for u in urls}, elapsed < BOUND))

    counted = wait_until(lambda: errors(faults.metrics(), PTEE) >= errors(before, PTEE) + 3, 5)
    # The features still arrive, the call retried inside each request's budget, and operators
    # can see the throttling on /metrics.
    assert (results, counted) == ([(200, True, True)] * 3, True)


def test_persistent_throttling_degrades_within_the_budget_and_is_counted(faults: Stack) -> None:
    urls = fresh(2, faults.emulator)
    before = faults.metrics()
    faults.proxy.set_mode(THROTTLE)

    status, features, elapsed = faults.connect().score(*urls)

    assert (status, features, elapsed < BOUND) == (200, {u: {} for u in urls}, True)
    assert degraded(faults.metrics()) >= degraded(before) + 1
    # botocore gives up after DYNAMODB_MAX_ATTEMPTS (its backoff may outlast the request).
    assert wait_until(lambda: errors(faults.metrics(), PTEE) > errors(before, PTEE), 15)


# --- a slow store --------------------------------------------------------------------------
def test_slow_store_costs_features_not_latency(faults: Stack) -> None:
    before = faults.metrics()
    faults.proxy.set_mode(DELAY, seconds=5)  # past DYNAMODB_READ_TIMEOUT (1 s), every attempt
    timeout = 'reason="timeout"'

    def one(url: str) -> tuple[int, bool, bool]:
        status, features, elapsed = faults.connect().score(url)
        return status, features == {url: {}}, elapsed < BOUND

    with ThreadPoolExecutor(8) as pool:
        waves = [list(pool.map(one, fresh(8, faults.emulator))) for _ in range(2)]

    # Every request answered in time, without features; the second wave did not queue
    # behind the first one's reads, still stuck in the fetch pools.
    assert waves == [[(200, True, True)] * 8] * 2
    after = faults.metrics()
    assert (
        sample_value(after, "scorer_degraded_requests_total", timeout)
        - sample_value(before, "scorer_degraded_requests_total", timeout)
        == 16
    )


# --- start-up ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case",
    [
        "s3 unreachable",
        "missing key",
        "corrupt bytes",
        "no predict",
        "sha256 mismatch",
        "features not strings",
    ],
)
def test_unusable_model_stops_start_up_with_one_line(
    case: str, emulator: int, tmp_path: Path
) -> None:
    s3 = aws_client("s3", emulator)
    bucket = "startup-" + hashlib.sha256(case.encode()).hexdigest()[:8]
    good = fakes.pickle_by_value(fakes.echo_model())
    data = {
        "corrupt bytes": good[: len(good) // 2],
        "no predict": fakes.pickle_by_value({"preprocess": fakes.echo_preprocess}),
        # A 2-D array: its truth value is ambiguous, which used to escape as a ValueError.
        "features not strings": fakes.pickle_by_value(
            fakes.echo_model(stream_features=np.array([["f1", "f2"], ["f3", "f4"]]))
        ),
    }.get(case, good)
    path = upload_model(s3, bucket, "ranker.pkl", data)
    values = {"S3_MODEL_PATH": path}
    expected = {
        "s3 unreachable": f"cannot download {path}: Could not connect to the endpoint URL",
        "missing key": f"cannot download s3://{bucket}/absent.pkl: NoSuchKey",
        "corrupt bytes": "model ranker.pkl cannot be unpickled: ",
        "no predict": "model ranker.pkl has no 'predict'",
        "sha256 mismatch": f"model ranker.pkl has sha256 {hashlib.sha256(good).hexdigest()}, "
        f"MODEL_SHA256 expects {'0' * 64}",
        "features not strings": "model ranker.pkl: 'stream_features' must be a list of strings",
    }[case]
    if case == "s3 unreachable":
        values["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{free_port()}"  # nothing listens
    elif case == "missing key":
        values["S3_MODEL_PATH"] = f"s3://{bucket}/absent.pkl"
    elif case == "sha256 mismatch":
        values["MODEL_SHA256"] = "0" * 64
    log = tmp_path / "log"

    started = time.monotonic()
    status = run_gunicorn(gunicorn_env(emulator, PORT=str(free_port()), **values), log).wait(60)

    output = log.read_text()
    lines = [line for line in output.splitlines() if line.startswith("scorer: cannot start: ")]
    assert status != 0
    assert len(lines) == 1 and expected in lines[0], output
    assert "Traceback" not in output
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AWS_ENDPOINT_URL", "localhost:4566"),  # no scheme
        ("AWS_ENDPOINT_URL_S3", "ftp://127.0.0.1:4566"),
        ("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:port"),
    ],
)
def test_unusable_endpoint_stops_start_up_with_one_line(
    name: str, value: str, emulator: int, tmp_path: Path
) -> None:
    # A model that reads features, so each endpoint would be used: S3 by the master, DynamoDB
    # by every worker (which, unchecked, failed each with a traceback).
    path = upload_model(
        aws_client("s3", emulator),
        "endpoint-" + name.lower().replace("_", "-"),
        "ranker.pkl",
        fakes.pickle_by_value(fakes.echo_model()),
    )
    env = gunicorn_env(emulator, PORT=str(free_port()), S3_MODEL_PATH=path, **{name: value})
    log = tmp_path / "log"

    process = run_gunicorn(env, log)
    try:
        status = process.wait(60)
    finally:
        if process.poll() is None:  # it started after all: stop it, the test has failed
            process.kill()
            process.wait(10)

    output = log.read_text()
    lines = [line for line in output.splitlines() if line.startswith("scorer: cannot start: ")]
    assert status != 0
    assert len(lines) == 1 and f"invalid settings: {name}: " in lines[0], output
    assert "Traceback" not in output
