"""`POST /score` as plain WSGI, in front of Flask: the one route on every page view.

Flask's request context, URL adapter and response object cost about 120 us a request, as much
as scoring 30 streams from a warm cache; this path reads the body, scores and answers without
them. Every other path and method goes on to the Flask app, routing errors included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from scorer.errors import PayloadTooLarge, ScorerError
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
    413: "413 Content Too Large",
    422: "422 Unprocessable Content",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """Read the request body, refusing one over `limit` bytes without reading it all."""
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
    ) -> None:
        self._app = app
        self._watchdog = watchdog
        self._scorer = scorer
        self._metrics = metrics
        self._limit = max_body_bytes
        self._max_streams = scorer.settings.max_streams
        self._count = {status: metrics.requests.labels(SCORE_PATH, status) for status in _REASONS}

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        token = self._watchdog.begin(environ)
        try:
            if environ.get("PATH_INFO") != SCORE_PATH or environ.get("REQUEST_METHOD") != "POST":
                return self._app(environ, start_response)
            return self._score(environ, start_response)
        finally:
            self._watchdog.end(token)

    def _score(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        headers = [("Content-Type", "application/json")]
        try:
            body = read_body(environ, self._limit)
            request = parse_score_request(body, self._max_streams)
            output = self._scorer.score(request, query_params(environ.get("QUERY_STRING", "")))
            status = 200
        except ScorerError as exc:
            status, output = exc.status, exc.json()
            if isinstance(exc, PayloadTooLarge):
                headers.append(("Connection", "close"))  # do not drain a body we refused
        except Exception:
            logger.exception("unhandled error scoring a request")
            status, output = 500, ScorerError("Internal Server Error").json()
        headers.append(("Content-Length", str(len(output))))
        start_response(_REASONS[status], headers)
        self._count[status].inc()
        self._metrics.request_duration.observe(time.perf_counter() - started)
        return [output]
