"""Enrich streams with their features: cache first, then one coalesced DynamoDB read per key.

Concurrent requests that miss the same key share one read (the first registers it as in flight,
the others wait on it), chunks of one request are read in parallel, and the whole fetch is
bounded by a per-request budget: a slow or failing store costs features, never the request.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, field
from typing import Any

from scorer.features.cache import ABSENT, Copier, Entry, FeatureCache, FeatureKey, Fresh, copier
from scorer.features.store import MAX_BATCH_KEYS, FeatureStore, is_valid_key
from scorer.metrics import Metrics

logger = logging.getLogger(__name__)

Chunk = list[FeatureKey]
Read = Future[dict[FeatureKey, Entry]]
"""One BatchGetItem chunk in flight: its entries, once read."""
Waits = dict[Read, list[FeatureKey]]
"""The reads a request waits on, with the keys it wants from each."""
Shared = dict[str, tuple[tuple[str, Copier], ...]]
"""By url, the features found whose values are lists or maps, and how to copy each."""


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
        self._prefix = stream_pk_prefix
        self._timeout = timeout
        self._clock = clock
        self._inflight: dict[FeatureKey, Read] = {}

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
        with self.cache.lock:
            found, missing, hits, absent_hits = self._read_cache(per_url, names, pending.shared)
            if missing:
                owned, fetched, coalesced, invalid = self._join_or_claim(missing, pending.waits)
                self._start_reads(owned, deadline, pending.waits)
                pending.misses = fetched + coalesced + invalid
            else:
                fetched = coalesced = invalid = 0
        pending.found = found
        self._count(hits, absent_hits, fetched, coalesced, invalid)
        return pending

    def finish(self, pending: Pending) -> set[str]:
        """Wait for a lookup's reads until its deadline; return why any fell short (if any)."""
        if not pending.waits:
            return set()
        return self._collect(pending.waits, pending.deadline, pending.found, pending.shared)

    def _read_cache(
        self, per_url: Mapping[str, int], names: Sequence[str], shared: Shared
    ) -> tuple[dict[str, dict[str, Any]], list[tuple[FeatureKey, int]], int, int]:
        """Return the live cached values, the keys missing (with their stream counts), hits.

        The caller holds the cache lock. A key cached as absent is a hit with no value.
        The list and map values found are added to `shared`.
        """
        found: dict[str, dict[str, Any]] = {}
        missing: list[tuple[FeatureKey, int]] = []
        hits = absent_hits = 0
        get = self.cache.get_unlocked
        now = self.cache.clock()
        for url, count in per_url.items():
            cached = get(url)
            if cached is None:
                missing.extend([((url, name), count) for name in names])
                continue
            values: dict[str, Any] = {}
            for name in names:
                entry = cached.get(name)
                if entry is not None and entry.expires > now:
                    if entry.value is ABSENT:
                        absent_hits += count
                    else:
                        hits += count
                        values[name] = entry.value
                    continue
                missing.append(((url, name), count))
            if values:
                found[url] = values
                if cached.mutable:
                    shared[url] = cached.mutable  # expired ones included: enrich skips them
        return found, missing, hits, absent_hits

    def _join_or_claim(
        self, missing: list[tuple[FeatureKey, int]], waits: Waits
    ) -> tuple[Chunk, int, int, int]:
        """Wait on reads in flight for the keys they cover; claim the rest to read ourselves.

        The caller holds the cache lock. Returns the keys claimed and the lookups fetched,
        coalesced and invalid (a key DynamoDB would refuse is never sent).
        """
        owned: Chunk = []
        fetched = coalesced = invalid = 0
        inflight = self._inflight
        for key, count in missing:
            if (future := inflight.get(key)) is not None:
                waits.setdefault(future, []).append(key)
                coalesced += count
            elif is_valid_key(key, self._prefix):
                owned.append(key)
                fetched += count
            else:
                invalid += count
        return owned, fetched, coalesced, invalid

    def _start_reads(self, owned: Chunk, deadline: float, waits: Waits) -> None:
        """Register the claimed keys as in flight, in chunks of one BatchGetItem, and read them.

        The caller holds the cache lock. A chunk the pool refuses fails at once, and its keys
        are released so the next request tries them again instead of waiting in vain.
        """
        inflight = self._inflight
        for start in range(0, len(owned), MAX_BATCH_KEYS):
            chunk = owned[start : start + MAX_BATCH_KEYS]
            future: Read = Future()
            for key in chunk:
                inflight[key] = future
            waits[future] = chunk
            try:
                self._pool.submit(self._fetch_chunk, chunk, deadline, future)
            except RuntimeError as exc:  # no thread to be had, or shutting down
                for key in chunk:
                    del inflight[key]
                future.set_exception(exc)

    def _collect(
        self, waits: Waits, deadline: float, found: dict[str, dict[str, Any]], shared: Shared
    ) -> set[str]:
        """Add what the reads found by the deadline to `found`; return why any fell short."""
        done, not_done = wait(waits, timeout=max(0.0, deadline - self._clock()))
        reasons: set[str] = set()
        if not_done:
            reasons.add("timeout")
        for future in done:
            if future.exception() is not None:
                reasons.add("error")
                continue
            entries = future.result()
            for key in waits[future]:
                entry = entries.get(key)
                if entry is None:
                    reasons.add("unprocessed")
                elif entry.value is not ABSENT:
                    found.setdefault(key[0], {})[key[1]] = entry.value
                    if (copy := copier(entry.value)) is not None:  # the cache holds it too
                        shared[key[0]] = (*shared.get(key[0], ()), (key[1], copy))
        return reasons

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
                for key in chunk:
                    if self._inflight.get(key) is future:
                        del self._inflight[key]
                size, nbytes = self.cache.size_unlocked(), self.cache.bytes_unlocked()
            if error is None:
                future.set_result(entries)
            else:
                future.set_exception(error)
        self._m.entries.set(size)
        self._m.bytes.set(nbytes)

    def _count(
        self, hits: int, absent_hits: int, fetched: int, coalesced: int, invalid: int
    ) -> None:
        m = self._m
        for counter, amount in (
            (m.hits_value, hits),
            (m.hits_absent, absent_hits),
            (m.misses_fetched, fetched),
            (m.misses_coalesced, coalesced),
            (m.misses_invalid, invalid),
        ):
            if amount:
                counter.inc(amount)
