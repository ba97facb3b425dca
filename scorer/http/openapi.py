"""The OpenAPI 3 description of the service, served at `GET /openapi.json`."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "An error, with `detail` naming the problem.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["detail"],
                "properties": {"detail": {"type": "string"}},
            }
        }
    },
}
_JSON_OBJECT = {"type": "object", "additionalProperties": True}
_SERVER_TIMING = {
    "description": "`queue;dur=<ms>, app;dur=<ms>`: the wait for a worker thread (when known)"
    " and the time the service took to answer. A scored request (200) adds its record:"
    ' `store`, `decode`, `preprocess` and `predict` durations (ms), `miss;desc="stream=<n>'
    ' user=<n> global=<n>"` (cache misses), `streams;desc="<scored> history=<n>"` and'
    ' `retrieval;desc="ok|degraded decode_failures=<n>"`.',
    "schema": {"type": "string"},
}
_OVERLOADED = {
    **_ERROR,
    "description": "Refused to stay within capacity, `detail` starting `overloaded: <reason>`"
    " (queue, queue_limit, deadline, disconnected): retry once, on another replica, within the"
    " caller's own deadline. Also `ML Model not loaded`.",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before retrying this replica.",
            "schema": {"type": "integer", "minimum": 0},
        },
        "Server-Timing": _SERVER_TIMING,
    },
}


def _timed(response: dict[str, Any]) -> dict[str, Any]:
    """Return a /score response that carries the Server-Timing header."""
    return {**response, "headers": {"Server-Timing": _SERVER_TIMING, **response.get("headers", {})}}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def build_spec(
    version: str,
    stream_features: list[str],
    user_features: list[str] | None = None,
    global_features: list[str] | None = None,
) -> dict[str, Any]:
    """Return the OpenAPI document for this service and model."""
    kinds = (
        ("stream", stream_features),
        ("user", user_features or []),
        ("global", global_features or []),
    )
    reads = "; ".join(f"{kind} features {', '.join(names)}" for kind, names in kinds if names)
    stream = {
        "type": "object",
        "required": ["streamUrl"],
        "properties": {"streamUrl": {"type": "string"}},
        "additionalProperties": True,
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "scorer",
            "version": version,
            "description": "Scores live video streams with a team's model and DynamoDB features. "
            f"This model reads {reads or 'no features'}.",
        },
        "paths": {
            "/": {
                "get": {
                    "summary": "Say the service runs and which model it serves",
                    "responses": {
                        "200": _ok(
                            "Running.",
                            {
                                "type": "object",
                                "required": ["message", "model_name"],
                                "properties": {
                                    "message": {"type": "string"},
                                    "model_name": {"type": "string", "nullable": True},
                                },
                            },
                        )
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Report whether the model is loaded",
                    "responses": {
                        "200": _ok(
                            "Healthy.",
                            {
                                "type": "object",
                                "required": ["status", "model_loaded", "cache_size"],
                                "properties": {
                                    "status": {"type": "string", "enum": ["ok"]},
                                    "model_loaded": {"type": "boolean"},
                                    "cache_size": {"type": "integer", "minimum": 0},
                                    "stream_cache_size": {"type": "integer", "minimum": 0},
                                    "user_cache_size": {"type": "integer", "minimum": 0},
                                    "global_cache_size": {"type": "integer", "minimum": 0},
                                    "user_features": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                    },
                                    "global_features": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                    },
                                    "model_name": {"type": "string"},
                                    "stream_features": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                    },
                                    "model_sha256": {"type": "string"},
                                    "model_version": {"type": "string"},
                                    "model_loaded_at": {"type": "string", "format": "date-time"},
                                },
                            },
                        ),
                        "503": _ERROR,
                    },
                }
            },
            "/score": {
                "post": {
                    "summary": "Score streams for a user",
                    "description": "Query parameters reach the model as params['query_params']."
                    " For a model with `user_features`, `user.userid` (a string or integer)"
                    " names the user whose features are set on `user`; without it none are"
                    " read. Global features reach the model as params['globals'], the user's"
                    " watched streams with their features as params['history_streams']."
                    " A client's deadline, `X-Request-Timeout-Ms` or"
                    " `x-envoy-expected-rq-timeout-ms` (ms, from `X-Request-Start` when a proxy"
                    " sets it), is honoured: a request that cannot be answered within it is"
                    " refused with 503 before the model runs.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "user": _JSON_OBJECT,
                                        "streams": {"type": "array", "items": stream},
                                        "playlist": _JSON_OBJECT,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _timed(
                            {
                                "description": "The model's output as JSON; `{}` for no streams.",
                                "content": {"application/json": {"schema": {}}},
                            }
                        ),
                        "400": _timed(_ERROR),
                        "404": _timed(_ERROR),
                        "408": _timed(_ERROR),
                        "413": _timed(_ERROR),
                        "422": _timed(_ERROR),
                        "500": _timed(_ERROR),
                        "503": _OVERLOADED,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics summed over all workers",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }
