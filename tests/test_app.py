"""The HTTP contract of the seed service, through the Flask test client and the emulator."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from examples.local_stack import put_features
from scorer.app import create_app
from scorer.http.fastpath import SCORE_PATH
from scorer.models.model import validate_model
from tests import fakes
from tests.conftest import make_settings, seed_features


def body(*urls: str, **extra: Any) -> dict[str, Any]:
    return {"user": {"userid": "u1"}, "streams": [{"streamUrl": u} for u in urls], **extra}


def test_root_names_the_model(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.json == {
        "message": "ML Scoring Service is running.",
        "model_name": "test-model.pkl",
    }


def test_health_reports_model_and_cache(client: FlaskClient, dynamodb: Any, table: str) -> None:
    seed_features(dynamodb, table, ["https://a"], fakes.FEATURES)
    client.post("/score", json=body("https://a"))

    response = client.get("/health")

    assert response.status_code == 200
    answer = dict(response.json or {})
    loaded_at = answer.pop("model_loaded_at")
    assert answer == {
        "status": "ok",
        "model_loaded": True,
        "cache_size": 3,
        "stream_cache_size": 3,
        "user_cache_size": 0,
        "global_cache_size": 0,
        "model_name": "test-model.pkl",
        "stream_features": fakes.FEATURES,
        "user_features": [],
        "global_features": [],
        "model_sha256": "",  # built in memory: no file, no hash, no version
        "model_version": "",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", loaded_at)


def test_health_names_the_version_served(settings: Any, model_dict: Any) -> None:
    model = replace(validate_model(model_dict, "m.pkl", "ab" * 32), version="3HL4kq", loaded_at=1e9)
    answer = create_app(settings, model).test_client().get("/health").json or {}
    assert (answer["model_sha256"], answer["model_version"]) == ("ab" * 32, "3HL4kq")
    assert answer["model_loaded_at"] == "2001-09-09T01:46:40Z"


def test_health_is_503_without_a_model() -> None:
    app = create_app(make_settings(), None)
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert response.json == {"detail": "ML Model not loaded"}


def test_score_enriches_streams_and_passes_query_params(
    client: FlaskClient, dynamodb: Any, table: str
) -> None:
    seed_features(dynamodb, table, ["https://a", "https://b"], fakes.FEATURES)

    response = client.post("/score?variant=b", json=body("https://a", "https://b"))

    assert response.status_code == 200
    assert response.json["streams"][1] == {
        "streamUrl": "https://b",
        "f1": "https://b|f1",
        "f2": "https://b|f2",
        "f3": "https://b|f3",
    }
    assert response.json["query_params"] == {"variant": "b"}


def test_a_model_changing_list_and_map_features_in_place_changes_them_for_no_one_else(
    settings: Any, dynamodb: Any, table: str
) -> None:
    put_features(
        dynamodb,
        table,
        [
            ("https://a", "tags", {"value": {"L": [{"S": "live"}]}}),
            ("https://a", "info", {"value": {"M": {"n": {"N": "1"}, "nested": {"L": []}}}}),
        ],
    )
    model = fakes.echo_model(
        ["tags", "info"], preprocess=fakes.mutating_preprocess, predict=fakes.features_predict
    )
    app = create_app(settings, validate_model(model, "m.pkl"))
    app.extensions["scorer"].init_worker()
    client = app.test_client()

    cold = client.post("/score", json=body("https://a", "https://a")).json  # read from the store
    warm = [client.post("/score", json=body("https://a")).json for _ in range(2)]  # the cache

    changed_once = {"tags": ["live", "seen"], "info": {"n": 2.0, "nested": [0]}}
    assert cold["streams"] == [changed_once, changed_once]  # duplicates too: a copy each
    assert [response["streams"] for response in warm] == [[changed_once]] * 2


def test_query_params_never_leak_into_the_shared_params(client: FlaskClient) -> None:
    client.post("/score?variant=b", json=body("https://a"))
    params = client.application.extensions["scorer"].model.params
    assert "query_params" not in params


def test_empty_streams_answer_an_empty_object(client: FlaskClient) -> None:
    response = client.post("/score", json=body())
    assert (response.status_code, response.json) == (200, {})


def test_numpy_output_is_json(settings: Any) -> None:
    model = fakes.echo_model(predict=lambda x, p: {"scores": np.arange(3) / 2, "n": np.int64(3)})
    app = create_app(settings, validate_model(model, "np.pkl"))
    response = app.test_client().post("/score", json=body("https://a"))
    assert response.json == {"scores": [0.0, 0.5, 1.0], "n": 3}


@pytest.mark.parametrize(
    ("predict", "status", "detail"),
    [
        (fakes.failing_predict, 500, "Model prediction failed"),
        (fakes.empty_predict, 404, "No model output generated"),
        (lambda x, p: None, 404, "No model output generated"),
        (lambda x, p: np.array([]), 404, "No model output generated"),
    ],
)
def test_model_failures_keep_the_seed_error_shapes(
    settings: Any, predict: Any, status: int, detail: str
) -> None:
    app = create_app(settings, validate_model(fakes.echo_model(predict=predict), "m.pkl"))
    response = app.test_client().post("/score", json=body("https://a"))
    assert (response.status_code, response.json) == (status, {"detail": detail})


@pytest.mark.parametrize(
    ("data", "status", "detail"),
    [
        (b"{not json", 400, "Invalid JSON payload"),
        (b"", 400, "Invalid JSON payload: the body is empty"),
        (b"\xff\xfe", 400, "Invalid JSON payload"),
        (b"[" * 5000 + b"]" * 5000, 400, "Invalid JSON payload"),
        (b"[1]", 422, "the body must be a JSON object, got array"),
        (b'{"user": 3, "streams": []}', 422, "user must be an object, got number"),
        (b'{"playlist": [], "streams": []}', 422, "playlist must be an object, got array"),
        (b'{"streams": {}}', 422, "streams must be an array, got object"),
        (b'{"streams": [{"streamUrl": "a"}, 7]}', 422, "streams[1] must be an object, got number"),
        (b'{"streams": [{"url": "a"}]}', 422, "streams[0].streamUrl is required"),
        (
            b'{"streams": [{"streamUrl": 5}]}',
            422,
            "streams[0].streamUrl must be a string, got number",
        ),
    ],
)
def test_bad_bodies_get_a_4xx_naming_the_problem(
    client: FlaskClient, data: bytes, status: int, detail: str
) -> None:
    response = client.post("/score", data=data, content_type="application/json")
    assert response.status_code == status
    assert response.json["detail"].startswith(detail)


def test_too_many_streams_is_413(table: str, model_dict: Any) -> None:
    app = create_app(
        make_settings(FEATURES_TABLE=table, MAX_STREAMS=2), validate_model(model_dict, "m.pkl")
    )
    response = app.test_client().post("/score", json=body("a", "b", "c"))
    assert response.status_code == 413
    assert response.json == {"detail": "streams has 3 items, at most 2 are allowed"}


def test_oversized_body_is_413(table: str, model_dict: Any) -> None:
    app = create_app(
        make_settings(FEATURES_TABLE=table, MAX_BODY_BYTES=2048),
        validate_model(model_dict, "m.pkl"),
    )
    response = app.test_client().post("/score", json=body("x" * 4096))
    assert (response.status_code, response.json) == (413, {"detail": "Request body too large"})


def test_routing_errors_are_json(client: FlaskClient) -> None:
    assert client.get("/nope").json == {"detail": "Not Found"}
    response = client.get("/score")
    assert (response.status_code, response.json) == (405, {"detail": "Method Not Allowed"})
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH"])
def test_score_answers_other_methods_with_405_and_allow(client: FlaskClient, method: str) -> None:
    response = client.open("/score", method=method)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    assert response.headers["Content-Type"] == "application/json"
    assert response.get_data() == (b"" if method == "HEAD" else b'{"detail":"Method Not Allowed"}')
    assert response.headers["Content-Length"] == "31"


def test_score_answers_options_with_its_methods(client: FlaskClient) -> None:
    response = client.options("/score")
    assert (response.status_code, response.get_data()) == (200, b"")
    assert set(response.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}


def test_other_methods_on_score_are_counted_as_before(client: FlaskClient) -> None:
    client.get("/score")
    client.delete("/score")
    client.options("/score")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'scorer_requests_total{endpoint="unmatched",status="405"} 2.0' in text
    assert 'scorer_requests_total{endpoint="/score",status="200"} 1.0' in text


def test_metrics_count_requests_by_endpoint_and_status(client: FlaskClient) -> None:
    client.post("/score", json=body("https://a"))
    client.post("/score", data=b"{", content_type="application/json")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'scorer_requests_total{endpoint="/score",status="200"} 1.0' in text
    assert 'scorer_requests_total{endpoint="/score",status="400"} 1.0' in text
    assert "scorer_model_info{" in text


def test_repeated_query_param_keeps_the_first_value(client: FlaskClient) -> None:
    response = client.post("/score?variant=a&variant=b&flag", json=body("https://a"))
    assert response.json["query_params"] == {"variant": "a", "flag": ""}


def test_chunked_body_without_length_is_read(client: FlaskClient) -> None:
    import io

    import orjson

    response = client.post(
        "/score",
        input_stream=io.BytesIO(orjson.dumps(body("https://a"))),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert response.json["streams"] == [{"streamUrl": "https://a"}]


def test_openapi_document_describes_every_route(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/", "/health", "/score", "/metrics"}
    routes = {
        r.rule
        for r in client.application.url_map.iter_rules()
        if r.rule != "/static/<path:filename>"
    }
    routes.add(SCORE_PATH)  # answered in front of Flask, by scorer/http/fastpath.py
    assert routes - {"/openapi.json"} == set(spec["paths"])
