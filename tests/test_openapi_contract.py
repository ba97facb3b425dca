"""The API contract, fuzzed by schemathesis against a live `gunicorn -c gunicorn.conf.py`.

Every operation in GET /openapi.json gets generated requests, valid and invalid: none may get a
5xx, every response must match the documented status codes, content types and schemas, and
every client error must be `{"detail": "..."}`. The model ignores its features and scores any
stream list, so a valid body always gets 200.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from examples.local_stack import aws_client, create_features_table, free_port
from scorer import __version__
from scorer.http.openapi import build_spec
from tests.servers import Server, gunicorn_env, start_service, stop_service

TABLE = "contract-features"
FEATURES = ["f1"]


def constant_preprocess(user: Any, streams: Any, playlist: Any, params: Any) -> int:
    """Count the streams; nothing else about the request matters to this model."""
    return len(streams)


def constant_predict(count: int, params: Any) -> dict[str, list[float]]:
    """Score every stream 0.5."""
    return {"scores": [0.5] * count}


def pickle_model() -> bytes:
    """Pickle the constant model by value, so gunicorn needs no test package to load it."""
    model = {
        "preprocess": constant_preprocess,
        "predict": constant_predict,
        "stream_features": FEATURES,  # read, so fuzzed stream URLs reach DynamoDB, then ignored
    }
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        return bytes(cloudpickle.dumps(model))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def live_server(emulator: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("contract")
    create_features_table(aws_client("dynamodb", emulator), TABLE)
    model = tmp / "constant.pkl"
    model.write_bytes(pickle_model())
    env = gunicorn_env(
        emulator,
        PORT=str(free_port()),
        MODEL_PATH=str(model),
        FEATURES_TABLE=TABLE,
        MAX_STREAMS="50",
        PROMETHEUS_MULTIPROC_DIR=str(Path(tmp) / "metrics"),
    )
    server = start_service(env, tmp)
    yield server
    stop_service(server)


# The document the service builds for this model; the first test checks that it is exactly the
# one GET /openapi.json serves. (Loading it from the live server through
# `schemathesis.pytest.from_fixture` fails under pytest 9.2: schemathesis 4.32.5 sets a node's
# `_nodeid`, which pytest 9.2 no longer has.)
schema = schemathesis.openapi.from_dict(build_spec(__version__, FEATURES))


def test_the_fuzzed_document_is_the_one_served(live_server: Server) -> None:
    with urllib.request.urlopen(live_server.url("/openapi.json"), timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        assert json.loads(response.read()) == build_spec(__version__, FEATURES)


def client_errors_name_the_problem(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx, documented or not (405...), is JSON `{"detail": "<non-empty string>"}`."""
    if 400 <= response.status_code < 500:
        body = json.loads(response.content)
        assert isinstance(body, dict) and set(body) == {"detail"}, body
        assert isinstance(body["detail"], str) and body["detail"], body


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    client_errors_name_the_problem,
]


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,  # every run explores afresh; a failure prints the request to reproduce it
)
def test_api_conforms_to_its_openapi_document(case: Any, live_server: Server) -> None:
    case.call_and_validate(base_url=live_server.url(""), checks=CHECKS, timeout=10)
