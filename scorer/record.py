"""What one `/score` request cost and found: for `Server-Timing` and the inference event log.

Filled by the scoring path, kept on the request's WSGI environ (`RECORD_KEY`), and plain data:
`as_dict()` is ready for JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RECORD_KEY = "scorer.record"
"""Where the record of a scored request is kept in its WSGI environ."""


def _no_misses() -> dict[str, int]:
    return {"stream": 0, "user": 0, "global": 0}


@dataclass(slots=True)
class ScoreRecord:
    """One request's feature retrieval and model times (ms), misses and outcome."""

    cache_misses: dict[str, int] = field(default_factory=_no_misses)
    """Lookups the caches could not answer, by cache (stream, user, global)."""
    store_ms: float = 0.0
    """Time spent waiting for DynamoDB reads (0 when every feature was cached)."""
    decode_ms: float = 0.0
    """Time spent in the model's feature codecs."""
    preprocess_ms: float = 0.0
    predict_ms: float = 0.0
    streams_scored: int = 0
    """Candidate streams the model was given."""
    history_streams: int = 0
    """Watched streams the model was given (`params["history_streams"]`)."""
    decode_failures: int = 0
    """Values a codec could not decode (the model got None for each)."""
    retrieval_success: bool = True
    """False when the store failed or was too slow for some feature (scored degraded)."""

    def as_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data."""
        return asdict(self)

    def server_timing(self) -> str:
        """Return the record's `Server-Timing` entries (durations in ms, the rest as desc)."""
        misses = self.cache_misses
        return (
            f"store;dur={self.store_ms:.2f}, decode;dur={self.decode_ms:.2f}, "
            f"preprocess;dur={self.preprocess_ms:.2f}, predict;dur={self.predict_ms:.2f}, "
            f'miss;desc="stream={misses["stream"]} user={misses["user"]} '
            f'global={misses["global"]}", '
            f'streams;desc="{self.streams_scored} history={self.history_streams}", '
            f'retrieval;desc="{"ok" if self.retrieval_success else "degraded"} '
            f'decode_failures={self.decode_failures}"'
        )
