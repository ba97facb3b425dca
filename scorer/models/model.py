"""Load and validate the team's model: a cloudpickled dict of preprocess, predict, params, features.

Besides `stream_features`, a model may ask for `user_features`, `global_features`, a watch
`history` and `feature_codecs` (haystack-ml-stack 0.4's keys); each is checked here.

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
from scorer.features.codecs import Codec, CodecError, resolve_codecs
from scorer.models.source import SourceError, source_for

logger = logging.getLogger(__name__)


class ModelError(Exception):
    """The model cannot be fetched, unpickled or used; the service must not start."""


@dataclass(frozen=True, slots=True)
class History:
    """Which user feature holds the watch history, and the features each watched stream gets."""

    user_feature: str
    stream_features: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Model:
    """A validated model: what `/score` calls and what `/health` reports."""

    name: str
    preprocess: Callable[..., Any]
    predict: Callable[..., Any]
    params: Any = field(default_factory=dict)
    stream_features: tuple[str, ...] = ()
    user_features: tuple[str, ...] = ()
    global_features: tuple[str, ...] = ()
    history: History | None = None
    codecs: Mapping[str, Codec] = field(default_factory=dict)
    # Names left out of the inference event's user and streams (scorer/eventlog/), as the seed's.
    kafka_features_to_ignore: tuple[str, ...] = ()
    sha256: str = ""
    version: str = ""  # S3 VersionId or ETag; for MODEL_PATH, mtime (ns) and size
    loaded_at: float = field(default_factory=time.time)  # Unix time this process unpickled it

    @property
    def reads_features(self) -> bool:
        """Tell whether scoring reads the feature store at all (else no AWS is needed)."""
        return bool(self.stream_features or self.user_features or self.global_features)


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
    user_features = feature_names(raw.get("user_features"), name, "'user_features'", strict=True)
    try:
        codecs = resolve_codecs(raw.get("feature_codecs"))
    except CodecError as exc:
        raise ModelError(f"model {name}: {exc}") from None
    return Model(
        name=name,
        preprocess=raw["preprocess"],
        predict=raw["predict"],
        params={} if params is None else params,
        stream_features=feature_names(raw.get("stream_features"), name),
        user_features=user_features,
        global_features=feature_names(
            raw.get("global_features"), name, "'global_features'", strict=True
        ),
        history=history_of(raw.get("history"), user_features, name),
        codecs=codecs,
        kafka_features_to_ignore=feature_names(
            raw.get("kafka_features_to_ignore"), name, "'kafka_features_to_ignore'"
        ),
        sha256=digest,
    )


HISTORY_KEYS = frozenset({"user_feature", "stream_features"})


def history_of(raw: object, user_features: tuple[str, ...], name: str) -> History | None:
    """Return the model's `history`, checked against its `user_features`, or None."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) != HISTORY_KEYS:
        raise ModelError(
            f"model {name}: 'history' must be a dict of 'user_feature' and 'stream_features'"
        )
    feature = raw["user_feature"]
    if not isinstance(feature, str) or not feature:
        raise ModelError(f"model {name}: 'history'['user_feature'] must be a feature name")
    if feature not in user_features:
        raise ModelError(f"model {name}: history feature {feature!r} is not in 'user_features'")
    features = feature_names(
        raw["stream_features"], name, "'history'['stream_features']", strict=True
    )
    return History(feature, features)


COLLECTIONS = (list, tuple, set, frozenset)
"""What `stream_features` may be (after a numpy array's `tolist()`); never a str, never a dict."""


def feature_names(
    features: object, name: str, key: str = "'stream_features'", *, strict: bool = False
) -> tuple[str, ...]:
    """Return a key's feature names as distinct plain strings, from a list, tuple, set or array.

    Never by truth value: a numpy array of more than one name has none (it raises). `strict`
    (the keys seed 0.1 did not have) also refuses the empty name, naming it.
    """
    if features is None:
        return ()
    try:
        if callable(getattr(features, "tolist", None)):  # numpy: numpy.str_ items become str
            features = features.tolist()  # type: ignore[attr-defined]
        if isinstance(features, COLLECTIONS) and all(isinstance(f, str) for f in features):
            names = tuple(dict.fromkeys(str(f) for f in features))
            if strict and "" in names:
                raise ModelError(f"model {name}: {key} has an empty feature name")
            return names
    except ModelError:
        raise
    except Exception:  # an unpickled object can raise anything from tolist() or iteration
        pass
    if strict and isinstance(features, COLLECTIONS):
        bad = next((f for f in features if not isinstance(f, str)), None)
        raise ModelError(f"model {name}: {key} has {bad!r}, which is not a feature name")
    raise ModelError(f"model {name}: {key} must be a list of strings")


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
        "loaded model %s (%d bytes, sha256 %s, version %s, features %s, user %s, global %s)",
        model.name,
        len(data),
        model.sha256[:12],
        model.version,
        list(model.stream_features),
        list(model.user_features),
        list(model.global_features),
    )
    return model


__all__ = [
    "History",
    "Model",
    "ModelError",
    "build_model",
    "feature_names",
    "load_model",
    "validate_model",
]
