"""Encode model output as JSON: numpy arrays and scalars included, as clients of the seed got."""

from __future__ import annotations

from collections.abc import Set
from decimal import Decimal
from typing import Any

import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _fallback(value: Any) -> Any:
    """Convert what orjson does not know natively (called only for such values)."""
    if isinstance(value, Set):
        return list(value)
    if isinstance(value, Decimal):
        return float(value)
    # numpy values orjson refuses (non-contiguous arrays, float16, object arrays) and numpy-likes.
    for method in ("tolist", "item"):
        convert = getattr(value, method, None)
        if callable(convert):
            return convert()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def encode(value: Any) -> bytes:
    """Return value as JSON bytes."""
    return orjson.dumps(value, default=_fallback, option=_OPTIONS)
