"""The inference event: which users are logged, and the JSON record of one answered request.

The fields are the seed's (haystack-ml-stack 0.4), so a team's training jobs read ours as they
read its events. The record is encoded after the answer is sent (scorer/eventlog/producer.py),
from what the scoring path kept in a `Trace`; the answer goes in as the very bytes the client
received.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import orjson

from scorer import __version__
from scorer.codec import encode
from scorer.metrics import STAGES
from scorer.models.model import Model
from scorer.record import ScoreRecord

MODEL_TYPE = "streams"


def is_logged(userid: object, fraction: float) -> bool:
    """Tell whether a user's requests are logged: the seed's stable rule on sha256(userid).

    A request without a user id (or with one that is not a string) is not logged.
    """
    if not isinstance(userid, str) or not userid:
        return False
    digest = hashlib.sha256(userid.encode("utf-8", "surrogatepass")).hexdigest()
    return int(digest, 16) / 2**256 < fraction


@dataclass(slots=True)
class Trace:
    """What the scoring path keeps of one logged request for its event, filled as it goes."""

    user: dict[str, Any]
    playlist: dict[str, Any]
    query: dict[str, str]
    streams: list[dict[str, Any]] = field(default_factory=list)
    model: Model | None = None  # the model that answered (a reload may swap it before close)
    body: bytes | None = None  # the answer as sent; None: no event (not scored, or failed)
    record: ScoreRecord | None = None  # what happened: misses, store and model times
    stage_seconds: dict[str, float] = field(default_factory=dict)
    processed_at: float = 0.0  # Unix time the answer was ready

    def keep_input(self, user: dict[str, Any], streams: list[dict[str, Any]]) -> None:
        """Copy the user and streams as the model is about to get them (it may change them)."""
        self.user = dict(user)
        self.streams = [dict(stream) for stream in streams]

    def keep_output(
        self, model: Model, body: bytes, record: ScoreRecord, marks: Sequence[float]
    ) -> None:
        """Keep the answer and how it was made (`marks`: perf_counter at each stage's bounds)."""
        self.model, self.body, self.record = model, body, record
        self.stage_seconds = {
            stage: end - start for stage, (start, end) in zip(STAGES, pairwise(marks), strict=True)
        }
        self.processed_at = datetime.now(UTC).timestamp()


def monitoring_of(trace: Trace) -> dict[str, Any]:
    """Return the event's `meta.monitoring`: the request's record (cache misses per kind,
    store, decode and model times, streams scored, retrieval success), with the stages' times."""
    stages = trace.stage_seconds
    recorded = trace.record.as_dict() if trace.record is not None else {}
    return {
        **recorded,
        "retrieval_ms": stages.get("features", 0.0) * 1000,
        "retrieval_success": int(recorded.get("retrieval_success", True)),
        "serialize_ms": stages.get("serialize", 0.0) * 1000,
    }


def feature_lists(model: Model) -> tuple[list[str], list[str]]:
    """Return the model's user and stream feature names, as `meta` lists them."""
    return list(model.user_features), list(model.stream_features)


def _without(values: Mapping[str, Any], ignored: Collection[str]) -> dict[str, Any]:
    if not ignored:
        return dict(values)
    return {key: value for key, value in values.items() if key not in ignored}


def build_event(trace: Trace) -> dict[str, Any]:
    """Return the event of one answered request, with the seed's field names."""
    model, body = trace.model, trace.body
    if model is None or body is None:
        raise ValueError("the request was not answered by the model: it has no event")
    ignored = frozenset(model.kafka_features_to_ignore)
    playlist = trace.playlist
    user_features, stream_features = feature_lists(model)
    return {
        "userid": trace.user.get("userid"),
        "client_os": playlist.get("clientOs"),
        "model_input": {
            "user": _without(trace.user, ignored),
            "streams": [_without(stream, ignored) for stream in trace.streams],
            "playlist": playlist,
        },
        "model_output": orjson.Fragment(body),  # the bytes the client got, not re-encoded
        "model_name": model.name.removesuffix(".pkl"),
        "model_type": MODEL_TYPE,
        "meta": {
            "monitoring": monitoring_of(trace),
            "scorer_version": __version__,
            "playlist_id": str(playlist.get("playlistId", "")),
            "playlist_category": playlist.get("category"),
            "user_features": user_features,
            "stream_features": stream_features,
            "query_params": trace.query,
        },
        "processed_at": datetime.fromtimestamp(trace.processed_at, UTC).isoformat(),
    }


def encode_event(trace: Trace) -> tuple[bytes, bytes]:
    """Return the event's Kafka key (the user id) and value (JSON, numpy as in the answer)."""
    event = build_event(trace)
    return str(event["userid"]).encode("utf-8", "surrogatepass"), encode(event)
