"""Process failures under load: real `gunicorn -c gunicorn.conf.py`, 2 workers, client threads.

Each test runs a few client threads sending a bounded number of requests over new connections
(so both workers take some) while a worker is killed, the master is stopped, or the model hangs.
The model reports the pid of the worker that answered, so the tests can tell workers apart.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from examples.local_stack import EMULATOR_ENV, free_port
from tests.servers import Server, gunicorn_env, start_service, stop_service, wait_until, worker_pids

CLIENT_THREADS = 4


# --- the model -----------------------------------------------------------------------------
def slow_preprocess(user: Any, streams: Any, playlist: Any, params: Any) -> dict[str, Any]:
    """Keep what predict needs: the user (its `sleep` and `userid`) and the stream count."""
    return {"user": user, "count": len(streams)}


def slow_predict(model_input: dict[str, Any], params: Any) -> dict[str, Any]:
    """Take `user.sleep` seconds (an hour for user "hang") and say which worker scored."""
    user = model_input["user"]
    if user.get("userid") == "hang":
        time.sleep(3600)
    time.sleep(float(user.get("sleep", 0)))
    return {"scores": [1.0] * model_input["count"], "pid": os.getpid()}


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


def report(case: str, outcomes: list[Outcome], **figures: object) -> None:
    """Print the figures of one run (`pytest -rP` shows them; RELIABILITY.md quotes them)."""
    kinds = Counter(o.kind for o in outcomes)
    extra = " ".join(f"{name}={value}" for name, value in figures.items())
    print(f"{case}: sent={len(outcomes)} {dict(sorted(kinds.items()))} {extra}")


# --- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def service_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    model = tmp_path / "slow.pkl"
    model.write_bytes(pickle_model())
    # No emulator: this model reads no features. A region is still needed (see RELIABILITY.md).
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
    server = start_service(service_env, tmp_path)
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
