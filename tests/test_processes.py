"""Process failures under load: real `gunicorn -c gunicorn.conf.py`, 2 workers, client threads.

Each test runs a few client threads sending a bounded number of requests over new connections
(so both workers take some) while a worker is killed, the master is stopped, or the model hangs.
The model reports the pid of the worker that answered, so the tests can tell workers apart.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from examples.local_stack import EMULATOR_ENV, free_port
from tests.conftest import sample_value
from tests.servers import Server, gunicorn_env, start_service, stop_service, wait_until, worker_pids

CLIENT_THREADS = 4


# --- the model -----------------------------------------------------------------------------
def slow_preprocess(user: Any, streams: Any, playlist: Any, params: Any) -> dict[str, Any]:
    """Keep what predict needs: the user (its `sleep` and `userid`) and the stream count."""
    return {"user": user, "count": len(streams)}


def slow_predict(model_input: dict[str, Any], params: Any) -> dict[str, Any]:
    """Take `user.sleep` seconds (an hour for user "hang") and say which worker scored.

    `user.touch` names a file to create on entering predict, `user.until` one to wait for
    (at most 10 s): the answer's `waited` says whether it appeared.
    """
    user = model_input["user"]
    if "touch" in user:
        Path(user["touch"]).touch()
    if user.get("userid") == "hang":
        time.sleep(3600)
    output: dict[str, Any] = {"scores": [1.0] * model_input["count"], "pid": os.getpid()}
    if "until" in user:
        deadline = time.monotonic() + 10
        while not os.path.exists(user["until"]) and time.monotonic() < deadline:
            time.sleep(0.02)
        output["waited"] = os.path.exists(user["until"])
    time.sleep(float(user.get("sleep", 0)))
    return output


def pickle_model() -> bytes:
    """Pickle the slow model by value, so gunicorn needs no test package to load it."""
    model = {"preprocess": slow_preprocess, "predict": slow_predict, "stream_features": []}
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        return bytes(cloudpickle.dumps(model))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# --- load ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One request: when it was sent and answered, and how (`ok`, `http 504`, `refused`...)."""

    started: float
    ended: float
    kind: str
    body: Any = None


def score(port: int, user: dict[str, Any], timeout: float = 20.0) -> Outcome:
    """POST one /score request on a new connection and classify what came back."""
    payload = json.dumps({"user": user, "streams": [{"streamUrl": "https://p/1"}]})
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(
            "POST", "/score", body=payload, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        raw = response.read()
        body = json.loads(raw)
        kind = "ok" if response.status == 200 else f"http {response.status}"
        return Outcome(started, time.monotonic(), kind, body)
    except ConnectionRefusedError:
        return Outcome(started, time.monotonic(), "refused")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Outcome(started, time.monotonic(), f"error {type(exc).__name__}")
    finally:
        connection.close()


@dataclass
class Load:
    """Client threads each sending at most `per_thread` requests until stopped."""

    port: int
    user: dict[str, Any]
    threads: int = CLIENT_THREADS
    per_thread: int = 400
    stop_when_refused: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        for _ in range(self.per_thread):
            if self._stop.is_set():
                return
            outcome = score(self.port, self.user)
            self.outcomes.append(outcome)
            if outcome.kind == "refused" and self.stop_when_refused:
                return

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run) for _ in range(self.threads)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def score_bytes(user: dict[str, Any]) -> tuple[bytes, bytes]:
    """Return the head and body of a keep-alive `POST /score` request, as raw bytes."""
    body = json.dumps({"user": user, "streams": [{"streamUrl": "https://p/1"}]}).encode()
    head = (
        "POST /score HTTP/1.1\r\nHost: scorer\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode(), body


class RawClient:
    """One client connection on a raw socket, to tell a complete answer, a clean close and a reset
    apart (http.client folds the last two into one exception)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self._buffer = b""

    def response(self) -> tuple[str, Any]:
        """Read one response: ("http 200", body), or ("empty reply"/"truncated"/"reset", None)."""
        try:
            while b"\r\n\r\n" not in self._buffer:
                if not self._receive():
                    return ("empty reply", None)
            head, _, rest = self._buffer.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            assert length is not None, head
            self._buffer = rest
            while len(self._buffer) < int(length[1]):
                if not self._receive():
                    return ("truncated", None)
            body, self._buffer = self._buffer[: int(length[1])], self._buffer[int(length[1]) :]
            if re.search(rb"(?im)^connection: *close", head):
                self.sock.close()  # as HTTP clients do; gunicorn's main loop waits for it
            return (f"http {int(head.split()[1])}", json.loads(body))
        except ConnectionResetError:
            return ("reset", None)

    def exchange(self, user: dict[str, Any]) -> tuple[str, Any]:
        """Send a request unless the server has closed the connection; read the answer."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        if readable:  # an idle connection turns readable only when the server closes it
            return self.ending()
        head, body = score_bytes(user)
        self.sock.sendall(head + body)
        return self.response()

    def send(self, data: bytes) -> bool:
        """Send bytes; tell whether the connection took them."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def ending(self) -> tuple[str, Any]:
        """Wait for the server to end an idle connection: "clean close" (FIN) or "reset"."""
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return ("reset", None)
        except TimeoutError:
            return ("still open", None)
        return ("clean close", None) if data == b"" else ("unexpected bytes", data)

    def _receive(self) -> bool:
        chunk = self.sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def close(self) -> None:
        self.sock.close()


def report(case: str, outcomes: list[Outcome], **figures: object) -> None:
    """Print the figures of one run (`pytest -rP` shows them; docs/reliability.md quotes them)."""
    kinds = Counter(o.kind for o in outcomes)
    extra = " ".join(f"{name}={value}" for name, value in figures.items())
    print(f"{case}: sent={len(outcomes)} {dict(sorted(kinds.items()))} {extra}")


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def service_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    model = tmp_path / "slow.pkl"
    model.write_bytes(pickle_model())
    # No emulator: this model reads no features. A region is still needed (see docs/reliability.md).
    env = gunicorn_env(
        0,
        **EMULATOR_ENV,
        PORT=str(free_port()),
        MODEL_PATH=str(model),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
        **getattr(request, "param", {}),
    )
    env.pop("AWS_ENDPOINT_URL")
    return env


@pytest.fixture
def service(service_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    server = start_service(service_env, tmp_path, workers=int(service_env["WEB_CONCURRENCY"]))
    yield server
    stop_service(server)


# --- tests ---------------------------------------------------------------------------------
def test_killed_worker_is_replaced_and_only_its_requests_in_flight_fail(service: Server) -> None:
    master = service.process.pid
    before = worker_pids(master)
    with Load(service.port, {"userid": "u", "sleep": 0.05}) as load:
        time.sleep(1.0)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        replaced = wait_until(lambda: len(worker_pids(master) - before) == 1, 15)
        time.sleep(1.5)  # keep the load on the survivor and the new worker for a while

    new_workers = worker_pids(master) - before
    failures = [o for o in load.outcomes if o.kind != "ok"]
    later = [o for o in load.outcomes if o.started > killed_at + 0.2]
    report("SIGKILL", load.outcomes, replaced=len(new_workers))
    assert replaced, f"no new worker after killing {victim}: workers now {worker_pids(master)}"
    assert victim not in worker_pids(master)
    assert len(failures) <= CLIENT_THREADS, [o.kind for o in failures]
    assert len(later) >= 10 and all(o.kind == "ok" for o in later), [o.kind for o in later]
    assert {o.body["pid"] for o in later} & new_workers, "the new worker never answered"
    assert service.process.poll() is None
    with urllib.request.urlopen(service.url("/health"), timeout=5) as response:
        assert response.status == 200


def test_sigterm_drains_requests_in_flight_and_exits_zero(service: Server) -> None:
    with Load(service.port, {"userid": "u", "sleep": 0.3}, stop_when_refused=True) as load:
        time.sleep(1.0)
        signalled_at = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        status = service.process.wait(timeout=40)
        # The threads stop at their first refused connection (or their request bound).

    before = [o for o in load.outcomes if o.started < signalled_at]
    in_flight = [o for o in before if o.ended > signalled_at]
    after = [o for o in load.outcomes if o.started >= signalled_at]
    report("SIGTERM", load.outcomes, in_flight_at_signal=len(in_flight), exit_status=status)
    assert status == 0
    assert in_flight, "no request was in flight when the master got SIGTERM"
    assert [o.kind for o in before] == ["ok"] * len(before)
    # After the signal: answered, or refused once the listener is closed; nothing cut off.
    assert {o.kind for o in after} <= {"ok", "refused"}, [o.kind for o in after]


HANG_TIMEOUT = 2


@pytest.mark.parametrize("service_env", [{"TIMEOUT": str(HANG_TIMEOUT)}], indirect=True)
def test_hung_model_gets_504_and_its_worker_is_replaced(service: Server) -> None:
    master = service.process.pid
    before = worker_pids(master)
    with Load(service.port, {"userid": "u", "sleep": 0.2}, threads=3) as load:
        time.sleep(0.5)
        hung = score(service.port, {"userid": "hang"}, timeout=HANG_TIMEOUT + 10)
        replaced = wait_until(lambda: len(worker_pids(master) - before) >= 1, 20)
        time.sleep(1.0)

    report(
        "hang",
        [*load.outcomes, hung],
        hung=f"{hung.kind} after {hung.ended - hung.started:.1f} s",
        replaced=len(worker_pids(master) - before),
    )
    assert (hung.kind, hung.body) == (
        "http 504",
        {"detail": f"Model prediction timed out after {HANG_TIMEOUT} s"},
    )
    assert hung.ended - hung.started < HANG_TIMEOUT + 4  # "roughly TIMEOUT + 2 s", loosely
    assert replaced, f"no worker replaced after the hang: workers {before} -> {worker_pids(master)}"
    assert len(worker_pids(master)) == 2
    # Other requests, those in flight on the hung request's worker included, were all answered.
    assert len(load.outcomes) >= 10
    assert [o.kind for o in load.outcomes] == ["ok"] * len(load.outcomes)


def model_info_series(server: Server) -> list[str]:
    return [line for line in server.metrics().splitlines() if line.startswith("scorer_model_info{")]


@pytest.mark.parametrize("service_env", [{"TIMEOUT": str(HANG_TIMEOUT)}], indirect=True)
def test_timeout_is_counted_and_the_model_is_one_series(service: Server) -> None:
    master = service.process.pid
    before = worker_pids(master)
    series_before = model_info_series(service)

    hung = score(service.port, {"userid": "hang"}, timeout=HANG_TIMEOUT + 10)
    replaced = wait_until(
        lambda: len(worker_pids(master) - before) == 1 and len(worker_pids(master)) == 2, 40
    )
    text = service.metrics()

    assert hung.kind == "http 504"
    assert replaced, f"no worker replaced after the hang: workers {before} -> {worker_pids(master)}"
    # Counted by the watchdog in the worker it retired, kept by the archive of exited workers.
    assert sample_value(text, "scorer_requests_total", 'endpoint="/score",status="504"') == 1
    assert sample_value(text, "scorer_request_duration_seconds_count") == 1
    # One series for the model over the master and every worker, before and after a worker exits.
    assert len(series_before) == 1, series_before
    assert model_info_series(service) == series_before


DRAIN_TIMEOUT = 3


@pytest.mark.parametrize(
    "service_env",
    [
        {
            "TIMEOUT": str(DRAIN_TIMEOUT),
            "WEB_CONCURRENCY": "1",  # every connection below reaches the worker that retires
            "THREADS": "3",
            "BODY_TIMEOUT_SECONDS": "20",  # the slow body below is slow on purpose
            "SHED_MAX_QUEUE_MS": "0",  # and the queued request waits seconds for a thread
        }
    ],
    indirect=True,
)
def test_retiring_worker_finishes_every_connection_it_accepted(
    service: Server, tmp_path: Path
) -> None:
    """A hung request's 504 retires its worker only after the worker's other connections end.

    Three threads: the hung request holds one for good; a slowly sent body holds the second;
    a request whose model runs past the hang's detection holds the third; one more request
    waits for a thread; two kept-alive connections sit idle. Once the 504 arrives, the slow
    body is sent in full a second later and one idle connection sends another request.
    """
    master = service.process.pid
    before = worker_pids(master)
    hang_started, released = tmp_path / "hang-started", tmp_path / "released"
    clients: list[RawClient] = []

    def connect() -> RawClient:
        clients.append(RawClient(service.port))  # connected in this thread, in this order
        return clients[-1]

    with ThreadPoolExecutor(max_workers=4) as pool:
        hung = pool.submit(connect().exchange, {"userid": "hang", "touch": str(hang_started)})
        assert wait_until(hang_started.exists, 20), "the hung request never reached the model"
        kept = [connect(), connect()]
        first_answers = [client.exchange({"userid": "k"}) for client in kept]
        slow_body = connect()
        head, body = score_bytes({"userid": "slow body"})
        slow_body.send(head + body[:10])
        time.sleep(DRAIN_TIMEOUT / 2)  # so this one is half-way through when the hang is found
        running = pool.submit(connect().exchange, {"userid": "l", "until": str(released)})
        time.sleep(0.2)
        queued = pool.submit(connect().exchange, {"userid": "q"})

        hung_answer = hung.result(timeout=30)
        answered_at = time.monotonic()
        released.touch()
        kept_again = kept[0].exchange({"userid": "k again"})
        time.sleep(1.0)
        sent = slow_body.send(body[10:])
        slow_answer = slow_body.response() if sent else ("reset while sending", None)
        running_answer, queued_answer = running.result(timeout=30), queued.result(timeout=30)
        replaced = wait_until(lambda: len(worker_pids(master) - before) == 1, 40)
        replaced_after = time.monotonic() - answered_at
        idle_end = kept[1].ending()
    for client in clients:
        client.close()

    answers = {
        "hung": hung_answer[0],
        "slow body": slow_answer[0],
        "running": running_answer[0],
        "queued": queued_answer[0],
        "kept-alive, sent again": kept_again[0],
        "kept-alive, idle": idle_end[0],
    }
    print(f"retire: {answers} replaced={replaced} {replaced_after:.1f} s after the 504")
    assert [kind for kind, _ in first_answers] == ["http 200", "http 200"]
    assert hung_answer == (
        "http 504",
        {"detail": f"Model prediction timed out after {DRAIN_TIMEOUT} s"},
    )
    assert answers == {
        "hung": "http 504",
        "slow body": "http 200",
        "running": "http 200",
        "queued": "http 200",
        "kept-alive, sent again": "http 200",
        "kept-alive, idle": "clean close",
    }
    assert running_answer[1]["waited"], "the running request ended before the hang was found"
    assert replaced, f"no worker replaced: {before} -> {worker_pids(master)}"
    assert "exits with 1 stuck request(s)" in service.log.read_text()  # not killed by the master
    with urllib.request.urlopen(service.url("/health"), timeout=10) as response:
        assert response.status == 200
