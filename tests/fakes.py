"""Models for the tests, in the seed's dict format, and helpers to pickle them."""

from __future__ import annotations

import os
import sys
import time
import types
from typing import Any

import cloudpickle

FEATURES = ["f1", "f2", "f3"]


def echo_preprocess(user: Any, streams: Any, playlist: Any, params: Any) -> dict[str, Any]:
    """Pass everything through, so a test can see what the model received."""
    return {"user": user, "streams": streams, "playlist": playlist, "params": params}


def echo_predict(model_input: dict[str, Any], params: Any) -> dict[str, Any]:
    """Return each stream's features and the query params the model saw."""
    names = params.get("features", FEATURES) if isinstance(params, dict) else FEATURES
    return {
        "streams": [
            {"streamUrl": s["streamUrl"], **{n: s[n] for n in names if n in s}}
            for s in model_input["streams"]
        ],
        "query_params": params.get("query_params") if isinstance(params, dict) else None,
        "user": model_input["user"],
    }


def echo_or_refuse_predict(model_input: dict[str, Any], params: Any) -> dict[str, Any]:
    """Echo, unless the user asks to be refused: then raise naming the user's id, as models do."""
    user = model_input["user"]
    if user.get("refuse"):
        raise ValueError(f"cannot score user {user.get('userid')}")
    return echo_predict(model_input, params)


def mutating_preprocess(user: Any, streams: Any, playlist: Any, params: Any) -> dict[str, Any]:
    """Change each stream's list and map features in place, as a careless model may."""
    for stream in streams:
        stream["tags"].append("seen")
        stream["info"]["n"] += 1
        stream["info"]["nested"].append(0)
    return {"streams": streams}


def features_predict(model_input: dict[str, Any], params: Any) -> dict[str, Any]:
    """Return the features each stream ended up with."""
    return {"streams": [{n: s.get(n) for n in params["features"]} for s in model_input["streams"]]}


def troubled_predict(model_input: dict[str, Any], params: Any) -> dict[str, Any]:
    """Echo, except: raise for a stream "boom", never return for user "hang"."""
    if model_input["user"].get("userid") == "hang":
        time.sleep(3600)
    if any(s["streamUrl"] == "boom" for s in model_input["streams"]):
        raise RuntimeError("boom")
    return echo_predict(model_input, params)


def where_predict(model_input: dict[str, Any], params: Any) -> dict[str, Any]:
    """Sleep `user.sleep` seconds, then say which worker scored and its switch interval."""
    time.sleep(float(model_input["user"].get("sleep", 0)))
    return {"pid": os.getpid(), "switch_interval": sys.getswitchinterval()}


def failing_predict(model_input: Any, params: Any) -> Any:
    raise RuntimeError("the model broke")


def empty_predict(model_input: Any, params: Any) -> Any:
    return []


def echo_model(features: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
    """Return an echo model dict asking for the given features."""
    names = FEATURES if features is None else features
    model: dict[str, Any] = {
        "preprocess": echo_preprocess,
        "predict": echo_predict,
        "params": {"features": names},
        "stream_features": names,
    }
    model.update(overrides)
    return model


def pickle_by_value(obj: Any) -> bytes:
    """Pickle obj with this module's functions by value, so gunicorn needs no test package."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        return bytes(cloudpickle.dumps(obj))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def tag_predict(model_input: dict[str, Any], params: Any) -> dict[str, Any]:
    """Say which model answered (its params' `tag`) in which worker, to tell versions apart."""
    return {"model": params["tag"], "pid": os.getpid(), "streams": len(model_input["streams"])}


def tagged_model(tag: str, **overrides: Any) -> dict[str, Any]:
    """Return a model that reads no features and answers with its tag."""
    return echo_model([], **{"predict": tag_predict, "params": {"tag": tag}, **overrides})


def pickle_needing_module(module_name: str) -> bytes:
    """Pickle a model whose predict lives in a module that nothing else has installed."""
    module = types.ModuleType(module_name)
    exec("def predict(model_input, params):\n    return {'model': 'unreachable'}\n", vars(module))
    sys.modules[module_name] = module  # so cloudpickle refers to it by name, as to a package
    try:
        return pickle_by_value({"preprocess": echo_preprocess, "predict": module.predict})
    finally:
        del sys.modules[module_name]


class Knot:
    """An object in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


def recording_predict(model_input: dict[str, Any], params: Any) -> dict[str, Any]:
    """Append the user's id to the file `params["calls"]`, then sleep if the id says so.

    A user id `sleep:1.5` holds its thread for 1.5 s, so a test can fill a worker's threads;
    the file tells which requests the model ran.
    """
    userid = str(model_input["user"].get("userid", ""))
    with open(params["calls"], "a", encoding="utf-8") as calls:
        calls.write(userid + "\n")
    if userid.startswith("sleep:"):
        time.sleep(float(userid.removeprefix("sleep:")))
    return {"user": userid, "streams": len(model_input["streams"])}


def recording_model(calls: str) -> dict[str, Any]:
    """Return a model that reads no features and records every request it runs in `calls`."""
    return echo_model([], predict=recording_predict, params={"calls": calls})


USER_FEATURES = ["u_score", "u_tags", "watched"]
GLOBAL_FEATURES = ["g_weights", "g_blob"]
HISTORY_FEATURES = ["f1", "emb"]


def versioned_codec(value: Any, version: Any) -> dict[str, Any]:
    """A team's own codec: says what it was given, and refuses a value b'bad'."""
    if value == b"bad":
        raise ValueError("cannot decode this")
    return {"raw": value.decode() if isinstance(value, bytes) else value, "version": version}


def full_predict(model_input: dict[str, Any], params: Any) -> dict[str, Any]:
    """Echo what the model got: user, stream features, globals and the history streams."""
    out = echo_predict(model_input, params)
    out["globals"] = params.get("globals")
    out["history_streams"] = params.get("history_streams")
    out["shared_params_keys"] = sorted(params)
    return out


def full_model(**overrides: Any) -> dict[str, Any]:
    """Return an echo model using every key: user, global, history features and codecs."""
    return echo_model(
        FEATURES,
        predict=full_predict,
        user_features=USER_FEATURES,
        global_features=GLOBAL_FEATURES,
        history={"user_feature": "watched", "stream_features": HISTORY_FEATURES},
        feature_codecs={
            "u_tags": "json",
            "g_weights": "json",
            "emb": "float32",
            "g_blob": versioned_codec,
        },
        **overrides,
    )


BAD_KEYS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown codec": (
        {"feature_codecs": {"emb": "float16"}},
        "'feature_codecs'['emb']: unknown codec 'float16' (built-in: json, float32)",
    ),
    "codec not callable": (
        {"feature_codecs": {"emb": 3}},
        "'feature_codecs'['emb'] is neither a codec name nor callable: int",
    ),
    "history not a user feature": (
        {
            "user_features": ["u_score"],
            "history": {"user_feature": "watched", "stream_features": ["f1"]},
        },
        "history feature 'watched' is not in 'user_features'",
    ),
    "empty user feature name": (
        {"user_features": ["u_score", ""]},
        "'user_features' has an empty feature name",
    ),
    "global feature not a string": (
        {"global_features": ["g", 7]},
        "'global_features' has 7, which is not a feature name",
    ),
    "empty history feature name": (
        {"user_features": ["w"], "history": {"user_feature": "w", "stream_features": [""]}},
        "'history'['stream_features'] has an empty feature name",
    ),
}
"""Models with a bad key beside a good echo model, and the cause each is refused with."""


def bad_keys_model(case: str) -> dict[str, Any]:
    """Return the echo model with the keys of a BAD_KEYS case."""
    return echo_model(**BAD_KEYS[case][0])


class FakeProducer:
    """confluent-kafka's Producer as the event log uses it, in memory; `refuse` makes it raise."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.produced: list[tuple[str, bytes, bytes]] = []
        self.refuse: BaseException | None = None
        self.left_after_flush = 0  # what flush() reports as still queued
        self.flushed_with: float | None = None

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.produced.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        time.sleep(min(timeout, 0.01))
        return 0

    def flush(self, timeout: float) -> int:
        self.flushed_with = timeout
        return self.left_after_flush

    def __len__(self) -> int:
        return len(self.produced)


def echo_pid_predict(model_input: dict[str, Any], params: Any) -> dict[str, Any]:
    """Echo, and say which worker answered."""
    return {**echo_predict(model_input, params), "pid": os.getpid()}


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
