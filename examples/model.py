"""An example model in the seed service's format: a dict of preprocess, predict, params, features.

`python -m examples.model out.pkl` writes it with cloudpickle, as a team would for S3.
"""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle

FEATURES = ["viewers", "quality", "freshness"]


def preprocess(
    user: dict[str, Any], streams: list[dict[str, Any]], playlist: dict[str, Any], params: Any
) -> list[list[float]]:
    """Turn each stream into a row of its feature values (0 when a feature is missing)."""
    rows = []
    for stream in streams:
        row = []
        for name in params["features"]:
            value = stream.get(name)
            row.append(float(value) if isinstance(value, int | float) else 0.0)
        rows.append(row)
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
