"""Enrich streams with their features: cache first, then one coalesced DynamoDB read per key.

Concurrent requests that miss the same key share one read (the first registers it as in flight,
the others wait on it), chunks of one request are read in parallel, and the whole fetch is
bounded by a per-request budget: a slow or failing store costs features, never the request.
The steps live beside it: `lookup` (the cache read), `inflight` (shared reads, their results);
`FeatureFetcher` runs them in order, reads a chunk from the store, and counts.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from scorer.features.cache import Entry, FeatureCache, FeatureKey, Fresh
from scorer.features.inflight import Chunk, Claim, InFlight, Read, Waits, collect
from scorer.features.lookup import CacheRead, Shared, read_cache
from scorer.features.store import FeatureStore
from scorer.metrics import Metrics

logger = logging.getLogger(__name__)


def drop_client_values(stream: dict[str, Any], names: Sequence[str]) -> None:
    """Remove what a client sent under the features' names (its streamUrl stays, whatever)."""
    for name in names:
        if name != "streamUrl":
            stream.pop(name, None)


@dataclass(slots=True)
class Pending:
    """A lookup begun: what the cache had, the reads it waits on, and its misses."""

    deadline: float
    found: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared: Shared = field(default_factory=dict)
    waits: Waits = field(default_factory=dict)
    misses: int = 0


def apply_features(
    streams: Sequence[dict[str, Any]],
    names: Sequence[str],
    found: Mapping[str, dict[str, Any]],
    shared: Shared,
) -> None:
    """Set what a lookup found on each stream, each with its own copy of lists and maps."""
    every = len(names)
    for stream in streams:
        url = stream["streamUrl"]
        values = found.get(url)
        if values is None or len(values) < every:  # else every name is overwritten
            drop_client_values(stream, names)
        if values:
            stream.update(values)
            if shared:
                for name, copy in shared.get(url, ()):
                    if name in values:
                        stream[name] = copy(values[name])


def count_degraded(metrics: Metrics, reasons: set[str]) -> None:
    """Count one request scored without some features, once per reason."""
    for reason in reasons:
        metrics.degraded_requests.labels(reason).inc()
    if reasons:
        logger.warning("scored without some features: %s", ", ".join(sorted(reasons)))


class FeatureFetcher:
    """Look feature values up for a request, sharing cache and in-flight reads across threads."""

    def __init__(
        self,
        cache: FeatureCache,
        store: FeatureStore,
        pool: Executor,
        metrics: Metrics,
        *,
        stream_pk_prefix: str,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        kind: str = "stream",
    ) -> None:
        self.cache = cache
        self.kind = kind
        self._m = metrics.caches[kind]
        self._store = store
        self._pool = pool
        self._metrics = metrics
        self._timeout = timeout
        self._clock = clock
        self.inflight = InFlight(stream_pk_prefix)

    def enrich(self, streams: Sequence[dict[str, Any]], names: Sequence[str]) -> bool:
        """Set every known feature on every stream (duplicates included); True if degraded.

        The store is a feature's only source: what a client sent under a feature's name is
        dropped, so the model sees the same input whether the store had the feature, did not,
        or failed. Each stream gets its own copy of a list or map value: a model that changes
        one in place changes it for no other stream, request or cache entry.
        """
        if not names or not streams:
            return False
        per_url = Counter(stream["streamUrl"] for stream in streams)
        found, shared, degraded = self.lookup(per_url, names)
        apply_features(streams, names, found, shared)
        return degraded

    def lookup(
        self, per_url: Mapping[str, int], names: Sequence[str]
    ) -> tuple[dict[str, dict[str, Any]], Shared, bool]:
        """Return the values found per url and name, the shared ones, and if any fell short.

        Values are the cache's own: those named in `shared` (lists and maps) must be copied
        before anyone may change them. `per_url` says how many streams share each url, so
        every stream-feature lookup is counted exactly once, as a hit or a miss.
        """
        pending = self.begin(per_url, names, self._clock() + self._timeout)
        reasons = self.finish(pending)
        count_degraded(self._metrics, reasons)
        return pending.found, pending.shared, bool(reasons)

    def begin(self, per_url: Mapping[str, int], names: Sequence[str], deadline: float) -> Pending:
        """Take what the cache has and start reading the rest; `finish` waits for it.

        Between the two a caller can begin lookups in other caches, so their reads overlap.
        """
        pending = Pending(deadline)
        # One lock for all three steps: a key found missing is claimed before another thread
        # can find it missing too, so concurrent misses of a key share one read.
        claim = None
        with self.cache.lock:
            read = read_cache(self.cache, per_url, names, pending.shared)
            if read.missing:
                claim = self.inflight.join_or_claim(read.missing, pending.waits)
                self.inflight.start(
                    claim.owned,
                    pending.waits,
                    lambda chunk, future: self._pool.submit(
                        self._fetch_chunk, chunk, deadline, future
                    ),
                )
                pending.misses = claim.fetched + claim.coalesced + claim.invalid
        pending.found = read.found
        self._count(read, claim)
        return pending

    def finish(self, pending: Pending) -> set[str]:
        """Wait for a lookup's reads until its deadline; return why any fell short (if any)."""
        if not pending.waits:
            return set()
        timeout = pending.deadline - self._clock()
        return collect(pending.waits, timeout, pending.found, pending.shared)

    def _fetch_chunk(self, chunk: Chunk, deadline: float, future: Read) -> None:
        entries: dict[FeatureKey, Entry] = {}
        fresh: Fresh = {}
        error: BaseException | None = None
        try:
            if self._clock() >= deadline:
                raise TimeoutError("feature budget spent before the read started")
            entries = self._store.fetch_chunk(chunk, deadline)
            fresh = self.cache.stamp(entries.items())  # sized before taking the lock
        except Exception as exc:  # any store failure degrades the requests waiting on it
            logger.warning("feature read of %d keys failed: %r", len(chunk), exc)
            error = exc
        finally:
            with self.cache.lock:
                self.cache.store_unlocked(fresh)
                self.inflight.release(chunk, future)
                size, nbytes = self.cache.size_unlocked(), self.cache.bytes_unlocked()
            if error is None:
                future.set_result(entries)
            else:
                future.set_exception(error)
        self._m.entries.set(size)
        self._m.bytes.set(nbytes)

    def _count(self, read: CacheRead, claim: Claim | None) -> None:
        m = self._m
        for counter, amount in (
            (m.hits_value, read.hits),
            (m.hits_absent, read.absent_hits),
            (m.misses_fetched, claim.fetched if claim else 0),
            (m.misses_coalesced, claim.coalesced if claim else 0),
            (m.misses_invalid, claim.invalid if claim else 0),
        ):
            if amount:
                counter.inc(amount)
