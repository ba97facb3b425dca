"""Seed 0.1 models and tables answer byte for byte as before user, global and history features.

The expected bodies were produced by the code before those features existed (the commit this
file was added on top of), from the same table and models: any change a seed model would see,
in a value, its type, its order or the params it gets, changes these bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from examples.local_stack import put_features
from scorer.app import create_app
from scorer.models.model import build_model, validate_model
from tests.conftest import make_settings

SEED_PICKLE = Path(__file__).parent / "fixtures" / "seed_model_cloudpickle_2_2_1.pkl"
NAMES = ["n", "s", "l", "m", "b", "flag", "null", "ss", "ns", "clicks", "missing"]
ITEMS: list[tuple[str, str, dict[str, Any]]] = [
    ("https://a", "n", {"value": {"N": "1.5"}, "cache_ttl_in_seconds": {"N": "60"}}),
    ("https://a", "s", {"value": {"S": "text"}, "version": {"S": "v1"}}),
    ("https://a", "l", {"value": {"L": [{"N": "1"}, {"S": "x"}, {"M": {"k": {"N": "2"}}}]}}),
    ("https://a", "m", {"value": {"M": {"a": {"N": "3"}, "b": {"L": []}}}}),
    ("https://a", "b", {"value": {"B": b"\x00\x01"}, "version": {"S": "v2"}}),
    ("https://a", "flag", {"value": {"BOOL": True}}),
    ("https://a", "null", {"value": {"NULL": True}}),
    ("https://a", "ss", {"value": {"SS": ["y"]}}),
    ("https://a", "ns", {"value": {"NS": ["7"]}}),
    ("https://a", "clicks", {"value": {"N": "9"}}),
    ("https://b", "clicks", {"value": {"N": "0"}}),
    ("https://b", "n", {}),  # an item without a value
]


def echo_preprocess(user: Any, streams: Any, playlist: Any, params: Any) -> Any:
    return {"user": user, "streams": streams, "playlist": playlist, "params": params}


def echo_predict(model_input: Any, params: Any) -> Any:
    return {
        "user": model_input["user"],
        "streams": [
            {k: v.hex() if isinstance(v, bytes) else v for k, v in s.items()}
            for s in model_input["streams"]
        ],
        "playlist": model_input["playlist"],
        "params": params,
    }


BODY = {
    "user": {"userid": "u1", "n": "sent by the client"},
    "streams": [
        {"streamUrl": "https://a", "n": "sent", "extra": 1},
        {"streamUrl": "https://b"},
        {"streamUrl": "https://a"},
        {"streamUrl": "https://unknown"},
    ],
    "playlist": {"name": "home"},
}
ECHO = (
    b'{"user":{"n":"sent by the client","userid":"u1"},"streams":[{"extra":1,"streamUrl":"ht'
    b'tps://a","n":1.5,"s":"text","l":[1.0,"x",{"k":2.0}],"m":{"a":3.0,"b":[]},"b":"0001","f'
    b'lag":true,"null":null,"ss":["y"],"ns":[7.0],"clicks":9.0},{"streamUrl":"https://b","n"'
    b':null,"clicks":0.0},{"streamUrl":"https://a","n":1.5,"s":"text","l":[1.0,"x",{"k":2.0}'
    b'],"m":{"a":3.0,"b":[]},"b":"0001","flag":true,"null":null,"ss":["y"],"ns":[7.0],"click'
    b's":9.0},{"streamUrl":"https://unknown"}],"playlist":{"name":"home"},"params":{"p":[1],'
    b'"query_params":{"variant":"b","x":""}}}'
)
SEED = b'{"scores":[3.151293,2.0,3.151293,2.0]}'


@pytest.fixture
def seeded(dynamodb: Any, table: str) -> str:
    put_features(dynamodb, table, ITEMS)
    return table


def answer(client: FlaskClient) -> bytes:
    response = client.post("/score?variant=b&variant=c&x=", json=BODY)
    assert response.status_code == 200
    return response.data


def test_echo_seed_model_answers_byte_for_byte_as_before(seeded: str) -> None:
    model = validate_model(
        {
            "preprocess": echo_preprocess,
            "predict": echo_predict,
            "params": {"p": [1]},
            "stream_features": NAMES,
        },
        "echo.pkl",
    )
    app = create_app(make_settings(FEATURES_TABLE=seeded, LOGS_FRACTION=0), model)
    client = app.test_client()
    cold, warm = answer(client), answer(client)
    assert cold == warm == ECHO


def test_pickled_seed_model_answers_byte_for_byte_as_before(seeded: str) -> None:
    model = build_model(SEED_PICKLE.read_bytes(), "seed.pkl")
    app = create_app(make_settings(FEATURES_TABLE=seeded, LOGS_FRACTION=0), model)
    client = app.test_client()
    cold, warm = answer(client), answer(client)
    assert cold == warm == SEED
