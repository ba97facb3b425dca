"""Model loading: the seed's pickles load, and every broken model is refused with its cause."""

from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from examples.local_stack import aws_client, upload_model
from scorer.models.model import ModelError, build_model, load_model
from tests import fakes
from tests.conftest import make_settings

SEED_MODEL = Path(__file__).parent / "fixtures" / "seed_model_cloudpickle_2_2_1.pkl"


def test_model_pickled_by_seed_cloudpickle_2_2_1_loads_and_predicts() -> None:
    model = build_model(SEED_MODEL.read_bytes(), SEED_MODEL.name)
    rows = model.preprocess({}, [{"streamUrl": "a", "clicks": 3.0}], {}, model.params)
    assert model.stream_features == ("clicks",)
    assert model.predict(rows, model.params) == {"scores": [round(math.log1p(3) * 0.5 + 2.0, 6)]}


def test_params_default_to_empty_dict() -> None:
    raw = fakes.echo_model()
    del raw["params"], raw["stream_features"]
    model = build_model(cloudpickle.dumps(raw), "m.pkl")
    assert (model.params, model.stream_features) == ({}, ())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a pickle", "model m.pkl cannot be unpickled: UnpicklingError"),
        (pickle.dumps([1, 2]), "model m.pkl must be a dict, got list"),
        (cloudpickle.dumps({"preprocess": fakes.echo_preprocess}), "model m.pkl has no 'predict'"),
        (
            cloudpickle.dumps({"preprocess": fakes.echo_preprocess, "predict": 3}),
            "model m.pkl: 'predict' is not callable",
        ),
        (
            cloudpickle.dumps(fakes.echo_model(stream_features="f1")),
            "'stream_features' must be a list of strings",
        ),
        (
            cloudpickle.dumps(fakes.echo_model(stream_features=np.array([["f1"], ["f2"]]))),
            "'stream_features' must be a list of strings",
        ),
        (
            cloudpickle.dumps(fakes.echo_model(stream_features=np.array([1, 2]))),
            "'stream_features' must be a list of strings",
        ),
    ],
)
def test_broken_models_are_refused_with_the_cause(data: bytes, message: str) -> None:
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        build_model(data, "m.pkl")


def test_stream_features_may_be_a_tuple_or_a_numpy_array_of_strings() -> None:
    for features in (("f1", "f2"), np.array(["f1", "f2"])):
        model = build_model(cloudpickle.dumps(fakes.echo_model(stream_features=features)), "m.pkl")
        assert model.stream_features == ("f1", "f2")
        assert all(type(name) is str for name in model.stream_features)  # not numpy.str_


def test_sha256_mismatch_is_refused_before_unpickling() -> None:
    data = cloudpickle.dumps(fakes.echo_model())
    with pytest.raises(ModelError, match="MODEL_SHA256 expects"):
        build_model(data, "m.pkl", expected_sha256="0" * 64)
    assert build_model(data, "m.pkl", hashlib.sha256(data).hexdigest()).name == "m.pkl"


def test_model_loads_from_s3_over_http(emulator: int) -> None:
    path = upload_model(
        aws_client("s3", emulator),
        "models-ok",
        "team/ranker.pkl",
        fakes.pickle_by_value(fakes.echo_model()),
    )
    model = load_model(make_settings(S3_MODEL_PATH=path))
    assert (model.name, model.stream_features) == ("ranker.pkl", tuple(fakes.FEATURES))


def test_missing_s3_key_names_the_path(emulator: int) -> None:
    aws_client("s3", emulator).create_bucket(Bucket="models-empty")
    with pytest.raises(ModelError, match=r"cannot download s3://models-empty/none\.pkl: NoSuchKey"):
        load_model(make_settings(S3_MODEL_PATH="s3://models-empty/none.pkl"))


def test_missing_local_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read MODEL_PATH"):
        load_model(make_settings(MODEL_PATH=str(tmp_path / "none.pkl")))


@pytest.mark.parametrize("case", list(fakes.BAD_KEYS))
def test_bad_user_global_history_or_codec_key_is_refused_naming_it(case: str) -> None:
    message = fakes.BAD_KEYS[case][1]
    with pytest.raises(ModelError) as refused:
        build_model(cloudpickle.dumps(fakes.bad_keys_model(case)), "m.pkl")
    assert str(refused.value) == f"model m.pkl: {message}"


def test_full_model_keys_are_loaded() -> None:
    model = build_model(cloudpickle.dumps(fakes.full_model()), "m.pkl")
    assert model.user_features == tuple(fakes.USER_FEATURES)
    assert model.global_features == tuple(fakes.GLOBAL_FEATURES)
    assert model.history is not None and model.history.user_feature == "watched"
    assert model.history.stream_features == tuple(fakes.HISTORY_FEATURES)
    assert set(model.codecs) == {"u_tags", "g_weights", "emb", "g_blob"}
    assert model.reads_features


def test_seed_model_has_none_of_the_new_keys() -> None:
    model = build_model(SEED_MODEL.read_bytes(), SEED_MODEL.name)
    assert (model.user_features, model.global_features, model.history) == ((), (), None)
    assert model.codecs == {}
