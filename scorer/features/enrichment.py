"""Give one request every feature its model asks for: streams', the user's, global, history.

Each kind has its own cache and store prefix (`FeatureFetcher`s over one pool and client). The
lookups of all kinds begin together, so their reads overlap: candidates, user, global, and the
watch history's streams when the history itself was cached. An uncached history is known only
once the user's features are read, so its streams take a second round (also in parallel
batches). A stream that is both a candidate and in the history is read once: the second
lookup joins the first one's read, or finds it cached.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scorer.features.codecs import Codec, decode_into
from scorer.features.fetcher import FeatureFetcher, Pending, apply_features, count_degraded
from scorer.metrics import Metrics
from scorer.payload import ScoreRequest
from scorer.record import ScoreRecord

if TYPE_CHECKING:  # a model's keys are read here; the models package imports this one's codecs
    from scorer.models.model import Model

USER_PK_PREFIX = "USER#"
"""User features are items `pk = USER#<userid>`, `sk = name` (haystack-ml-stack 0.4)."""
GLOBAL_PK = "GLOBAL"
"""Global features are items `pk = GLOBAL`, `sk = name`: one entity, cached under GLOBAL_ID."""
GLOBAL_ID = ""


@dataclass(frozen=True, slots=True)
class Fetchers:
    """One worker's fetcher per kind of feature, sharing its pool and DynamoDB client."""

    stream: FeatureFetcher
    user: FeatureFetcher
    everyone: FeatureFetcher  # the global features ("global" is a keyword)

    def sizes(self) -> dict[str, int]:
        """Return each cache's entries (features), by kind."""
        return {
            "stream": len(self.stream.cache),
            "user": len(self.user.cache),
            "global": len(self.everyone.cache),
        }


@dataclass(frozen=True, slots=True)
class Watched:
    """The user's decoded history, its URLs, and their lookup (None when there are none)."""

    value: Any
    urls: list[str]
    pending: Pending | None


@dataclass(slots=True)
class Extras:
    """What the model gets in its per-request params besides `query_params`."""

    globals: dict[str, Any]
    history_streams: list[dict[str, Any]]


def user_key(user: Mapping[str, Any]) -> str | None:
    """Return the user's id as its items are keyed (`USER#42` for 42), None without one."""
    userid = user.get("userid")
    if isinstance(userid, bool) or not isinstance(userid, str | int):
        return None
    return str(userid) or None


def history_urls(value: Any, limit: int) -> list[str] | None:
    """Return the watched URLs (most recent first, at most `limit`); None if not a list."""
    if not isinstance(value, list | tuple):
        return None
    return [url for url in value if isinstance(url, str)][:limit]


def codecs_for(model: Model, names: Sequence[str]) -> dict[str, Codec]:
    """Return the model's codecs of these features."""
    return {name: model.codecs[name] for name in names if name in model.codecs}


class Enricher:
    """Fetch and decode every feature a request needs, recording what it cost."""

    def __init__(
        self,
        fetchers: Fetchers,
        metrics: Metrics,
        *,
        timeout: float,
        max_history: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetchers = fetchers
        self._metrics = metrics
        self._timeout = timeout
        self._max_history = max_history
        self._clock = clock

    def enrich(self, model: Model, request: ScoreRequest, record: ScoreRecord) -> Extras:
        """Set the features on the request's streams and user; return globals and history."""
        f = self.fetchers
        deadline = self._clock() + self._timeout
        streams, names = request.streams, model.stream_features
        candidates = f.stream.begin(Counter(s["streamUrl"] for s in streams), names, deadline)
        uid = user_key(request.user) if model.user_features else None
        user = f.user.begin({uid: 1}, model.user_features, deadline) if uid else None
        everyone = (
            f.everyone.begin({GLOBAL_ID: 1}, model.global_features, deadline)
            if model.global_features
            else None
        )
        watched: Watched | None = None
        if model.history is not None and uid is not None and user is not None:
            key = (uid, model.history.user_feature)
            if not any(key in keys for keys in user.waits.values()):  # cached: begin it now
                watched = self._begin_history(model, uid, user, record, deadline)
        waited = time.perf_counter()
        reasons = f.stream.finish(candidates)
        for fetcher, pending in ((f.user, user), (f.everyone, everyone)):
            if pending is not None:
                reasons |= fetcher.finish(pending)
        if watched is None and model.history is not None and uid is not None and user:
            watched = self._begin_history(model, uid, user, record, deadline)  # round two
        if watched is not None and watched.pending is not None:
            reasons |= f.stream.finish(watched.pending)
        record.store_ms = (time.perf_counter() - waited) * 1000
        count_degraded(self._metrics, reasons)
        record.retrieval_success = not reasons

        decoding = time.perf_counter()
        record.cache_misses["stream"] = candidates.misses
        apply_features(streams, names, candidates.found, candidates.shared)
        if model.codecs and names:
            self._decode(streams, codecs_for(model, names), "stream", record)
        extras = Extras({}, [])
        if user is not None and uid is not None:
            record.cache_misses["user"] = user.misses
            request.user.update(self._user_values(model, uid, user, watched, record))
        if everyone is not None:
            record.cache_misses["global"] = everyone.misses
            extras.globals = self._values(model.global_features, GLOBAL_ID, everyone)
            codecs = codecs_for(model, model.global_features)
            self._decode([extras.globals], codecs, "global", record)
        if watched is not None and watched.pending is not None and model.history is not None:
            pending, history_names = watched.pending, model.history.stream_features
            record.cache_misses["stream"] += pending.misses
            extras.history_streams = [{"streamUrl": url} for url in watched.urls]
            apply_features(extras.history_streams, history_names, pending.found, pending.shared)
            codecs = codecs_for(model, history_names)
            self._decode(extras.history_streams, codecs, "stream", record)
        record.decode_ms = (time.perf_counter() - decoding) * 1000
        record.history_streams = len(extras.history_streams)
        return extras

    def _begin_history(
        self, model: Model, uid: str, user: Pending, record: ScoreRecord, deadline: float
    ) -> Watched:
        """Decode the user's history as found and begin its streams' lookup (if it has any)."""
        assert model.history is not None
        name = model.history.user_feature
        holder = self._values([name], uid, user)  # its own copy of a list value
        self._decode([holder], codecs_for(model, [name]), "user", record)
        urls = history_urls(holder[name], self._max_history)
        if urls is None:
            if holder[name] is not None:  # decoded, but not a list of URLs
                self._count_failures("user", 1, record)
            urls = []
        pending = None
        if urls:
            names = model.history.stream_features
            pending = self.fetchers.stream.begin(Counter(urls), names, deadline)
        return Watched(holder[name], urls, pending)

    def _user_values(
        self, model: Model, uid: str, user: Pending, watched: Watched | None, record: ScoreRecord
    ) -> dict[str, Any]:
        """Return each user feature as the model sees it (None when the table has none)."""
        values = self._values(model.user_features, uid, user)
        codecs = codecs_for(model, model.user_features)
        if watched is not None and model.history is not None:  # decoded once, already
            codecs.pop(model.history.user_feature, None)
            values[model.history.user_feature] = watched.value
        self._decode([values], codecs, "user", record)
        return values

    def _values(self, names: Sequence[str], entity: str, pending: Pending) -> dict[str, Any]:
        """Return an entity's features by name, each its own copy, None when not found."""
        holder = {"streamUrl": entity}
        apply_features([holder], names, pending.found, pending.shared)
        return {name: holder.get(name) for name in names}

    def _decode(
        self,
        targets: Sequence[dict[str, Any]],
        codecs: Mapping[str, Codec],
        kind: str,
        record: ScoreRecord,
    ) -> None:
        if not codecs:
            return
        failed = sum(decode_into(target, codecs, kind) for target in targets)
        if failed:
            self._count_failures(kind, failed, record)

    def _count_failures(self, kind: str, failed: int, record: ScoreRecord) -> None:
        record.decode_failures += failed
        self._metrics.caches[kind].decode_failures.inc(failed)
