"""User, global and history features and codecs, through the app against the emulator over HTTP."""

from __future__ import annotations

import json
import struct
import threading
import time
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from examples.local_stack import put_features
from scorer.app import create_app
from scorer.features.store import FeatureStore
from scorer.metrics import Metrics
from scorer.models.model import validate_model
from scorer.record import RECORD_KEY
from tests import fakes
from tests.conftest import make_settings, sample, seed_features

EMB_A = struct.pack("<3f", 1.0, 2.0, 3.0)


@pytest.fixture
def model_dict() -> dict[str, Any]:
    return fakes.full_model()


def seed_user(dynamodb: Any, table: str, user: str, history: list[str]) -> None:
    items = [
        (user, "u_score", {"value": {"N": "0.5"}}),
        (user, "u_tags", {"value": {"S": '["news", "sport"]'}}),
        (user, "watched", {"value": {"L": [{"S": url} for url in history]}}),
    ]
    put_features(dynamodb, table, items, prefix="USER#")


def seed_globals(dynamodb: Any, table: str) -> None:
    items = [
        ("", "g_weights", {"value": {"B": b'{"a": 1}'}}),
        ("", "g_blob", {"value": {"B": b"blob"}, "version": {"S": "v7"}}),
    ]
    put_features(dynamodb, table, items, prefix="GLOBAL")


def seed_history(dynamodb: Any, table: str, urls: list[str]) -> None:
    put_features(
        dynamodb,
        table,
        [(u, "f1", {"value": {"S": f"{u}|f1"}}) for u in urls]
        + [(u, "emb", {"value": {"B": EMB_A}}) for u in urls],
    )


def body(userid: Any = "u1", *urls: str) -> dict[str, Any]:
    user = {} if userid is None else {"userid": userid}
    return {"user": user, "streams": [{"streamUrl": u} for u in urls or ("https://c",)]}


def misses(metrics: Metrics, kind: str) -> float:
    return sample(metrics, "scorer_feature_cache_misses_total", kind=kind, result="fetched")


def hits(metrics: Metrics, kind: str) -> float:
    return sum(
        sample(metrics, "scorer_feature_cache_hits_total", kind=kind, result=result)
        for result in ("value", "absent")
    )


@pytest.fixture
def stocked(dynamodb: Any, table: str) -> None:
    seed_features(dynamodb, table, ["https://c"], fakes.FEATURES)
    seed_user(dynamodb, table, "u1", ["https://h1", "https://h2"])
    seed_globals(dynamodb, table)
    seed_history(dynamodb, table, ["https://h1", "https://h2"])


def test_every_kind_reaches_the_model_decoded(client: FlaskClient, stocked: None) -> None:
    answer = client.post("/score", json=body()).json or {}

    user = answer["user"]
    assert user["userid"] == "u1"
    assert user["u_score"] == 0.5
    assert user["u_tags"] == ["news", "sport"]  # json codec over a string attribute
    assert user["watched"] == ["https://h1", "https://h2"]
    assert answer["globals"] == {
        "g_weights": {"a": 1},  # json codec over a binary attribute
        "g_blob": {"raw": "blob", "version": "v7"},  # the team's codec, given the version
    }
    assert answer["history_streams"] == [
        {"streamUrl": u, "f1": f"{u}|f1", "emb": [1.0, 2.0, 3.0]}  # float32 codec
        for u in ("https://h1", "https://h2")
    ]
    assert answer["streams"][0]["f1"] == "https://c|f1"


def test_reads_are_counted_per_kind_cold_then_warm(
    client: FlaskClient, stocked: None, metrics: Metrics
) -> None:
    client.post("/score", json=body())
    cold = {kind: misses(metrics, kind) for kind in ("stream", "user", "global")}
    keys = sample(metrics, "scorer_dynamodb_keys_requested_total")

    client.post("/score", json=body())

    assert cold == {"stream": 3 + 2 * 2, "user": 3, "global": 2}
    assert keys == 3 + 4 + 3 + 2
    assert {kind: misses(metrics, kind) for kind in ("stream", "user", "global")} == cold
    assert sample(metrics, "scorer_dynamodb_keys_requested_total") == keys  # warm: no reads
    assert (hits(metrics, "stream"), hits(metrics, "user"), hits(metrics, "global")) == (7, 3, 2)


def test_absent_user_feature_is_none_and_client_value_is_dropped(
    client: FlaskClient, dynamodb: Any, table: str
) -> None:
    put_features(dynamodb, table, [("u1", "u_score", {"value": {"N": "2"}})], prefix="USER#")
    request = body()
    request["user"]["u_tags"] = "sent by the client"

    user = (client.post("/score", json=request).json or {})["user"]

    assert user == {"userid": "u1", "u_score": 2.0, "u_tags": None, "watched": None}


def test_request_without_userid_reads_no_user_features(
    client: FlaskClient, stocked: None, metrics: Metrics
) -> None:
    response = client.post("/score", json=body(None))

    assert response.status_code == 200
    assert (response.json or {})["user"] == {}
    assert (response.json or {})["history_streams"] == []
    assert misses(metrics, "user") == hits(metrics, "user") == 0


def test_numeric_userid_reads_its_items(client: FlaskClient, dynamodb: Any, table: str) -> None:
    put_features(dynamodb, table, [("42", "u_score", {"value": {"N": "4"}})], prefix="USER#")
    assert (client.post("/score", json=body(42)).json or {})["user"]["u_score"] == 4.0


def test_globals_are_a_per_request_copy_of_params(app: Flask, stocked: None) -> None:
    client = app.test_client()
    answer = client.post("/score", json=body()).json or {}
    shared = app.extensions["scorer"].model.params

    assert (
        "globals" in answer["shared_params_keys"]
        and "history_streams" in answer["shared_params_keys"]
    )
    assert set(shared) == {"features"}  # the model's own params are never written


def test_stream_in_candidates_and_history_is_read_once(
    client: FlaskClient, dynamodb: Any, table: str, metrics: Metrics
) -> None:
    both = "https://both"
    seed_user(dynamodb, table, "u1", [both, "https://h2"])
    seed_history(dynamodb, table, [both, "https://h2"])
    seed_features(dynamodb, table, [both], fakes.FEATURES)

    cold = client.post("/score", json=body("u1", both)).json or {}  # history read in round 2
    assert cold["history_streams"][0]["f1"] == cold["streams"][0]["f1"]

    other = {"userid": "u2"}  # a second user with the same history, cached streams
    seed_user(dynamodb, table, "u2", [both, "https://h2"])
    before = sample(metrics, "scorer_dynamodb_keys_requested_total")
    client.post("/score", json={"user": other, "streams": [{"streamUrl": both}]})

    # cold: 3 candidate keys + 3 user + 2 global + history: f1 of both is cached, its emb and
    # h2's two are read: 3 stream keys, never both|f1 again.
    assert before == 3 + 3 + 2 + 3
    assert sample(metrics, "scorer_dynamodb_keys_requested_total") - before == 3  # u2's


def test_cached_history_joins_the_candidates_round(
    dynamodb: Any, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cold user: its history's streams are read after it. Cached user: beside the candidates,
    and a history stream that is also a candidate is read once."""
    calls: list[tuple[str, float, float]] = []
    lock = threading.Lock()
    real_call = FeatureStore._call

    def slow_call(store: FeatureStore, keys: list[dict[str, Any]]) -> dict[str, Any]:
        started = time.monotonic()
        time.sleep(0.15)  # long enough that rounds cannot be mistaken for each other
        result = real_call(store, keys)
        with lock:
            calls.append((keys[0]["pk"]["S"].split("#")[0], started, time.monotonic()))
        return result

    monkeypatch.setattr(FeatureStore, "_call", slow_call)
    seed_user(dynamodb, table, "u1", ["https://d", "https://h3"])
    short = {"cache_ttl_in_seconds": {"N": "0.6"}}
    put_features(
        dynamodb,
        table,
        [
            (u, n, {"value": {"S": f"{u}|{n}"}, **short})
            for u in ("https://d", "https://h3")
            for n in ("f1", "f2", "f3")
        ]
        + [(u, "emb", {"value": {"B": EMB_A}, **short}) for u in ("https://d", "https://h3")],
    )
    settings = make_settings(FEATURES_TABLE=table, LOGS_FRACTION=0, FEATURE_TIMEOUT_SECONDS=2)
    metrics = Metrics()
    client = create_app(settings, validate_model(fakes.full_model(), "m.pkl"), metrics=metrics)
    client = client.test_client()

    client.post("/score", json=body("u1", "https://c"))
    cold = list(calls)
    time.sleep(0.7)  # the history's streams expire; the user and globals stay cached
    calls.clear()
    before = sample(metrics, "scorer_dynamodb_keys_requested_total")
    answer = client.post("/score", json=body("u1", "https://d")).json or {}

    user_end = next(end for kind, _, end in cold if kind == "USER")
    assert [kind for kind, start, _ in cold if start >= user_end] == ["STREAM"]  # round two
    assert len(calls) == 2 and all(kind == "STREAM" for kind, _, _ in calls)
    assert max(start for _, start, _ in calls) < min(end for _, _, end in calls)  # one round
    # d's 3 candidate features, then d|emb, h3|f1, h3|emb: d|f1 joined the candidates' read.
    assert sample(metrics, "scorer_dynamodb_keys_requested_total") - before == 6
    assert answer["history_streams"][0]["f1"] == answer["streams"][0]["f1"] == "https://d|f1"


def test_history_is_cut_to_max_history_streams(dynamodb: Any, table: str) -> None:
    history = [f"https://h{n}" for n in range(10)]
    seed_user(dynamodb, table, "u1", history)
    settings = make_settings(FEATURES_TABLE=table, LOGS_FRACTION=0, MAX_HISTORY_STREAMS=4)
    app = create_app(settings, validate_model(fakes.full_model(), "m.pkl"))

    answer = app.test_client().post("/score", json=body()).json or {}

    assert [s["streamUrl"] for s in answer["history_streams"]] == history[:4]


def test_value_that_fails_to_decode_is_none_counted_and_still_scored(
    client: FlaskClient, dynamodb: Any, table: str, metrics: Metrics
) -> None:
    put_features(
        dynamodb,
        table,
        [
            ("u1", "u_tags", {"value": {"S": "not json"}}),
            ("u1", "watched", {"value": {"N": "3"}}),  # a history that is no list of URLs
        ],
        prefix="USER#",
    )
    put_features(dynamodb, table, [("", "g_blob", {"value": {"B": b"bad"}})], prefix="GLOBAL")

    response = client.post("/score", json=body())
    answer = response.json or {}

    assert response.status_code == 200
    assert answer["user"]["u_tags"] is None
    assert answer["globals"]["g_blob"] is None
    assert answer["history_streams"] == []
    assert sample(metrics, "scorer_feature_decode_failures_total", kind="user") == 2
    assert sample(metrics, "scorer_feature_decode_failures_total", kind="global") == 1
    assert "decode_failures=3" in response.headers["Server-Timing"]


def test_list_values_are_copied_per_request(client: FlaskClient, stocked: None) -> None:
    first = client.post("/score", json=body()).json or {}
    second = client.post("/score", json=body()).json or {}
    assert first["user"]["watched"] == second["user"]["watched"] == ["https://h1", "https://h2"]


def test_record_is_in_server_timing_and_kept_as_json(app: Flask, stocked: None) -> None:
    raw = orjson.dumps(body())
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/score",
        "CONTENT_LENGTH": str(len(raw)),
        "wsgi.input": __import__("io").BytesIO(raw),
    }
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.update(status=status, headers=dict(headers))

    app.wsgi_app(environ, start_response)  # type: ignore[arg-type]
    record = json.loads(json.dumps(environ[RECORD_KEY].as_dict()))

    assert seen["status"] == "200 OK"
    assert record["cache_misses"] == {"stream": 7, "user": 3, "global": 2}
    assert record["streams_scored"] == 1 and record["history_streams"] == 2
    assert record["retrieval_success"] is True and record["decode_failures"] == 0
    assert record["store_ms"] > 0 and record["predict_ms"] >= 0
    timing = seen["headers"]["Server-Timing"]
    assert 'miss;desc="stream=7 user=3 global=2"' in timing
    assert f"store;dur={record['store_ms']:.2f}" in timing


def test_health_reports_each_cache_size(client: FlaskClient, stocked: None) -> None:
    client.post("/score", json=body())
    health = client.get("/health").json or {}
    assert (health["stream_cache_size"], health["user_cache_size"]) == (7, 3)
    assert health["global_cache_size"] == 2
    assert health["user_features"] == fakes.USER_FEATURES
