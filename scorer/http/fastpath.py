"""`POST /score` as plain WSGI, in front of Flask: the one route on every page view.

Flask's request context, URL adapter and response object cost, in process, about as much as
scoring 30 streams from a warm cache; this path reads the body, scores and answers without
them. It answers the other methods on `/score` too (405, or OPTIONS), so Flask has no route
for `/score`; every other path goes on to the Flask app, routing errors included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from gunicorn.http.errors import ChunkMissingTerminator, NoMoreData, ParseException

from scorer.errors import (
    IncompleteRequest,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ScorerError,
    detail_json,
)
from scorer.eventlog.producer import EventLog
from scorer.metrics import Metrics
from scorer.payload import parse_score_request
from scorer.record import RECORD_KEY, ScoreRecord
from scorer.scoring import Scorer
from scorer.serving.admission import SCORE_PATH
from scorer.serving.deadlines import DeadlineExpired, DeadlineSocket
from scorer.serving.line import QUEUE_DELAY, server_timing
from scorer.serving.shedding import Shedder
from scorer.serving.watchdog import Watchdog

logger = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
SCORE_METHODS = "OPTIONS, POST"  # the Allow header for /score
UNMATCHED = "unmatched"  # the endpoint label of requests no route took
_REASONS = {
    200: "200 OK",
    400: "400 Bad Request",
    404: "404 Not Found",
    408: "408 Request Timeout",
    413: "413 Content Too Large",
    422: "422 Unprocessable Content",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}

_METHOD_NOT_ALLOWED = detail_json("Method Not Allowed")


def read_body(environ: dict[str, Any], limit: int, timeout: float) -> bytes:
    """Read the request body: refuse one over `limit` bytes, or one not all sent within `timeout`.

    A client trickling its body must cost one thread for a few seconds, not hold it until the
    watchdog retires the worker; a malformed or cut-short body is the client's error, not ours.
    """
    sock = environ.get("gunicorn.socket")
    if isinstance(sock, DeadlineSocket):
        sock.start_phase(timeout)
    elif sock is not None:
        # Not our worker's connection (another worker class, TLS): bound each read at least.
        previous = sock.gettimeout()
        sock.settimeout(timeout)
    try:
        return _read_limited(environ, limit)
    except (DeadlineExpired, TimeoutError):
        raise RequestTimeout(f"request body not received within {timeout:g} s") from None
    except (NoMoreData, ChunkMissingTerminator) as exc:
        if isinstance(exc, NoMoreData) or len(exc.term) < 2:  # the client stopped sending
            raise IncompleteRequest(CHUNKED_CUT_SHORT) from None
        raise InvalidRequest(f"malformed request body: {type(exc).__name__}") from None
    except (ParseException, OSError) as exc:
        raise InvalidRequest(f"malformed request body: {type(exc).__name__}") from None
    finally:
        if isinstance(sock, DeadlineSocket):
            sock.end_phase()
        elif sock is not None:
            sock.settimeout(previous)


CHUNKED_CUT_SHORT = "incomplete request body: the chunked body ended before its last chunk"


def _read_limited(environ: dict[str, Any], limit: int) -> bytes:
    length_header = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    if length_header:
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length > limit:
            raise PayloadTooLarge("Request body too large")
        if length >= 0:
            body = bytes(stream.read(length))
            if len(body) < length:  # the client closed its side early
                raise IncompleteRequest(f"incomplete request body: {len(body)} of {length} bytes")
            return body
    # Chunked or unknown length: read one byte past the limit to tell "too large".
    body = bytes(stream.read(limit + 1))
    if len(body) > limit:
        raise PayloadTooLarge("Request body too large")
    return body


def query_params(query_string: str) -> dict[str, str]:
    """Return the query parameters, the first value of a repeated name winning (as Flask's)."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        params.setdefault(name, value)
    return params


class ScoreEndpoint:
    """WSGI middleware answering `/score`; every other path goes to the wrapped app."""

    def __init__(
        self,
        app: WSGIApp,
        scorer: Scorer,
        metrics: Metrics,
        max_body_bytes: int,
        watchdog: Watchdog,
        routes: frozenset[str],
        shedder: Shedder | None = None,
        events: EventLog | None = None,
    ) -> None:
        self._app = app
        self._events = events  # None: no inference event log (KAFKA_BOOTSTRAP_SERVERS unset)
        self._shedder = shedder  # None: every request is scored, however late
        self._watchdog = watchdog
        self._routes = routes  # the wrapped app's paths, to label a 504 of one of them
        self._scorer = scorer
        self._metrics = metrics
        self._limit = max_body_bytes
        self._body_timeout = scorer.settings.body_timeout_seconds
        self._max_streams = scorer.settings.max_streams
        self._count = {status: metrics.requests.labels(SCORE_PATH, status) for status in _REASONS}
        self._count_405 = metrics.requests.labels(UNMATCHED, 405)  # as Flask's routing errors
        self._shed = metrics.shed

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == SCORE_PATH:
            if environ.get("REQUEST_METHOD") == "POST":
                return self._score(environ, start_response)
            return self._other_method(environ, start_response)
        token = self._watchdog.begin(environ, path if path in self._routes else UNMATCHED)
        try:
            return self._app(environ, start_response)
        finally:
            self._watchdog.end(token)

    def _other_method(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Answer OPTIONS with the methods `/score` takes, any other method with 405.

        The same answers, and counts, as Flask gave when it routed these requests.
        """
        method = environ.get("REQUEST_METHOD")
        if method == "OPTIONS":
            start_response(_REASONS[200], [("Allow", SCORE_METHODS), ("Content-Length", "0")])
            self._count[200].inc()
            return [b""]
        start_response(
            "405 Method Not Allowed",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(_METHOD_NOT_ALLOWED))),
                ("Allow", SCORE_METHODS),
            ],
        )
        self._count_405.inc()
        return [b"" if method == "HEAD" else _METHOD_NOT_ALLOWED]

    def _score(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        metrics, shedder = self._metrics, self._shedder
        queue_delay = environ.get(QUEUE_DELAY)
        if queue_delay is not None:
            metrics.queue_delay.observe(queue_delay)
        headers = [("Content-Type", "application/json")]
        answered = False  # by the watchdog, which has counted it then
        refused = False
        trace = None  # kept for the inference event of a logged user's request
        metrics.inflight.inc()
        try:
            # Refused before the body is read (gunicorn drains it after the answer, so the
            # connection stays usable) and long before the model runs.
            if shedder is not None and (refusal := shedder.check(environ)) is not None:
                raise refusal
            body = read_body(environ, self._limit, self._body_timeout)
            if shedder is not None and (refusal := shedder.check_client(environ)) is not None:
                raise refusal
            # Timed from here: a slow client is bounded by the body timeout, not the watchdog.
            token = self._watchdog.begin(environ, SCORE_PATH, timed=True)
            try:
                request = parse_score_request(body, self._max_streams)
                query = query_params(environ.get("QUERY_STRING", ""))
                record = environ[RECORD_KEY] = ScoreRecord()
                if self._events is not None:
                    trace = self._events.trace(request, query)
                output = self._scorer.score(request, query, record, trace=trace)
            finally:
                answered = self._watchdog.end(token)
            status = 200
        except Overloaded as exc:
            status, output, refused = exc.status, exc.json(), True
            headers.append(("Retry-After", "1"))
            if exc.close:
                headers.append(("Connection", "close"))
            self._shed[exc.reason].inc()
        except ScorerError as exc:
            status, output = exc.status, exc.json()
        except Exception:
            logger.exception("unhandled error scoring a request")
            status, output = 500, ScorerError("Internal Server Error").json()
        finally:
            metrics.inflight.dec()
        elapsed = time.perf_counter() - started
        headers.append(("Content-Length", str(len(output))))
        scored = environ.get(RECORD_KEY) if status == 200 else None
        headers.append(("Server-Timing", timing_header(queue_delay, elapsed, scored)))
        start_response(_REASONS[status], headers)
        if not answered:  # else its client has its 504, and this answer goes nowhere
            self._count[status].inc()
            if not refused:  # a refusal's few microseconds would hide the scored requests' time
                metrics.request_duration.observe(elapsed)
            if status == 200 and shedder is not None:
                shedder.record_service(elapsed)
            if trace is not None and trace.body is not None and self._events is not None:
                return self._events.after_sent(output, trace)  # encoded once the body is sent
        return [output]


def timing_header(queue_delay: float | None, app: float, record: ScoreRecord | None) -> str:
    """Return Server-Timing: the wait for a thread (when known), the app's time, and for a
    scored request its record (store, decode, model times; misses; what was scored)."""
    timing = server_timing(queue_delay, app)
    return timing if record is None else f"{timing}, {record.server_timing()}"
