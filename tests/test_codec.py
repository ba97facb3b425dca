"""Encoding model output: what orjson does natively and what the fallback converts."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import orjson
import pytest

from scorer.codec import encode


def test_numpy_arrays_scalars_and_odd_types_encode() -> None:
    output = {
        "a": np.arange(4, dtype=np.float32)[::2],  # non-contiguous: orjson refuses it natively
        "b": np.float16(0.5),
        "c": {1, 2},
        "d": Decimal("1.5"),
        1: np.int64(7),
    }
    assert orjson.loads(encode(output)) == {
        "a": [0.0, 2.0],
        "b": 0.5,
        "c": [1, 2],
        "d": 1.5,
        "1": 7,
    }


def test_unencodable_output_raises_type_error() -> None:
    with pytest.raises(TypeError):
        encode({"x": object()})
