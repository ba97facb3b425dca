"""`POST /score` as plain WSGI, in front of Flask: the one route on every page view.

Flask's request context, URL adapter and response object cost, in process, about as much as
scoring 30 streams from a warm cache; this path reads the body, scores and answers without
them. Every other path and method goes on to the Flask app, routing errors included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from gunicorn.http.errors import ParseException

from scorer.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, ScorerError
from scorer.metrics import Metrics
from scorer.payload import parse_score_request
from scorer.scoring import Scorer
from scorer.watchdog import Watchdog

logger = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
SCORE_PATH = "/score"
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


def read_body(environ: dict[str, Any], limit: int, timeout: float) -> bytes:
    """Read the request body: refuse one over `limit` bytes, or one not sent within `timeout`.

    A client that stalls mid-body must cost one thread for a few seconds, not hold it until
    the watchdog retires the worker; a malformed chunked body is the client's error, not ours.
    """
    sock = environ.get("gunicorn.socket")
    previous = sock.gettimeout() if sock is not None else None
    if sock is not None:
        sock.settimeout(timeout)
    try:
        return _read_limited(environ, limit)
    except TimeoutError:
        raise RequestTimeout(f"request body not received within {timeout:g} s") from None
    except (ParseException, OSError) as exc:  # NoMoreData is an OSError too
        raise InvalidRequest(f"malformed request body: {type(exc).__name__}") from None
    finally:
        if sock is not None:
            sock.settimeout(previous)


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
            return bytes(stream.read(length))
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
    """WSGI middleware answering `POST /score`; everything else goes to the wrapped app."""

    def __init__(
        self,
        app: WSGIApp,
        scorer: Scorer,
        metrics: Metrics,
        max_body_bytes: int,
        watchdog: Watchdog,
        routes: frozenset[str],
    ) -> None:
        self._app = app
        self._watchdog = watchdog
        self._routes = routes  # the wrapped app's paths, to label a 504 of one of them
        self._scorer = scorer
        self._metrics = metrics
        self._limit = max_body_bytes
        self._body_timeout = scorer.settings.body_timeout_seconds
        self._max_streams = scorer.settings.max_streams
        self._count = {status: metrics.requests.labels(SCORE_PATH, status) for status in _REASONS}

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == SCORE_PATH and environ.get("REQUEST_METHOD") == "POST":
            return self._score(environ, start_response)
        path = environ.get("PATH_INFO", "")
        token = self._watchdog.begin(environ, path if path in self._routes else "unmatched")
        try:
            return self._app(environ, start_response)
        finally:
            self._watchdog.end(token)

    def _score(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        answered = False  # by the watchdog, which has counted it then
        try:
            body = read_body(environ, self._limit, self._body_timeout)
            # Timed from here: a slow client is bounded by the body timeout, not the watchdog.
            token = self._watchdog.begin(environ, SCORE_PATH, timed=True)
            try:
                request = parse_score_request(body, self._max_streams)
                query = query_params(environ.get("QUERY_STRING", ""))
                output = self._scorer.score(request, query)
            finally:
                answered = self._watchdog.end(token)
            status = 200
        except ScorerError as exc:
            status, output = exc.status, exc.json()
        except Exception:
            logger.exception("unhandled error scoring a request")
            status, output = 500, ScorerError("Internal Server Error").json()
        start_response(
            _REASONS[status],
            [("Content-Type", "application/json"), ("Content-Length", str(len(output)))],
        )
        if not answered:  # else its client has its 504, and this answer goes nowhere
            self._count[status].inc()
            self._metrics.request_duration.observe(time.perf_counter() - started)
        return [output]
