"""Parse and check a `/score` body, naming the first thing wrong with it and where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from scorer.errors import InvalidRequest, PayloadTooLarge, UnprocessableRequest


@dataclass(slots=True)
class ScoreRequest:
    """A checked `/score` body: the objects the model's preprocess receives."""

    user: dict[str, Any]
    streams: list[dict[str, Any]]
    playlist: dict[str, Any]


def _object_field(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name, {})
    if not isinstance(value, dict):
        raise UnprocessableRequest(f"{name} must be an object, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def parse_score_request(raw: bytes, max_streams: int) -> ScoreRequest:
    """Decode the JSON body and check the fields `/score` uses."""
    if not raw.strip():
        raise InvalidRequest("Invalid JSON payload: the body is empty")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Invalid JSON payload: {exc}") from None
    if not isinstance(body, dict):
        raise UnprocessableRequest(f"the body must be a JSON object, got {_json_type(body)}")
    user = _object_field(body, "user")
    playlist = _object_field(body, "playlist")
    streams = body.get("streams", [])
    if not isinstance(streams, list):
        raise UnprocessableRequest(f"streams must be an array, got {_json_type(streams)}")
    if len(streams) > max_streams:
        raise PayloadTooLarge(
            f"streams has {len(streams)} items, at most {max_streams} are allowed"
        )
    for index, stream in enumerate(streams):
        if not isinstance(stream, dict):
            raise UnprocessableRequest(
                f"streams[{index}] must be an object, got {_json_type(stream)}"
            )
        url = stream.get("streamUrl")
        if "streamUrl" not in stream:
            raise UnprocessableRequest(f"streams[{index}].streamUrl is required")
        if not isinstance(url, str):
            raise UnprocessableRequest(
                f"streams[{index}].streamUrl must be a string, got {_json_type(url)}"
            )
    return ScoreRequest(user=user, streams=streams, playlist=playlist)
