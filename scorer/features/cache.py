"""The per-worker feature cache: a lock-guarded LRU cache with a lifetime per feature.

Each feature carries its own lifetime (the item's `cache_ttl_in_seconds`, the default TTL, or the
short TTL of "not in the table"), so one cache serves features that change at different rates.
It is bounded twice: by features (CACHE_MAXSIZE, as in the seed) and by an estimate of the bytes
it holds (CACHE_MAX_BYTES), since clients choose the stream URLs it is keyed by.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from cachetools import LRUCache

FeatureKey = tuple[str, str]
"""(streamUrl, feature name)."""

STREAM_OVERHEAD_BYTES = 330
"""Bytes one cached stream takes besides its URL, its features dict and its features: its slots
in the cache's data, size and LRU-order tables, which keep room for what they evicted. This and
FEATURE_OVERHEAD_BYTES are calibrated with tracemalloc by bench/cache_memory.py: with 2 KB URLs
after eviction churn the estimate came within 1% of what was held, and up to 18% above it for
100-byte URLs in a cache that never evicted (1, 3 and 10 features per stream)."""
FEATURE_OVERHEAD_BYTES = 112
"""Bytes one cached feature takes besides its value: its (value, expiry, size, copy) tuple (72),
the float expiry (24) and about 16 more that tracemalloc sees per feature as the stream's dict
grows. Names are the model's own strings, shared by every stream."""
_BYTES_RANGE = 1 << 48
"""Room for the byte count in a packed size (256 TiB): see `_packed_size`."""


class _Absent:
    """Marks an item the table does not have, so it is not read again until its entry expires."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


class Entry(NamedTuple):
    """A value read from the store (or ABSENT) and how many seconds to keep it."""

    value: Any
    ttl: float


Copier = Callable[[Any], Any]
"""Makes a copy of a list or map value that its caller may change."""


class Cached(NamedTuple):
    """A cached value (or ABSENT), when it expires, the bytes it takes, and how to copy it.

    `copy` is None for values nobody can change (numbers, strings, bytes, booleans, null).
    """

    value: Any
    expires: float
    nbytes: int
    copy: Copier | None


Fresh = dict[str, dict[str, Cached]]
"""Entries ready to store, by URL and feature name."""


def value_bytes(value: Any) -> int:
    """Return about how many bytes a deserialized feature value takes, contents included."""
    if value is None or value is True or value is False or value is ABSENT:
        return 0  # singletons, shared by everything that holds them
    size = sys.getsizeof(value)
    if isinstance(value, list):
        size += sum(value_bytes(item) for item in value)
    elif isinstance(value, dict):
        size += sum(sys.getsizeof(key) + value_bytes(item) for key, item in value.items())
    elif isinstance(value, tuple):  # a codec feature's (value, version)
        size += sum(value_bytes(item) for item in value)
    return size


def _deep_copy(value: Any) -> Any:
    if type(value) is list:
        return [_deep_copy(item) for item in value]
    if type(value) is dict:
        return {key: _deep_copy(item) for key, item in value.items()}
    return value


def copier(value: Any) -> Copier | None:
    """Return how to copy a feature value for a caller that may change it, None if it cannot.

    Lists and maps are the only values the store gives that can be changed in place; one that
    holds no list or map itself (the common case) is copied shallowly, which is cheap.
    """
    if type(value) is list:
        nested = any(type(item) is list or type(item) is dict for item in value)
        return _deep_copy if nested else list.copy
    if type(value) is dict:
        nested = any(type(item) is list or type(item) is dict for item in value.values())
        return _deep_copy if nested else dict.copy
    return None


class StreamFeatures(dict[str, Cached]):
    """The cached features of one stream URL by name, when the last expires, and their size.

    `mutable` names the features whose values must be copied before anyone is given them, and
    how to copy each.
    """

    __slots__ = ("expires", "mutable", "size")

    def __init__(self, features: dict[str, Cached], url: str) -> None:
        super().__init__(features)
        self.expires = max(cached.expires for cached in features.values())
        self.mutable = tuple(
            (name, cached.copy) for name, cached in features.items() if cached.copy is not None
        )
        nbytes = sys.getsizeof(url) + sys.getsizeof(self) + STREAM_OVERHEAD_BYTES
        nbytes += sum(cached.nbytes for cached in features.values())
        if self.mutable:  # () is a shared singleton
            nbytes += sys.getsizeof(self.mutable) + sum(map(sys.getsizeof, self.mutable))
        self.size = len(features) * _BYTES_RANGE + nbytes


def _packed_size(features: StreamFeatures) -> int:
    """Return the stream's feature count and bytes as one number: count * 2**48 + bytes.

    cachetools keeps one running total of sizes, through every insert and eviction. Packed,
    that total holds both sums exactly, and comparing it with a maximum of
    `CACHE_MAXSIZE * 2**48 + (2**48 - 1)` compares the feature counts alone.
    """
    return features.size


class FeatureCache:
    """A TLRU cache of stream features, safe to share between a worker's request threads.

    One cache entry per stream URL holds all its features, each with its own expiry: a request
    asks for every feature of a stream together, so this costs one lookup per stream instead of
    one per feature. Sizes count features, so CACHE_MAXSIZE means what it meant in the seed;
    past `max_bytes` (estimated), the least recently used streams go first as well. A stream
    whose features all expired is dropped when next asked for, or evicted as least recently
    used: cachetools' TLRUCache would drop it sooner, but keeps evicted keys (here, client
    URLs) referenced from its expiry heap until it compacts, up to as many again as it holds.
    """

    def __init__(
        self,
        maxsize: int,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self._maxsize = maxsize
        self._max_bytes = _BYTES_RANGE - 1 if max_bytes is None else max_bytes
        # cachetools refuses maxsize 0: keep one slot and never fill it.
        self._cache: LRUCache[str, StreamFeatures] = LRUCache(
            maxsize=max(maxsize, 1) * _BYTES_RANGE + _BYTES_RANGE - 1, getsizeof=_packed_size
        )
        self.lock = threading.Lock()

    def __len__(self) -> int:
        with self.lock:
            return self.size_unlocked()

    @property
    def bytes(self) -> int:
        """Return the estimated bytes the cached streams take."""
        with self.lock:
            return self.bytes_unlocked()

    def size_unlocked(self) -> int:
        """Return the number of cached features, expired ones not yet evicted included."""
        return int(self._cache.currsize) // _BYTES_RANGE if self._enabled else 0

    def bytes_unlocked(self) -> int:
        """Return the estimated bytes of the cached streams, expired ones not yet evicted too."""
        return int(self._cache.currsize) % _BYTES_RANGE if self._enabled else 0

    @property
    def _enabled(self) -> bool:
        return self._maxsize > 0 and self._max_bytes > 0

    def get_unlocked(self, url: str) -> StreamFeatures | None:
        """Return the cached features of url (check each one's expiry); the caller holds `lock`."""
        try:
            # Indexing, not .get(): .get checks membership, then indexes.
            stream = self._cache[url]
        except KeyError:
            return None
        if stream.expires > self.clock():
            return stream
        del self._cache[url]  # its last feature expired
        return None

    def stamp(self, entries: Iterable[tuple[FeatureKey, Entry]]) -> Fresh:
        """Give entries their expiry and size, without the lock: sizing a large value takes time."""
        now = self.clock()
        fresh: Fresh = {}
        for (url, name), entry in entries:
            if entry.ttl > 0:
                nbytes = FEATURE_OVERHEAD_BYTES + value_bytes(entry.value)
                cached = Cached(entry.value, now + entry.ttl, nbytes, copier(entry.value))
                fresh.setdefault(url, {})[name] = cached
        return fresh

    def store_unlocked(self, fresh: Fresh) -> None:
        """Store stamped entries beside the live features of their URL; the caller holds `lock`."""
        if not self._enabled:
            return
        now = self.clock()
        for url, features in fresh.items():
            old = self.get_unlocked(url)
            merged = {n: c for n, c in old.items() if c.expires > now} if old else {}
            merged.update(features)
            stream = StreamFeatures(merged, url)
            if len(stream) > self._maxsize or stream.size % _BYTES_RANGE > self._max_bytes:
                continue  # more than the whole cache may hold
            self._cache[url] = stream  # evicts the least recently used past CACHE_MAXSIZE
            while self.bytes_unlocked() > self._max_bytes:
                self._cache.popitem()  # the least recently used

    def put_many(self, entries: Iterable[tuple[FeatureKey, Entry]]) -> None:
        """Store entries under the lock."""
        fresh = self.stamp(entries)
        with self.lock:
            self.store_unlocked(fresh)
