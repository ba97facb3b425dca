"""An example model in the seed service's format: a dict of preprocess, predict, params, features.

It uses every key: stream, user and global features, the user's watch history and codecs.

`python -m examples.model out.pkl` writes it with cloudpickle, as a team would for S3.
"""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle

FEATURES = ["viewers", "quality", "freshness"]
USER_FEATURES = ["affinity", "watched"]  # affinity: JSON text; watched: a list of stream URLs
GLOBAL_FEATURES = ["boost"]  # little-endian float32 bytes: one boost per stream feature
HISTORY = {"user_feature": "watched", "stream_features": ["quality"]}


def preprocess(
    user: dict[str, Any], streams: list[dict[str, Any]], playlist: dict[str, Any], params: Any
) -> list[list[float]]:
    """Turn each stream into a row of its feature values (0 when a feature is missing).

    The global boost scales the features; the user's affinity for quality adds the mean quality
    of what they watched, and a stream they watched already scores 0.
    """
    boost = params.get("globals", {}).get("boost")
    scale = [1.0] * len(params["features"]) if boost is None else [float(b) for b in boost]
    history = params.get("history_streams", [])
    watched = {s["streamUrl"] for s in history}
    qualities = [float(s["quality"]) for s in history if isinstance(s.get("quality"), int | float)]
    affinity = (user.get("affinity") or {}).get("quality", 0.0)
    taste = affinity * sum(qualities) / len(qualities) if qualities else 0.0
    rows = []
    for stream in streams:
        row = []
        for name, k in zip(params["features"], scale, strict=True):
            value = stream.get(name)
            row.append(k * float(value) if isinstance(value, int | float) else 0.0)
        row[1] += taste
        rows.append([0.0] * len(row) if stream["streamUrl"] in watched else row)
    return rows


def predict(rows: list[list[float]], params: Any) -> dict[str, list[float]]:
    """Score each row with a weighted sum."""
    weights = params["weights"]
    return {
        "scores": [round(sum(w * x for w, x in zip(weights, row, strict=True)), 6) for row in rows]
    }


def build() -> dict[str, Any]:
    """Return the model dict the service loads."""
    return {
        "preprocess": preprocess,
        "predict": predict,
        "params": {"features": FEATURES, "weights": [0.001, 1.0, 0.5]},
        "stream_features": FEATURES,
        "user_features": USER_FEATURES,
        "global_features": GLOBAL_FEATURES,
        "history": HISTORY,
        "feature_codecs": {"affinity": "json", "boost": "float32"},
    }


def dumps() -> bytes:
    """Return the example model pickled by value, so loading it needs no `examples` package."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        return bytes(cloudpickle.dumps(build()))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


if __name__ == "__main__":
    with open(sys.argv[1], "wb") as out:
        out.write(dumps())
