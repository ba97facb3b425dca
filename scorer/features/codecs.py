"""Decode feature values stored encoded: the model's `feature_codecs`, checked at load.

A codec is a built-in name (`json`, `float32`) or the model's own `codec(value, version)`. Values
are decoded per request from what the cache holds (the raw attribute and the item's `version`):
each request gets an object of its own, which its model may change, and a value that fails to
decode costs that request that feature, never the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import orjson

logger = logging.getLogger(__name__)

Codec = Callable[[Any, "str | None"], Any]
"""Turns a stored value (bytes for a binary attribute) and its item's version into the model's."""


class Versioned(NamedTuple):
    """A codec feature's raw value and its item's `version` attribute (None when it has none)."""

    value: Any
    version: str | None


def decode_json(value: Any, version: str | None) -> Any:
    """Parse UTF-8 JSON held in a string or binary attribute."""
    if not isinstance(value, str | bytes):
        raise TypeError(f"json needs a string or binary attribute, got {type(value).__name__}")
    return orjson.loads(value)


def decode_float32(value: Any, version: str | None) -> Any:
    """Read a binary attribute of little-endian float32 as a read-only 1-D array (no copy)."""
    if not isinstance(value, bytes):
        raise TypeError(f"float32 needs a binary attribute, got {type(value).__name__}")
    return np.frombuffer(value, dtype="<f4")


BUILT_IN: dict[str, Codec] = {"json": decode_json, "float32": decode_float32}


class CodecError(ValueError):
    """A `feature_codecs` entry the service cannot use; the message names the feature."""


def resolve_codecs(raw: object) -> dict[str, Codec]:
    """Return the model's codecs by feature name, or raise naming the first bad entry."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise CodecError(f"'feature_codecs' must be a dict, got {type(raw).__name__}")
    codecs: dict[str, Codec] = {}
    for name, codec in raw.items():
        if not isinstance(name, str) or not name:
            raise CodecError(f"'feature_codecs' has a key that is not a feature name: {name!r}")
        if isinstance(codec, str):
            if codec not in BUILT_IN:
                known = ", ".join(BUILT_IN)
                raise CodecError(
                    f"'feature_codecs'[{name!r}]: unknown codec {codec!r} (built-in: {known})"
                )
            codecs[name] = BUILT_IN[codec]
        elif callable(codec):
            codecs[name] = codec
        else:
            raise CodecError(
                f"'feature_codecs'[{name!r}] is neither a codec name nor callable: "
                f"{type(codec).__name__}"
            )
    return codecs


def decode_into(target: dict[str, Any], codecs: Mapping[str, Codec], kind: str) -> int:
    """Decode the codec features `target` holds, in place; return how many failed (now None)."""
    failed = 0
    for name, codec in codecs.items():
        raw = target.get(name)
        if raw is None:
            continue  # not in the table, or not asked for
        if type(raw) is Versioned:
            value, version = raw
        else:  # cannot happen through the store; a model's own defaults may land here
            value, version = raw, None
        try:
            target[name] = codec(value, version)
        except Exception as exc:  # the team's codec can raise anything
            target[name] = None
            failed += 1
            logger.warning("%s feature %s failed to decode: %r", kind, name, exc)
    return failed
