"""New model versions end to end: real gunicorn (2 workers), moto with a versioned bucket, load.

The models answer with their tag and the answering worker's pid, so every response says which
version served it. Client threads send requests throughout, over a kept-alive connection and over
a new connection each time; every answer must be a 200, from the old model until the switch and
from the new one after it. The bad-model cases share one server, whose S3 goes through a relay
the test can cut.
"""

from __future__ import annotations

import gc
import hashlib
import http.client
import importlib
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.request
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from examples.local_stack import aws_client, free_port
from scorer.app import create_app
from scorer.metrics import Metrics
from scorer.models.model import load_model
from scorer.models.reload import ModelReloader, ReloadState, read_state
from tests import fakes
from tests.conftest import make_settings, sample, sample_value
from tests.servers import (
    Server,
    gunicorn_env,
    start_service,
    stop_service,
    wait_until,
    worker_pids,
)
from tests.tcprelay import TcpRelay

POLL = 1.0  # MODEL_POLL_SECONDS
SWITCH_BOUND = POLL + 10  # every response from the new model this long after the upload
WAIT = SWITCH_BOUND + 20  # how long a test waits for anything at most (a loaded machine)
KEY = "team/reload.pkl"
BODY = json.dumps({"user": {"userid": "u"}, "streams": [{"streamUrl": "https://r/1"}]})


# --- load ----------------------------------------------------------------------------------
@dataclass
class Answer:
    started: float
    kind: str  # "ok", "http 503", "error RemoteDisconnected"...
    model: str | None = None


@dataclass
class Traffic:
    """Two client threads, one kept-alive connection and one new connection per request."""

    port: int
    max_seconds: float = 120
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, keep_alive: bool) -> None:
        deadline = time.monotonic() + self.max_seconds
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            headers = {"Content-Type": "application/json"}
            if not keep_alive:
                headers["Connection"] = "close"
            try:
                connection.request("POST", "/score", body=BODY, headers=headers)
                response = connection.getresponse()
                answer = json.loads(response.read())
                kind = "ok" if response.status == 200 else f"http {response.status}"
                self.answers.append(Answer(started, kind, answer.get("model")))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.answers.append(Answer(started, f"error {type(exc).__name__}"))
                connection.close()
            if not keep_alive:
                connection.close()
            time.sleep(0.01)  # bounded: about 100 requests a second per thread at most
        connection.close()

    def last(self, count: int) -> list[Answer]:
        return self.answers[-count:]

    def __enter__(self) -> Traffic:
        for keep_alive in (True, False):
            thread = threading.Thread(target=self._run, args=(keep_alive,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def summary(answers: list[Answer]) -> dict[str, int]:
    return dict(Counter(f"{a.kind} {a.model}" for a in answers))


def figures(answers: list[Answer], tag: str, triggered: float) -> str:
    """Say when the new model first answered and the old one last did (docs/reliability.md)."""
    first_new = min(a.started for a in answers if a.model == tag) - triggered
    last_old = max(a.started for a in answers if a.model != tag) - triggered
    return f"{summary(answers)} first new {first_new:.1f} s, last old {last_old:.1f} s"


# --- the stack -----------------------------------------------------------------------------
def versioned_bucket(s3: Any, bucket: str, first: bytes) -> str:
    """Create a versioned bucket holding the first model; return its s3:// path."""
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    publish(s3, bucket, first)
    return f"s3://{bucket}/{KEY}"


def publish(s3: Any, bucket: str, data: bytes) -> str:
    """Overwrite the model's key, as a team publishing a new version; return its VersionId."""
    return str(s3.put_object(Bucket=bucket, Key=KEY, Body=data)["VersionId"])


@dataclass
class Stack:
    server: Server
    s3: Any
    bucket: str
    relay: TcpRelay | None = None

    def publish(self, data: bytes) -> str:
        return publish(self.s3, self.bucket, data)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.server.url("/health"), timeout=10) as response:
            assert response.status == 200
            return dict(json.loads(response.read()))

    def serving(self) -> str:
        """Return the tag of the model that answers a request on a new connection."""
        status, body = self.server.post("/score", json.loads(BODY))
        assert status == 200, body
        return str(body["model"])

    def reloads(self, result: str) -> float:
        return sample_value(
            self.server.metrics(), "scorer_model_reloads_total", f'result="{result}"'
        )

    def poll_errors(self) -> float:
        return sample_value(self.server.metrics(), "scorer_model_poll_errors_total")

    def log(self) -> str:
        return self.server.log.read_text()

    def alive(self) -> bool:
        return self.server.process.poll() is None


def start_stack(
    emulator: int, tmp: Path, name: str, first: bytes, relay: TcpRelay | None = None, **env: str
) -> Stack:
    s3, bucket = aws_client("s3", emulator), f"reload-{name}"
    values = {
        "PORT": str(free_port()),
        "S3_MODEL_PATH": versioned_bucket(s3, bucket, first),
        "MODEL_POLL_SECONDS": str(POLL),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        **env,
    }
    if relay is not None:
        values["AWS_ENDPOINT_URL_S3"] = relay.url
    return Stack(start_service(gunicorn_env(emulator, **values), tmp), s3, bucket, relay)


def model(tag: str) -> bytes:
    return fakes.pickle_by_value(fakes.tagged_model(tag))


@pytest.fixture(scope="module")
def polled(emulator: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A server polling every second, its S3 reached through a relay the test can cut."""
    relay = TcpRelay(emulator)
    stack = start_stack(emulator, tmp_path_factory.mktemp("polled"), "polled", model("v1"), relay)
    yield stack
    stop_service(stack.server)
    relay.close()


def switch_under_load(stack: Stack, tag: str, trigger: Any) -> tuple[list[Answer], float]:
    """Run traffic, call `trigger`, wait until only `tag` answers; return answers and t0."""
    before = stack.serving()
    assert before != tag
    with Traffic(stack.server.port) as traffic:
        assert wait_until(lambda: len(traffic.answers) >= 20, WAIT)
        triggered = time.monotonic()
        trigger()
        switched = wait_until(
            lambda: len(traffic.answers) > 40 and all(a.model == tag for a in traffic.last(20)),
            WAIT,
        )
        time.sleep(1)  # a few more requests on the new workers
    answers = traffic.answers
    assert switched, summary(answers[-50:])
    assert answers[0].model == before  # the test can tell the versions apart
    return answers, triggered


def assert_clean_switch(answers: list[Answer], tag: str, triggered: float, bound: float) -> None:
    """Every answer a 200, and none from the old model to a request sent past the bound."""
    failed = [a for a in answers if a.kind != "ok"]
    late_old = [a for a in answers if a.model != tag and a.started > triggered + bound]
    assert (failed, late_old) == ([], []), summary(answers)


# --- the master's side, in process ---------------------------------------------------------
def hanging_predict(model_input: Any, params: Any) -> Any:
    time.sleep(120)


def exiting_predict(model_input: Any, params: Any) -> Any:
    os._exit(3)  # as a crash in native code would end the check


def in_process(
    emulator: int, tmp: Path, name: str, **values: str
) -> tuple[ModelReloader, Callable[[bytes], str]]:
    """A reloader over a Scorer in this process, and how to publish its next version."""
    s3, bucket = aws_client("s3", emulator), f"reload-unit-{name}"
    path = versioned_bucket(s3, bucket, model("u1"))
    settings = make_settings(S3_MODEL_PATH=path, **{"GC_FREEZE": "false", **values})
    app = create_app(settings, load_model(settings), metrics=Metrics())
    return ModelReloader(app.extensions["scorer"], tmp), lambda data: publish(s3, bucket, data)


def test_verified_version_is_swapped_in_counted_and_recorded(emulator: int, tmp_path: Path) -> None:
    reloader, publish_next = in_process(emulator, tmp_path, "swap")
    scorer, metrics = reloader.scorer, reloader.scorer.metrics
    assert reloader.reload() is False  # nothing new yet
    newest = publish_next(model("u2"))

    swapped = reloader.reload()

    assert swapped and scorer.model is not None
    assert (scorer.model.version, scorer.model.params) == (newest, {"tag": "u2"})
    assert sample(metrics, "scorer_model_reloads_total", result="success") == 1
    assert sample(metrics, "scorer_model_loaded_timestamp_seconds") == scorer.model.loaded_at
    assert read_state(tmp_path) == ReloadState(newest, "success")
    assert list(tmp_path.glob("staged*")) == []


def test_the_old_model_is_freed_in_the_master_before_the_new_workers_fork(
    emulator: int, tmp_path: Path
) -> None:
    reloader, publish_next = in_process(emulator, tmp_path, "free", GC_FREEZE="true")
    knot = fakes.Knot()  # stands for the old model's cycles: functions, classes, modules
    assert reloader.scorer.model is not None
    reloader.scorer.model.params["knot"] = knot
    old = weakref.ref(knot)
    del knot
    publish_next(model("u2"))
    try:
        assert reloader.reload()
        # Collected before gc.freeze(): frozen, it would stay in the master (and every fork).
        assert old() is None
    finally:
        gc.unfreeze()


def test_the_entry_point_keeps_no_reference_to_the_old_model(
    emulator: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3, bucket = aws_client("s3", emulator), "reload-unit-wsgi"
    monkeypatch.setenv("S3_MODEL_PATH", versioned_bucket(s3, bucket, model("w1")))
    monkeypatch.setenv("GC_FREEZE", "false")
    monkeypatch.delitem(sys.modules, "wsgi", raising=False)
    app = importlib.import_module("wsgi").app  # what gunicorn preloads
    reloader = app.extensions["scorer.reloader"]
    try:
        old = weakref.ref(app.extensions["scorer"].model.predict)
        publish(s3, bucket, model("w2"))

        assert reloader.reload()

        assert old() is None  # nothing but the Scorer held it: a reload frees the old model
    finally:
        reloader.close()
        sys.modules.pop("wsgi", None)


@pytest.mark.parametrize(
    ("predict", "cause"),
    [
        (hanging_predict, "not downloaded and checked within 10 s"),
        (exiting_predict, "the check exited with status 3"),
    ],
)
def test_a_check_that_hangs_or_crashes_refuses_the_version_it_saw(
    emulator: int, tmp_path: Path, predict: Any, cause: str
) -> None:
    reloader, publish_next = in_process(
        emulator, tmp_path, predict.__name__[:4], MODEL_RELOAD_TIMEOUT_SECONDS="10"
    )
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        bad = publish_next(cloudpickle.dumps(fakes.tagged_model("bad", predict=predict)))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    assert reloader.reload() is False

    assert reloader.scorer.model is not None and reloader.scorer.model.params == {"tag": "u1"}
    assert sample(reloader.scorer.metrics, "scorer_model_reloads_total", result="failure") == 1
    # Recorded under its version, so the poll does not ask for it again.
    assert read_state(tmp_path) == ReloadState(bad, "failure", cause)


# --- new versions --------------------------------------------------------------------------
def test_upload_reaches_every_worker_under_load_without_a_failed_request(polled: Stack) -> None:
    successes = polled.reloads("success")
    version: list[str] = []

    answers, uploaded = switch_under_load(
        polled, "v2", lambda: version.append(polled.publish(model("v2")))
    )

    assert_clean_switch(answers, "v2", uploaded, SWITCH_BOUND)
    health = polled.health()
    assert health["model_version"] == version[0]
    assert health["model_sha256"] == hashlib.sha256(model("v2")).hexdigest()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", health["model_loaded_at"])
    assert polled.reloads("success") == successes + 1
    text = polled.server.metrics()
    assert f'version="{version[0]}"' in text  # scorer_model_info of the new workers
    assert sample_value(text, "scorer_model_loaded_timestamp_seconds") > time.time() - WAIT
    print(f"poll switch: {figures(answers, 'v2', uploaded)}")


def test_three_quick_uploads_end_on_the_newest(polled: Stack) -> None:
    versions = [polled.publish(model(tag)) for tag in ("v3", "v4", "v5")]

    assert wait_until(lambda: polled.health()["model_version"] == versions[-1], WAIT)
    reloads = polled.reloads("success")
    time.sleep(3 * POLL)  # nothing left to do: no further reload
    assert (polled.health()["model_version"], polled.reloads("success")) == (versions[-1], reloads)
    assert {polled.serving() for _ in range(6)} == {"v5"}


# --- bad versions --------------------------------------------------------------------------
MISSING = "scorer_test_missing_dependency"
BAD_MODELS = {
    "truncated file": (
        lambda: model("bad")[: len(model("bad")) // 2],
        "cannot be unpickled: UnpicklingError",
    ),
    "not a pickle": (lambda: b"this is not a pickle", "cannot be unpickled: UnpicklingError"),
    "dict without predict": (
        lambda: fakes.pickle_by_value({"preprocess": fakes.echo_preprocess}),
        "has no 'predict'",
    ),
    "predict raises": (
        lambda: fakes.pickle_by_value(fakes.tagged_model("bad", predict=fakes.failing_predict)),
        "fails on the sample request: RuntimeError: the model broke",
    ),
    "missing module": (
        lambda: fakes.pickle_needing_module(MISSING),
        f"cannot be unpickled: ModuleNotFoundError: No module named '{MISSING}'",
    ),
    **{
        case: (
            lambda case=case: fakes.pickle_by_value(
                fakes.tagged_model("bad", **fakes.BAD_KEYS[case][0])
            ),
            message,
        )
        for case, (_, message) in fakes.BAD_KEYS.items()
    },
}


@dataclass
class Serving:
    """What the stack serves before a bad version is published."""

    version: str
    tag: str
    failures: float
    successes: float

    @classmethod
    def of(cls, stack: Stack) -> Serving:
        version = stack.health()["model_version"]
        return cls(version, stack.serving(), stack.reloads("failure"), stack.reloads("success"))


def assert_refused_and_kept(stack: Stack, kept: Serving, refused: str, cause: str) -> None:
    """The refusal is counted and logged once; the master and the old model go on serving."""
    assert wait_until(lambda: stack.reloads("failure") >= kept.failures + 1, WAIT), stack.log()
    assert stack.alive()
    assert stack.health()["model_version"] == kept.version
    assert stack.serving() == kept.tag
    lines = [line for line in stack.log().splitlines() if f"version {refused} refused" in line]
    assert len(lines) == 1 and cause in lines[0], lines
    assert f"still serving version {kept.version}" in lines[0]


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_version_is_refused_and_the_current_one_keeps_serving(polled: Stack, case: str) -> None:
    make, cause = BAD_MODELS[case]
    kept = Serving.of(polled)

    refused = polled.publish(make())

    assert_refused_and_kept(polled, kept, refused, cause)
    time.sleep(3 * POLL)  # the poll sees the refused version again: not retried
    counts = (polled.reloads("failure"), polled.reloads("success"))
    assert counts == (kept.failures + 1, kept.successes)


def test_unreachable_s3_is_a_counted_poll_error_and_a_refused_reload(polled: Stack) -> None:
    relay = polled.relay
    assert relay is not None
    errors, failures = polled.poll_errors(), polled.reloads("failure")
    serving, version = polled.serving(), polled.health()["model_version"]
    relay.refuse()
    try:
        assert wait_until(lambda: polled.poll_errors() >= errors + 2, WAIT)  # each period
        assert polled.alive() and polled.serving() == serving

        os.kill(polled.server.process.pid, signal.SIGHUP)  # by hand, while S3 is down

        assert wait_until(lambda: polled.reloads("failure") >= failures + 1, WAIT)
        assert polled.alive()
        assert polled.health()["model_version"] == version
        assert polled.serving() == serving
        refusals = [line for line in polled.log().splitlines() if "refused, still" in line]
        assert f"cannot read s3://{polled.bucket}/{KEY}" in refusals[-1]
    finally:
        relay.listen()
    # S3 back: the poll reads it again, and the next version goes through.
    newest = polled.publish(model("v6"))
    assert wait_until(lambda: polled.health()["model_version"] == newest, WAIT)
    assert polled.serving() == "v6"


def test_another_worker_polls_when_the_polling_one_dies(polled: Stack) -> None:
    master = polled.server.process.pid

    def polling_worker() -> int:
        lines = [line for line in polled.log().splitlines() if "polls the model every" in line]
        return int(lines[-1].split("worker ")[1].split()[0]) if lines else 0

    # A worker of the current generation takes the lock one period after it starts.
    assert wait_until(lambda: polling_worker() in worker_pids(master), WAIT)
    pid = polling_worker()

    os.kill(pid, signal.SIGKILL)
    newest = polled.publish(model("v7"))

    assert wait_until(lambda: polled.health()["model_version"] == newest, WAIT)
    assert polled.serving() == "v7"


# --- by hand, and under MODEL_SHA256 -------------------------------------------------------
def test_sighup_by_hand_swaps_the_model_under_load(emulator: int, tmp_path: Path) -> None:
    stack = start_stack(emulator, tmp_path, "by-hand", model("h1"), MODEL_POLL_SECONDS="0")
    try:
        newest = stack.publish(model("h2"))
        time.sleep(2 * POLL)
        assert stack.serving() == "h1"  # no poll: nothing changes by itself

        answers, signalled = switch_under_load(
            stack, "h2", lambda: os.kill(stack.server.process.pid, signal.SIGHUP)
        )

        assert_clean_switch(answers, "h2", signalled, 10)
        assert stack.health()["model_version"] == newest
        assert stack.reloads("success") == 1
        assert "polls the model" not in stack.log()
        print(f"SIGHUP switch: {figures(answers, 'h2', signalled)}")
    finally:
        stop_service(stack.server)


def test_pinned_sha256_refuses_other_files_and_takes_the_pinned_one_back(
    emulator: int, tmp_path: Path
) -> None:
    pinned = model("p1")
    digest = hashlib.sha256(pinned).hexdigest()
    stack = start_stack(emulator, tmp_path, "pinned", pinned, MODEL_SHA256=digest)
    try:
        kept = Serving.of(stack)
        other = stack.publish(model("p2"))
        cause = f"has sha256 {hashlib.sha256(model('p2')).hexdigest()}, MODEL_SHA256 expects"
        assert_refused_and_kept(stack, kept, other, cause)
        assert kept.tag == "p1"

        again = stack.publish(pinned)  # the pinned file, published again: a roll-back

        assert wait_until(lambda: stack.health()["model_version"] == again, WAIT)
        assert stack.health()["model_sha256"] == digest
        assert (stack.reloads("success"), stack.reloads("failure")) == (1, 1)
    finally:
        stop_service(stack.server)
