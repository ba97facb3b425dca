"""Built-in codecs, the model's own, and decoding in place with failures counted."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from scorer.features.codecs import (
    BUILT_IN,
    CodecError,
    Versioned,
    decode_float32,
    decode_into,
    decode_json,
    resolve_codecs,
)


def test_json_reads_string_and_binary_attributes() -> None:
    assert decode_json('{"a": [1]}', None) == {"a": [1]}
    assert decode_json(b"[1, 2]", "v1") == [1, 2]


def test_float32_is_a_read_only_little_endian_array() -> None:
    array = decode_float32(struct.pack("<2f", 1.5, -2.0), None)
    assert array.dtype == np.dtype("<f4") and array.tolist() == [1.5, -2.0]
    with pytest.raises(ValueError):
        array[0] = 3.0  # a model cannot change the cache's bytes through it


def test_callable_codec_gets_the_raw_value_and_version() -> None:
    seen: list[Any] = []
    codecs = resolve_codecs({"x": lambda value, version: seen.append((value, version)) or 1})
    target: dict[str, Any] = {"x": Versioned(b"raw", "v3"), "y": 2}
    assert decode_into(target, codecs, "stream") == 0
    assert seen == [(b"raw", "v3")] and target == {"x": 1, "y": 2}


def test_failed_decodes_become_none_and_are_counted() -> None:
    target: dict[str, Any] = {"a": Versioned("not json", None), "b": Versioned(3.0, None)}
    failed = decode_into(target, {"a": BUILT_IN["json"], "b": BUILT_IN["float32"]}, "user")
    assert (failed, target) == (2, {"a": None, "b": None})


def test_missing_values_are_left_alone() -> None:
    target: dict[str, Any] = {"a": None}
    assert decode_into(target, {"a": BUILT_IN["json"], "b": BUILT_IN["json"]}, "user") == 0
    assert target == {"a": None}


def test_feature_codecs_must_be_a_dict() -> None:
    with pytest.raises(CodecError, match="'feature_codecs' must be a dict, got list"):
        resolve_codecs(["json"])
