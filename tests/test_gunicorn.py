"""The real thing: `gunicorn -c gunicorn.conf.py` with 2 workers against the emulator over HTTP."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict

from examples.local_stack import (
    REGION,
    aws_client,
    create_features_table,
    free_port,
    put_features,
    upload_model,
)
from tests import fakes
from tests.conftest import counter_total, sample_value, seed_features
from tests.servers import (
    Server,
    gunicorn_env,
    run_gunicorn,
    start_service,
    stop_service,
    wait_until,
    worker_pids,
)

NAMES = fakes.FEATURES


@pytest.fixture(scope="module")
def server(emulator: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("gunicorn")
    dynamodb = aws_client("dynamodb", emulator)
    create_features_table(dynamodb, "gunicorn-features")
    model = upload_model(
        aws_client("s3", emulator),
        "gunicorn-models",
        "echo.pkl",
        fakes.pickle_by_value(fakes.echo_model()),
    )
    port = free_port()
    env = gunicorn_env(
        emulator,
        PORT=str(port),
        S3_MODEL_PATH=model,
        FEATURES_TABLE="gunicorn-features",
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
        BODY_TIMEOUT_SECONDS="1",
        HEAD_TIMEOUT_SECONDS="1",
        # 16 cold requests at once on 8 threads (the stampede below) make half of them wait a
        # whole read for a thread: on a loaded machine, past the queue limit. Overload is
        # tests/test_overload.py's concern.
        SHEDDING="false",
    )
    log = tmp / "gunicorn.log"
    process = run_gunicorn(env, log)
    server = Server(process, port, log, tmp / "metrics")
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(server.url("/health"), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start:\n" + log.read_text()) from None
            time.sleep(0.1)
    yield server
    process.terminate()
    assert process.wait(timeout=30) == 0


def streams(*urls: str) -> dict[str, Any]:
    return {"user": {"userid": "u"}, "streams": [{"streamUrl": u} for u in urls], "playlist": {}}


def test_sixty_streams_come_back_with_all_180_features(server: Server, emulator: int) -> None:
    urls = [f"https://g/{n}" for n in range(60)] + ["https://g/0"]  # a duplicate too
    seed_features(aws_client("dynamodb", emulator), "gunicorn-features", urls, NAMES)

    status, body = server.post("/score", streams(*urls))

    assert status == 200
    assert len(body["streams"]) == 61
    for stream in body["streams"]:
        assert {n: stream[n] for n in NAMES} == {n: f"{stream['streamUrl']}|{n}" for n in NAMES}


def ready_worker_pids(server: Server) -> set[int]:
    """Return the pids of the workers that logged their start-up (after fork)."""
    lines = server.log.read_text().splitlines()
    ready = [line for line in lines if "feature store client and cache ready" in line]
    return {int(line.split("worker ")[1].split(":")[0]) for line in ready}


def test_clients_are_created_in_each_worker_after_fork(server: Server) -> None:
    assert wait_until(lambda: len(ready_worker_pids(server)) == 2, 10), ready_worker_pids(server)
    assert server.process.pid not in ready_worker_pids(server)


def lookups_per_process(metrics_dir: Path) -> dict[str, float]:
    """Read each process's own counter file: the lookups it counted, by pid."""
    names = {"scorer_feature_cache_hits_total", "scorer_feature_cache_misses_total"}
    counted = {}
    for path in metrics_dir.glob("counter_*.db"):
        values = MmapedDict.read_all_values_from_file(str(path))
        counted[path.stem.split("_", 1)[1]] = sum(
            value for key, value, _, _ in values if json.loads(key)[1] in names
        )
    return counted


def total_lookups(text: str) -> float:
    return counter_total(text, "scorer_feature_cache_hits_total") + counter_total(
        text, "scorer_feature_cache_misses_total"
    )


def test_metrics_add_up_across_both_workers(server: Server) -> None:
    urls = [f"https://m/{n}" for n in range(10)]
    before_text, before = server.metrics(), lookups_per_process(server.metrics_dir)
    sent = 0
    # A new connection each time, until both workers have scored some (bounded).
    while sent < 400:
        assert server.post("/score", streams(*urls, urls[0]))[0] == 200
        sent += 1
        grew = {
            pid
            for pid, n in lookups_per_process(server.metrics_dir).items()
            if n > before.get(pid, 0)
        }
        if sent >= 40 and len(grew) == 2:
            break

    after_text = server.metrics()
    after = lookups_per_process(server.metrics_dir)
    assert len(grew) == 2, f"one worker took all {sent} requests"
    assert total_lookups(after_text) - total_lookups(before_text) == sent * 11 * 3
    assert sum(after.values()) - sum(before.values()) == sent * 11 * 3
    hits = counter_total(after_text, "scorer_feature_cache_hits_total")
    ratio = sample_value(after_text, "scorer_feature_cache_hit_ratio")
    assert ratio == pytest.approx(hits / total_lookups(after_text))


def test_concurrent_cold_requests_read_each_key_at_most_once_per_worker(
    server: Server, emulator: int
) -> None:
    urls = [f"https://stampede/{n}" for n in range(50)]
    seed_features(aws_client("dynamodb", emulator), "gunicorn-features", urls, NAMES)
    before = sample_value(server.metrics(), "scorer_dynamodb_keys_requested_total")
    barrier = threading.Barrier(16)
    statuses: list[int] = []

    def one() -> None:
        barrier.wait()
        statuses.append(server.post("/score", streams(*urls))[0])

    threads = [threading.Thread(target=one) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    read = sample_value(server.metrics(), "scorer_dynamodb_keys_requested_total") - before
    assert statuses == [200] * 16
    assert 150 <= read <= 2 * 150


def test_item_ttl_expires_per_item_in_every_worker(server: Server, emulator: int) -> None:
    dynamodb = aws_client("dynamodb", emulator)
    url = "https://ttl/1"

    def write(version: str) -> None:
        put_features(
            dynamodb,
            "gunicorn-features",
            [
                (url, "f1", {"value": {"S": version}, "cache_ttl_in_seconds": {"N": "1"}}),
                (url, "f2", {"value": {"S": version}}),  # default TTL: 300 s
            ],
        )

    write("old")
    entries_before = sample_value(server.metrics(), "scorer_feature_cache_entries", 'kind="stream"')

    def both_cached() -> bool:  # each of the 2 workers holds the 3 keys (f3 cached as absent)
        server.post("/score", streams(url))
        return (
            sample_value(server.metrics(), "scorer_feature_cache_entries", 'kind="stream"')
            >= entries_before + 6
        )

    assert any(both_cached() for _ in range(200)), "one worker never took a request"
    write("new")
    time.sleep(1.5)

    for _ in range(6):
        stream = server.post("/score", streams(url))[1]["streams"][0]
        assert (stream["f1"], stream["f2"]) == ("new", "old")


def test_bad_model_stops_start_up_with_one_line(tmp_path: Path, emulator: int) -> None:
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(fakes.pickle_by_value([1, 2, 3]))
    env = gunicorn_env(emulator, PORT=str(free_port()), MODEL_PATH=str(bad))
    log = tmp_path / "log"

    status = run_gunicorn(env, log).wait(timeout=30)

    output = log.read_text()
    assert status != 0
    assert "scorer: cannot start: model bad.pkl must be a dict, got list" in output
    assert "Traceback" not in output


def test_bad_setting_stops_start_up_naming_the_variable(tmp_path: Path, emulator: int) -> None:
    env = gunicorn_env(emulator, PORT=str(free_port()), MODEL_PATH="m.pkl", LOGS_FRACTION="5")
    log = tmp_path / "log"

    status = run_gunicorn(env, log).wait(timeout=30)

    output = log.read_text()
    lines = [line for line in output.splitlines() if "LOGS_FRACTION" in line]
    assert status != 0
    assert len(lines) == 1, output
    assert lines[0].startswith("scorer: cannot start: invalid settings: LOGS_FRACTION")
    assert "Traceback" not in output


def test_missing_region_stops_start_up_in_the_master(tmp_path: Path, emulator: int) -> None:
    model = tmp_path / "m.pkl"
    model.write_bytes(fakes.pickle_by_value(fakes.echo_model()))
    env = gunicorn_env(emulator, PORT=str(free_port()), MODEL_PATH=str(model))
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        env.pop(name, None)
    env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    log = tmp_path / "log"

    status = run_gunicorn(env, log).wait(timeout=30)

    assert status != 0
    assert "scorer: cannot start: no AWS region" in log.read_text()


@pytest.mark.parametrize("variable", ["AWS_REGION", "AWS_DEFAULT_REGION"])
def test_either_region_variable_alone_serves_a_features_model(
    variable: str, tmp_path: Path, emulator: int, dynamodb: Any, table: str
) -> None:
    # botocore itself reads only AWS_DEFAULT_REGION; the README promises both.
    urls = [f"https://region/{variable}/{n}" for n in range(3)]
    seed_features(dynamodb, table, urls, NAMES)
    bucket = "region-" + variable.lower().replace("_", "-")
    model = upload_model(
        aws_client("s3", emulator), bucket, "m.pkl", fakes.pickle_by_value(fakes.echo_model())
    )
    env = gunicorn_env(
        emulator,
        PORT=str(free_port()),
        S3_MODEL_PATH=model,
        FEATURES_TABLE=table,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),  # no region from a profile either
    )
    env.pop("AWS_REGION")
    env.pop("AWS_DEFAULT_REGION")
    env[variable] = REGION  # moto keeps tables per region: features prove the region was used

    server = start_service(env, tmp_path)
    try:
        status, body = server.post("/score", streams(*urls))
    finally:
        stop_service(server)

    assert status == 200
    for stream in body["streams"]:
        assert {n: stream[n] for n in NAMES} == {n: f"{stream['streamUrl']}|{n}" for n in NAMES}


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback on this machine")
def test_ipv6_host_is_bound_and_serves(tmp_path: Path, emulator: int) -> None:
    model = tmp_path / "m.pkl"
    model.write_bytes(fakes.pickle_by_value(fakes.echo_model(features=[])))
    port = free_port()
    env = gunicorn_env(
        emulator,
        HOST="::1",  # loopback; HOST=:: is bound the same way, as [::]:port
        PORT=str(port),
        # One worker: healthy then means every worker has its signal handlers, so the stop
        # below cannot catch one still booting (which would then wait out graceful_timeout).
        WEB_CONCURRENCY="1",
        MODEL_PATH=str(model),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    log = tmp_path / "log"
    process = run_gunicorn(env, log)

    def health() -> int:
        if process.poll() is not None:
            raise AssertionError("gunicorn exited:\n" + log.read_text())
        try:
            with urllib.request.urlopen(f"http://[::1]:{port}/health", timeout=1) as response:
                return int(response.status)
        except OSError:
            return 0

    try:
        assert wait_until(lambda: health() == 200, 30), log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert f"Listening at: http://[::1]:{port}" in log.read_text()


def test_bad_setting_at_sighup_keeps_the_running_settings_with_one_line(
    tmp_path: Path, emulator: int
) -> None:
    # gunicorn runs gunicorn.conf.py again on SIGHUP, which reads `.env` again: from its own
    # directory here, so the test never writes into the repository.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    dotenv = cwd / ".env"
    dotenv.write_text("TIMEOUT=30\n")
    model = tmp_path / "m.pkl"
    model.write_bytes(fakes.pickle_by_value(fakes.echo_model(features=[])))
    env = gunicorn_env(
        emulator,
        PORT=str(free_port()),
        MODEL_PATH=str(model),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    server = start_service(env, tmp_path, cwd=cwd)
    master = server.process.pid
    try:
        before = worker_pids(master)
        dotenv.write_text("TIMEOUT=never\n")
        os.kill(master, signal.SIGHUP)

        # A reload replaces the workers; the master dying ends the wait early.
        def reloaded() -> bool:
            pids = worker_pids(master)
            return server.process.poll() is not None or (len(pids) == 2 and not pids & before)

        assert wait_until(reloaded, 60), server.log.read_text()
        alive = server.process.poll() is None
        status = server.post("/score", streams("https://sighup/1"))[0] if alive else None
    finally:
        stop_service(server)

    output = server.log.read_text()
    assert alive, output
    assert status == 200
    lines = [line for line in output.splitlines() if "TIMEOUT" in line]
    assert len(lines) == 1, output
    assert "[ERROR]" in lines[0] and "keeping the running settings" in lines[0]
    assert "Traceback" not in output


def test_chunked_request_body_is_scored(server: Server) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    payload = json.dumps(streams("https://chunked/1", "https://chunked/2")).encode()
    connection.request(
        "POST",
        "/score",
        body=iter([payload[:10], payload[10:]]),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        encode_chunked=True,
    )
    response = connection.getresponse()
    assert response.status == 200
    assert [s["streamUrl"] for s in json.loads(response.read())["streams"]] == [
        "https://chunked/1",
        "https://chunked/2",
    ]
    connection.close()


def test_oversized_body_is_refused_and_the_worker_keeps_serving(server: Server) -> None:
    # 64 KiB of the announced 2 MB: the server answers from Content-Length and closes, and a
    # client still sending the rest could see its write reset before it reads the answer.
    request = SCORE_HEAD + b"Content-Length: 2000000\r\n\r\n" + b'{"pad": "' + b"x" * 65_000
    answer, _ = raw_exchange(server, request)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert answer.endswith(b'{"detail":"Request body too large"}')
    assert server.post("/score", streams("https://after-413"))[0] == 200


def test_recycled_workers_keep_metrics_exact_and_files_bounded(
    tmp_path: Path, emulator: int
) -> None:
    model = tmp_path / "m.pkl"
    model.write_bytes(fakes.pickle_by_value(fakes.echo_model(features=[])))
    port = free_port()
    env = gunicorn_env(
        emulator,
        PORT=str(port),
        MODEL_PATH=str(model),
        MAX_REQUESTS="10",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    process = run_gunicorn(env, tmp_path / "log")
    server = Server(process, port, tmp_path / "log", tmp_path / "metrics")
    try:
        for _ in range(100):
            try:
                server.post("/score", streams("https://r"))
                break
            except OSError:
                time.sleep(0.1)
        for _ in range(79):
            assert server.post("/score", streams("https://r"))[0] == 200
        time.sleep(1)  # let the master fold the last exits
        text = server.metrics()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert sample_value(text, "scorer_requests_total", 'endpoint="/score",status="200"') == 80
    files = list((tmp_path / "metrics").glob("counter_*.db"))
    assert len(files) <= 4  # archive, master, two live workers: not one per recycled worker
    assert "Autorestarting worker" in (tmp_path / "log").read_text()


def raw_exchange(server: Server, request: bytes, pause: float = 0.0) -> tuple[bytes, float]:
    """Send raw bytes (then wait `pause` seconds), and read the answer until the server closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(request)
        time.sleep(pause)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                break
    return answer, time.monotonic() - started


def test_stalled_body_gets_408_and_costs_no_worker(server: Server) -> None:
    pids_before = set(ready_worker_pids(server))
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer, elapsed = raw_exchange(server, head + b'Content-Length: 1000\r\n\r\n{"str')

    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request body not received within 1 s" in answer
    assert elapsed < 10
    assert server.post("/score", streams("https://after-408"))[0] == 200
    assert set(ready_worker_pids(server)) == pids_before  # no worker was retired


def trickle(server: Server, start: bytes, rest: bytes) -> tuple[bytes, int]:
    """Send `start` at once, then `rest` one byte every 0.3 s until the server answers.

    Return the answer (read until the server closes) and how many bytes of `rest` were sent.
    """
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(start)
        sent = 0
        for byte in rest:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server has answered and closed
                break
            sent += 1
            if select.select([sock], [], [], 0.3)[0]:
                break
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, sent


SCORE_HEAD = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def test_trickled_body_gets_408_before_it_completes(server: Server) -> None:
    body = json.dumps(streams("https://trickle/1", "https://trickle/2")).encode()
    head = SCORE_HEAD + b"Content-Length: %d\r\n\r\n" % len(body)

    # Each byte well inside the 1 s timeout; the whole body would take 25 s.
    answer, sent = trickle(server, head, body)

    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert answer.endswith(b'{"detail":"request body not received within 1 s"}')
    assert sent < len(body)  # answered while the body was still arriving
    assert server.post("/score", streams("https://after-trickle"))[0] == 200


def test_trickled_head_gets_408_before_it_completes(server: Server) -> None:
    body = json.dumps(streams("https://trickle-head")).encode()
    request = SCORE_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body

    answer, sent = trickle(server, b"", request)

    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"Connection: close" in answer
    assert answer.endswith(b'{"detail":"request head not received within 1 s"}')
    assert sent < request.index(b"\r\n\r\n")  # answered while the head was still arriving
    assert server.post("/score", streams("https://after-trickled-head"))[0] == 200


def test_idle_time_before_the_first_byte_is_not_held_against_the_head(server: Server) -> None:
    body = json.dumps(streams("https://idle-first")).encode()
    request = SCORE_HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        time.sleep(2)  # twice HEAD_TIMEOUT_SECONDS, connected but silent
        sock.sendall(request[:10])  # then the head in two parts, the second one waited for
        time.sleep(0.2)
        sock.sendall(request[10:] + body)
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer


def exchange_then_half_close(server: Server, request: bytes) -> bytes:
    """Send `request`, end the sending side (shutdown), and read the answer until close."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_body_shorter_than_its_content_length_is_a_400(server: Server) -> None:
    body = b'{"streams": [{"streamUrl": "a"}]}'  # valid JSON on its own: must not be scored
    answer = exchange_then_half_close(
        server, SCORE_HEAD + b"Content-Length: %d\r\n\r\n" % (len(body) + 50) + body
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert answer.endswith(b'{"detail":"incomplete request body: 33 of 83 bytes"}')


@pytest.mark.parametrize(
    "chunks",
    [
        b"21\r\n" + b'{"streams": [{"streamUrl": "a"}]}' + b"\r\n",  # no last chunk
        b"21\r\n" + b'{"streams": [',  # cut inside a chunk
        b"21\r\n" + b'{"streams": [{"streamUrl": "a"}]}' + b"\r\n0\r\n",  # no final CRLF
    ],
    ids=["no-last-chunk", "mid-chunk", "no-final-crlf"],
)
def test_chunked_body_cut_short_is_a_400_naming_it(server: Server, chunks: bytes) -> None:
    answer = exchange_then_half_close(
        server, SCORE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert answer.endswith(
        b'{"detail":"incomplete request body: the chunked body ended before its last chunk"}'
    )


def test_malformed_chunked_body_is_a_400(server: Server) -> None:
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer, _ = raw_exchange(server, head + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"malformed request body" in answer


def test_model_info_is_one_series_over_all_workers(server: Server) -> None:
    text = server.metrics()
    samples = [line for line in text.splitlines() if line.startswith("scorer_model_info{")]
    assert len(samples) == 1, samples  # no pid label, nothing from the master
    assert samples[0].startswith('scorer_model_info{name="echo.pkl",')
    assert samples[0].endswith(" 1.0")


@pytest.mark.parametrize("case", list(fakes.BAD_KEYS))
def test_bad_feature_key_stops_start_up_naming_it(tmp_path: Path, emulator: int, case: str) -> None:
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(fakes.pickle_by_value(fakes.bad_keys_model(case)))
    env = gunicorn_env(emulator, PORT=str(free_port()), MODEL_PATH=str(bad))
    log = tmp_path / "log"

    status = run_gunicorn(env, log).wait(timeout=30)

    output = log.read_text()
    assert status != 0
    assert f"scorer: cannot start: model bad.pkl: {fakes.BAD_KEYS[case][1]}" in output
    assert "Traceback" not in output


def test_user_global_and_history_features_per_kind_over_two_workers(
    tmp_path: Path, emulator: int
) -> None:
    dynamodb = aws_client("dynamodb", emulator)
    create_features_table(dynamodb, "gunicorn-full")
    put_features(
        dynamodb,
        "gunicorn-full",
        [
            ("u1", "u_score", {"value": {"N": "1"}}),
            ("u1", "watched", {"value": {"L": [{"S": "https://h"}]}}),
        ],
        prefix="USER#",
    )
    put_features(
        dynamodb, "gunicorn-full", [("", "g_weights", {"value": {"S": "[1]"}})], prefix="GLOBAL"
    )
    seed_features(dynamodb, "gunicorn-full", ["https://c", "https://h"], NAMES)
    model = tmp_path / "full.pkl"
    model.write_bytes(fakes.pickle_by_value(fakes.full_model()))
    env = gunicorn_env(
        emulator,
        PORT=str(free_port()),
        MODEL_PATH=str(model),
        FEATURES_TABLE="gunicorn-full",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        SHEDDING="false",
    )
    server = start_service(env, tmp_path)
    try:
        timings = []
        for _ in range(12):  # new connections: both workers answer some
            request = urllib.request.Request(
                server.url("/score"),
                data=json.dumps(streams("https://c") | {"user": {"userid": "u1"}}).encode(),
                headers={"Content-Type": "application/json", "Connection": "close"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                answer = json.loads(response.read())
                timings.append(response.headers["Server-Timing"])
        text = server.metrics()
    finally:
        stop_service(server)

    assert answer["user"] == {
        "userid": "u1",
        "u_score": 1.0,
        "u_tags": None,
        "watched": ["https://h"],
    }
    assert answer["globals"] == {"g_weights": [1], "g_blob": None}
    assert answer["history_streams"] == [{"streamUrl": "https://h", "f1": "https://h|f1"}]
    served = sample_value(text, "scorer_feature_cache_entries", 'kind="user"') / 3
    assert served in (1, 2)  # the workers that answered hold u1's 3 features each
    fetched = 'kind="{}",result="fetched"'
    assert sample_value(text, "scorer_feature_cache_misses_total", fetched.format("user")) == (
        3 * served
    )
    assert sample_value(text, "scorer_feature_cache_misses_total", fetched.format("global")) == (
        2 * served
    )
    assert sample_value(text, "scorer_feature_cache_entries", 'kind="global"') == 2 * served
    assert sum('miss;desc="stream=0 user=0 global=0"' in t for t in timings) == 12 - served
