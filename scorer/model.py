"""Load and validate the team's model: a cloudpickled dict of preprocess, predict, params, features.

The master process loads it once before forking, so every check that can fail happens here,
at start-up, with one message naming the cause, never on the first request.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import cloudpickle

from config import Settings
from scorer.source import SourceError, source_for

logger = logging.getLogger(__name__)


class ModelError(Exception):
    """The model cannot be fetched, unpickled or used; the service must not start."""


@dataclass(frozen=True, slots=True)
class Model:
    """A validated model: what `/score` calls and what `/health` reports."""

    name: str
    preprocess: Callable[..., Any]
    predict: Callable[..., Any]
    params: Any = field(default_factory=dict)
    stream_features: tuple[str, ...] = ()
    # Names left out of the inference event's user and streams (scorer/events.py), as the seed's.
    kafka_features_to_ignore: tuple[str, ...] = ()
    sha256: str = ""
    version: str = ""  # S3 VersionId or ETag; for MODEL_PATH, mtime (ns) and size
    loaded_at: float = field(default_factory=time.time)  # Unix time this process unpickled it


def build_model(data: bytes, name: str, expected_sha256: str | None = None) -> Model:
    """Check the bytes' hash, unpickle them and validate the dict's shape."""
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ModelError(
            f"model {name} has sha256 {digest}, MODEL_SHA256 expects {expected_sha256}"
        )
    try:
        raw = cloudpickle.loads(data)
    except Exception as exc:  # unpickling can raise anything the pickled code raises
        raise ModelError(f"model {name} cannot be unpickled: {type(exc).__name__}: {exc}") from None
    return validate_model(raw, name, digest)


def validate_model(raw: object, name: str, digest: str = "") -> Model:
    """Turn the unpickled object into a Model, or say what is wrong with it."""
    if not isinstance(raw, Mapping):
        raise ModelError(f"model {name} must be a dict, got {type(raw).__name__}")
    for key in ("preprocess", "predict"):
        if key not in raw:
            raise ModelError(f"model {name} has no '{key}'")
        if not callable(raw[key]):
            raise ModelError(f"model {name}: '{key}' is not callable")
    params = raw.get("params")
    return Model(
        name=name,
        preprocess=raw["preprocess"],
        predict=raw["predict"],
        params={} if params is None else params,
        stream_features=feature_names(raw.get("stream_features"), name),
        kafka_features_to_ignore=feature_names(
            raw.get("kafka_features_to_ignore"), name, key="kafka_features_to_ignore"
        ),
        sha256=digest,
    )


COLLECTIONS = (list, tuple, set, frozenset)
"""What `stream_features` may be (after a numpy array's `tolist()`); never a str, never a dict."""


def feature_names(features: object, name: str, key: str = "stream_features") -> tuple[str, ...]:
    """Return `stream_features` (or `key`) as distinct plain strings, from a list, set or array.

    Never by truth value: a numpy array of more than one name has none (it raises).
    """
    if features is None:
        return ()
    try:
        if callable(getattr(features, "tolist", None)):  # numpy: numpy.str_ items become str
            features = features.tolist()  # type: ignore[attr-defined]
        if isinstance(features, COLLECTIONS) and all(isinstance(f, str) for f in features):
            return tuple(dict.fromkeys(str(f) for f in features))
    except Exception:  # an unpickled object can raise anything from tolist() or iteration
        pass
    raise ModelError(f"model {name}: '{key}' must be a list of strings")


def load_model(settings: Settings) -> Model:
    """Fetch, verify, unpickle and validate the configured model."""
    try:
        data, version = source_for(settings).fetch()
    except SourceError as exc:
        raise ModelError(str(exc)) from None
    model = replace(
        build_model(data, settings.model_name, settings.model_sha256), version=version.label
    )
    logger.info(
        "loaded model %s (%d bytes, sha256 %s, version %s, features %s)",
        model.name,
        len(data),
        model.sha256[:12],
        model.version,
        list(model.stream_features),
    )
    return model


__all__ = ["Model", "ModelError", "build_model", "feature_names", "load_model", "validate_model"]
