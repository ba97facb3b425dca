"""Decide whether a `/score` request is still worth scoring, before its model runs.

A worker answers THREADS requests at once; the rest wait for a thread. Past capacity that wait
grows without bound, every request comes out too late for its client, and the CPU goes to
answers nobody reads. So when a thread takes a request, before its body is read:

- a **standing queue** (CoDel, as folly's `Codel` applies it to server queues): when the
  shortest wait over the last interval was above the target, the queue never drained in that
  interval; then a request that waited over twice the target is refused. A burst that drains
  within an interval is served;
- a **hard cap** on the wait, whatever the state;
- the **client's deadline**: `X-Request-Timeout-Ms` or Envoy's `x-envoy-expected-rq-timeout-ms`
  (its budget, in ms), counted from `X-Request-Start` when a proxy sets it (else from the
  request's arrival at this worker): refused when less is left than scoring takes here;

and once its body is in, for a request that waited past the target: has its client gone? A
FIN seen before the body is read may be a client that sent a short body and half-closed, which
must get its 400.

The policy keeps its state per worker and reads time only through the clocks it is given.
"""

from __future__ import annotations

import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from scorer.errors import Overloaded
from scorer.serving.line import ADMITTED, QUEUE_DELAY, QUEUED_AT

TIMEOUT_HEADERS = ("HTTP_X_REQUEST_TIMEOUT_MS", "HTTP_X_ENVOY_EXPECTED_RQ_TIMEOUT_MS")
REQUEST_START_HEADER = "HTTP_X_REQUEST_START"
# The same headers as they arrive on the wire, lower-case (scorer.serving.admission reads them).
_DEADLINE_HEADERS = ("x-request-timeout-ms", "x-envoy-expected-rq-timeout-ms", "x-request-start")
DEADLINE_WAIT_SHARE = 0.25
"""The share of a client's announced budget a request may spend waiting for a thread."""
SERVICE_TIME_WEIGHT = 0.125
"""Weight of the newest scored request in the moving average of the service time."""


class Codel:
    """Tell a standing queue from a burst by the shortest queue delay over each interval.

    folly's variant of CoDel for request queues: instead of dropping ever more often, it sheds
    every request that waited over twice the target while the last interval was overloaded,
    which its authors found works better for servers. Thread-safe.
    """

    def __init__(self, target: float, interval: float, clock: Callable[[], float]) -> None:
        self.target = target
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._interval_end = clock() + interval
        self._min_delay = 0.0
        self._overloaded = False

    def should_shed(self, delay: float) -> bool:
        """Observe one request's queue delay; tell whether to refuse it."""
        now = self._clock()
        with self._lock:
            if now >= self._interval_end:
                self._overloaded = self._min_delay > self.target
                self._interval_end = now + self.interval
                self._min_delay = delay
                return False  # the first request of an interval opens it: never shed
            if delay < self._min_delay:
                self._min_delay = delay
            return self._overloaded and delay > 2 * self.target

    def standing(self) -> bool:
        """Tell, without observing a delay, whether a request waiting over twice the target
        would be shed now: the last interval was overloaded (or the one just ended was)."""
        with self._lock:
            if self._clock() >= self._interval_end:
                return self._min_delay > self.target
            return self._overloaded


def parse_timeout(value: str) -> float | None:
    """Return a budget header's value (ms) in seconds; None for 0 (Envoy: no timeout) or junk."""
    try:
        ms = float(value)
    except ValueError:
        return None
    return ms / 1000 if 0 < ms < math.inf else None


def parse_request_start(value: str) -> float | None:
    """Return `X-Request-Start` as Unix seconds, or None.

    Proxies write it as `t=<seconds>` with a fraction (nginx's `$msec`), or in milliseconds
    (Heroku) or microseconds (Apache's `%t`), with or without `t=`: the magnitude tells.
    """
    text = value.strip().removeprefix("t=")
    try:
        stamp = float(text)
    except ValueError:
        return None
    if not 0 < stamp < math.inf:
        return None
    if stamp > 1e14:
        return stamp / 1e6
    if stamp > 1e11:
        return stamp / 1e3
    return stamp


def client_gone(sock: Any) -> bool:
    """Tell whether the client has closed its connection: a FIN or a reset is waiting.

    A peek, not a read: bytes waiting (a pipelined request) mean the client is there. A
    client that half-closed after sending its whole request looks the same as one that left;
    like nginx (its 499) and uvicorn, this takes it as gone.
    """
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return False
    try:
        return socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
    except OSError:
        return False


class Shedder:
    """One worker's load-shedding policy: CoDel, the hard cap, deadlines, gone clients."""

    def __init__(
        self,
        target: float,
        interval: float,
        max_queue: float,
        *,
        warmup: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        probe: Callable[[Any], bool] = client_gone,
    ) -> None:
        self.codel = Codel(target, interval, clock)
        self.max_queue = max_queue
        # A worker starts with an empty feature cache: its first requests read the store and
        # queue behind each other (after a model reload, on every worker at once). Waits in its
        # first `warmup` seconds are not refused; deadlines and gone clients still are.
        self.warmup = warmup
        self._first_request: float | None = None
        self._clock = clock
        self._wall_clock = wall_clock
        self._probe = probe
        # What scoring a request takes in this worker, lately: a deadline shorter is not met.
        self.service_time = 0.0

    def record_service(self, seconds: float) -> None:
        """Fold one scored request's service time into the moving average."""
        self.service_time += (seconds - self.service_time) * SERVICE_TIME_WEIGHT

    def check(self, environ: Mapping[str, Any]) -> Overloaded | None:
        """Return why to refuse this request before its body is read, or None to go on."""
        delay = environ.get(QUEUE_DELAY)
        if delay is not None and not self._warming_up():
            # CoDel sees every delay, refused or not. A request the worker's main loop judged
            # on arrival and let in was let in with the queue in view (scorer.serving.admission):
            # it is refused for a standing queue only if it waited well past the wait it was let
            # in with (the line's pace changed under it), else a timeout would follow.
            standing = self.codel.should_shed(delay) and self._past_promise(environ, delay)
            refusal = self._refuse_wait(
                delay, standing, f"waited {_ms(delay)} ms for a worker thread"
            )
            if refusal is not None:
                return refusal
        budget = self.budget(environ)
        if budget is None:
            return None  # no deadline announced: nothing more to judge (or to format)
        if delay is not None and delay > budget * DEADLINE_WAIT_SHARE:
            return _over_share(f"waited {_ms(delay)} ms for a worker thread", budget)
        scoring = f"scoring takes about {_ms(self.service_time)} ms"
        left = self.time_left(environ, budget)
        return self._refuse_deadline(left, self.service_time, scoring)

    def check_arrival(
        self, wait: float, waiting: int, headers: Mapping[str, str]
    ) -> Overloaded | None:
        """Return why to refuse a request as it arrives, or None to queue it for a thread.

        `wait` is what a request queued now can expect to wait for a thread, with `waiting`
        requests ahead of it. The same rules as `check`, on that wait instead of the
        request's own (it has none yet). `headers` are the request's, names lower-case.
        """
        line = f"{waiting} in line for a worker thread, about {_ms(wait)} ms to wait"
        if not self._warming_up():
            standing = wait > 2 * self.codel.target and self.codel.standing()
            refusal = self._refuse_wait(wait, standing, line)
            if refusal is not None:
                return refusal
        environ = {
            f"HTTP_{name.upper().replace('-', '_')}": value
            for name in _DEADLINE_HEADERS
            if (value := headers.get(name)) is not None
        }
        budget = self.budget(environ)
        if budget is None:
            return None
        if wait > budget * DEADLINE_WAIT_SHARE:
            return _over_share(line, budget)
        scoring = f"{line}, and scoring takes about {_ms(self.service_time)} ms"
        left = self.time_left(environ, budget)
        return self._refuse_deadline(left, wait + self.service_time, scoring)

    def _past_promise(self, environ: Mapping[str, Any], delay: float) -> bool:
        """Tell whether a request waited past what it was let in with (any, if not judged)."""
        admitted = environ.get(ADMITTED)
        if admitted is None:
            return True
        target = self.codel.target
        return bool(delay > 2 * max(admitted, 2 * target) + 2 * target)

    def _refuse_wait(self, wait: float, standing: bool, waited: str) -> Overloaded | None:
        """The cap, then the standing queue, for a request whose wait `waited` describes."""
        if self.max_queue and wait > self.max_queue:
            return Overloaded("queue_limit", f"{waited}, over the {_ms(self.max_queue)} ms limit")
        if standing:
            return Overloaded(
                "queue",
                f"{waited}; the queue has stayed over {_ms(self.codel.target)} ms"
                f" for {_ms(self.codel.interval)} ms",
            )
        return None

    @staticmethod
    def _refuse_deadline(left: float | None, needed: float, needs: str) -> Overloaded | None:
        """Refuse when less of the client's budget is `left` than the `needed` time (`needs`)."""
        if left is None or left >= needed:
            return None
        if left < 0:
            return Overloaded("deadline", f"the client's deadline passed {_ms(-left)} ms ago")
        return Overloaded("deadline", f"{_ms(left)} ms left of the client's deadline; {needs}")

    def _warming_up(self) -> bool:
        now = self._clock()
        if self._first_request is None:
            self._first_request = now  # in this worker: the policy is built before fork
        return now - self._first_request < self.warmup

    def check_client(self, environ: Mapping[str, Any]) -> Overloaded | None:
        """Return a refusal if the request queued past the target and its client has gone."""
        delay = environ.get(QUEUE_DELAY)
        if delay is None or delay <= self.codel.target:
            return None  # no queue to speak of: not worth a system call
        if not self._probe(environ.get("gunicorn.socket")):
            return None
        return Overloaded(
            "disconnected",
            f"the client closed its connection while the request waited {_ms(delay)} ms",
            close=True,
        )

    @staticmethod
    def budget(environ: Mapping[str, Any]) -> float | None:
        """Return the client's announced budget in seconds (the shorter of two), None if none."""
        budgets = [
            budget
            for name in TIMEOUT_HEADERS
            if (value := environ.get(name)) is not None
            and (budget := parse_timeout(value)) is not None
        ]
        return min(budgets) if budgets else None

    def time_left(self, environ: Mapping[str, Any], budget: float | None = None) -> float | None:
        """Return the seconds left of the client's budget (negative: passed), None if unknown.

        `budget`: the announced one, when the caller has read it already.
        """
        if budget is None:
            budget = self.budget(environ)
        if budget is None:
            return None
        queued_at = environ.get(QUEUED_AT)
        elapsed = self._clock() - queued_at if queued_at is not None else 0.0
        header = environ.get(REQUEST_START_HEADER)
        started = parse_request_start(header) if header is not None else None
        if started is not None:
            # The proxy's clock may differ from ours; the wait seen here is a lower bound.
            elapsed = max(elapsed, self._wall_clock() - started)
        return budget - elapsed


def _over_share(waited: str, budget: float) -> Overloaded:
    """Refuse a wait past its share of the client's announced budget.

    The cap derived from the deadline: past a quarter of its budget in line, a request is
    refused while its client has most of the budget left to try another replica, instead of
    being scored late or refused at the end of it.
    """
    return Overloaded(
        "deadline", f"{waited}, over a quarter of the client's {_ms(budget)} ms budget"
    )


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000, 1):g}"
