"""Errors a client can see, each carrying its HTTP status, and the handler that renders them.

Every error leaves the service as `{"detail": "..."}`, the shape FastAPI (and so the seed
service) writes, so existing clients parse our errors unchanged.
"""

from __future__ import annotations

import logging

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)


class ScorerError(Exception):
    """A failure the client sees, with its HTTP status and a detail naming the problem."""

    status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def json(self) -> bytes:
        """Return the `{"detail": ...}` body clients receive."""
        return detail_json(self.detail)


class InvalidRequest(ScorerError):
    """The body is not JSON, or not JSON at all."""

    status = 400


class IncompleteRequest(ScorerError):
    """The client ended the connection before the whole body it announced."""

    status = 400


class UnprocessableRequest(ScorerError):
    """The body is JSON but not the shape `/score` takes."""

    status = 422


class RequestTimeout(ScorerError):
    """The client did not send its whole body in time."""

    status = 408


class PayloadTooLarge(ScorerError):
    """The body or the stream list is over the configured limit."""

    status = 413


class NoModelOutput(ScorerError):
    """The model returned nothing to send back."""

    status = 404


class ModelFailed(ScorerError):
    """The model's own code raised."""

    status = 500


class Overloaded(ScorerError):
    """Refused to stay within capacity (shed): worth retrying once, elsewhere, in budget.

    `reason` (queue, queue_limit, deadline, disconnected) labels the refusal's count and is
    the first word after `overloaded: ` in its detail.
    """

    status = 503

    def __init__(self, reason: str, detail: str, *, close: bool = False) -> None:
        super().__init__(f"overloaded: {reason} - {detail}")
        self.reason = reason
        self.close = close  # the client has gone: no point keeping its connection


class ModelNotLoaded(ScorerError):
    """The service has no model to score with."""

    status = 503


def detail_json(detail: str) -> bytes:
    """Return the `{"detail": ...}` body every error uses, as FastAPI writes it."""
    return orjson.dumps({"detail": detail})


def error_response(status: int, detail: str) -> Response:
    """Return the `{"detail": ...}` JSON response for a Flask route."""
    return Response(detail_json(detail), status=status, mimetype="application/json")


def register_error_handlers(app: Flask) -> None:
    """Render our errors, Werkzeug's (404, 405, 413) and anything unexpected as JSON."""

    @app.errorhandler(ScorerError)
    def _scorer_error(exc: ScorerError) -> Response:
        return error_response(exc.status, exc.detail)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return error_response(status, "Request body too large")
        # FastAPI's wording for routing errors: "Not Found", "Method Not Allowed".
        response = error_response(status, exc.name)
        if status == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error")
        return error_response(500, "Internal Server Error")
