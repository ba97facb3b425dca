"""The inference event: the seed's sampling rule and fields, built from what scoring kept."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest

from config import Settings
from scorer import __version__
from scorer.app import create_app
from scorer.eventlog.event import Trace, build_event, encode_event, is_logged
from scorer.models.model import ModelError, validate_model
from scorer.payload import ScoreRequest
from tests import fakes
from tests.conftest import make_settings


def seed_should_log_user(userid: str, kafka_fraction: float) -> bool:
    """haystack-ml-stack 0.4.14's `_kafka.should_log_user`, verbatim."""
    if not userid:
        return False
    hash_value = int(hashlib.sha256(userid.encode()).hexdigest(), 16) / (2**256)
    return hash_value < kafka_fraction


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.5, 1.0])
def test_the_users_logged_are_exactly_those_the_seed_logs(fraction: float) -> None:
    users = [f"user-{n}" for n in range(3000)] + ["é-ünïcode", "x" * 300]
    logged = {u for u in users if is_logged(u, fraction)}
    assert logged == {u for u in users if seed_should_log_user(u, fraction)}
    if 0 < fraction < 1:
        assert abs(len(logged) / len(users) - fraction) < 0.05  # a share, not all or none


@pytest.mark.parametrize("userid", [None, "", 12345, ["a"]])
def test_a_request_without_a_string_user_id_is_not_logged(userid: object) -> None:
    assert not is_logged(userid, 1.0)


def scored_trace(
    model_dict: dict[str, Any],
    request: ScoreRequest,
    query: dict[str, str] | None = None,
    settings: Settings | None = None,
) -> tuple[bytes, Trace]:
    """Score `request` with the model (no features read) and return the answer and its trace."""
    app = create_app(settings or make_settings(), validate_model(model_dict, "ranker-v2.pkl"))
    trace = Trace(request.user, request.playlist, query or {})
    body = app.extensions["scorer"].score(request, query or {}, trace=trace)
    return body, trace


def test_the_event_has_the_seeds_fields_and_the_answer_as_sent() -> None:
    request = ScoreRequest(
        user={"userid": "u-7", "country": "FR", "embedding": [0.1, 0.2]},
        streams=[{"streamUrl": "https://s/1", "embedding": [1, 2], "views": 3}],
        playlist={"clientOs": "android", "playlistId": 42, "category": "sports"},
    )
    model = fakes.echo_model([], kafka_features_to_ignore=["embedding"])
    before = datetime.now().astimezone()

    body, trace = scored_trace(model, request, {"debug": "1"})
    key, value = encode_event(trace)
    event = orjson.loads(value)

    assert key == b"u-7"
    assert event["model_output"] == orjson.loads(body)
    assert event["userid"] == "u-7"
    assert event["client_os"] == "android"
    assert event["model_input"] == {
        "user": {"userid": "u-7", "country": "FR"},
        "streams": [{"streamUrl": "https://s/1", "views": 3}],
        "playlist": {"clientOs": "android", "playlistId": 42, "category": "sports"},
    }
    assert (event["model_name"], event["model_type"]) == ("ranker-v2", "streams")
    meta = event["meta"]
    assert meta["playlist_id"] == "42"
    assert meta["playlist_category"] == "sports"
    assert (meta["user_features"], meta["stream_features"]) == ([], [])
    assert meta["query_params"] == {"debug": "1"}
    assert meta["scorer_version"] == __version__
    monitoring = meta["monitoring"]
    assert monitoring["retrieval_success"] == 1
    assert monitoring["streams_scored"] == 1
    assert all(monitoring[f"{stage}_ms"] >= 0 for stage in ("preprocess", "predict", "serialize"))
    processed_at = datetime.fromisoformat(event["processed_at"])
    assert processed_at.utcoffset() == timedelta(0)
    assert before <= processed_at <= datetime.now().astimezone()


def test_the_event_shows_the_input_as_the_model_got_it_not_as_it_left_it() -> None:
    def adding_preprocess(user: Any, streams: Any, playlist: Any, params: Any) -> Any:
        user["history"] = ["big", "vectors"]
        for stream in streams:
            stream["rank_input"] = 1
        return {"user": user, "streams": streams}

    request = ScoreRequest({"userid": "u"}, [{"streamUrl": "https://s/1"}], {})
    _, trace = scored_trace(fakes.echo_model([], preprocess=adding_preprocess), request)

    event = build_event(trace)

    assert event["model_input"]["user"] == {"userid": "u"}
    assert event["model_input"]["streams"] == [{"streamUrl": "https://s/1"}]


def test_numpy_output_is_encoded_in_the_event_as_in_the_answer() -> None:
    def numpy_predict(model_input: Any, params: Any) -> Any:
        return {"scores": np.array([0.25, 0.5], dtype=np.float32), "top": np.int64(3)}

    request = ScoreRequest({"userid": "u"}, [{"streamUrl": "https://s/1", "x": np.float64(2)}], {})
    body, trace = scored_trace(fakes.echo_model([], predict=numpy_predict), request)

    event = orjson.loads(encode_event(trace)[1])

    assert event["model_output"] == {"scores": [0.25, 0.5], "top": 3} == orjson.loads(body)
    assert event["model_input"]["streams"][0]["x"] == 2.0


def test_a_request_the_model_failed_has_no_event() -> None:
    request = ScoreRequest({"userid": "u"}, [{"streamUrl": "https://s/1"}], {})
    app = create_app(make_settings(), validate_model(fakes.echo_model([]), "m.pkl"))
    trace = Trace(request.user, request.playlist, {})
    no_streams = ScoreRequest({"userid": "u"}, [], {})
    app.extensions["scorer"].score(no_streams, {}, trace=trace)

    assert trace.body is None
    with pytest.raises(ValueError, match="no event"):
        build_event(trace)


def test_features_to_ignore_must_be_a_list_of_names() -> None:
    with pytest.raises(ModelError, match="'kafka_features_to_ignore' must be a list of strings"):
        validate_model(fakes.echo_model([], kafka_features_to_ignore="embedding"), "m.pkl")
