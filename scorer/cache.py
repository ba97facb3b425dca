"""The per-worker feature cache: a lock-guarded TLRU cache with a lifetime per entry.

Each feature carries its own lifetime (the item's `cache_ttl_in_seconds`, the default TTL, or the
short TTL of "not in the table"), so one cache serves features that change at different rates.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple

from cachetools import TLRUCache

FeatureKey = tuple[str, str]
"""(streamUrl, feature name)."""


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


class Cached(NamedTuple):
    """A cached value (or ABSENT) and the clock time it expires at."""

    value: Any
    expires: float


StreamFeatures = dict[str, Cached]
"""The cached features of one stream URL, by feature name."""


def _last_expiry(_url: Hashable, features: StreamFeatures, now: float) -> float:
    return max(cached.expires for cached in features.values())


class FeatureCache:
    """A TLRU cache of stream features, safe to share between a worker's request threads.

    One cache entry per stream URL holds all its features, each with its own expiry: a request
    asks for every feature of a stream together, so this costs one lookup per stream instead of
    one per feature. Sizes count features, so CACHE_MAXSIZE means what it meant in the seed.
    """

    def __init__(self, maxsize: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._maxsize = maxsize
        # cachetools refuses maxsize 0: keep one slot and never fill it.
        self._cache: TLRUCache[str, StreamFeatures] = TLRUCache(
            maxsize=max(maxsize, 1), ttu=_last_expiry, timer=clock, getsizeof=len
        )
        self.lock = threading.Lock()

    def __len__(self) -> int:
        with self.lock:
            return self.size_unlocked()

    def size_unlocked(self) -> int:
        """Return the number of cached features, expired ones not yet evicted included."""
        return int(self._cache.currsize) if self._maxsize else 0

    def get_unlocked(self, url: str) -> StreamFeatures | None:
        """Return the cached features of url (check each one's expiry); the caller holds `lock`."""
        try:
            # Indexing, not .get(): .get checks membership then indexes, each through the
            # timer, and costs five times as much on the hot path.
            return self._cache[url]
        except KeyError:
            return None

    def put_many_unlocked(self, entries: Iterable[tuple[FeatureKey, Entry]]) -> None:
        """Store entries next to the live features of the same URL; the caller holds `lock`."""
        if not self._maxsize:
            return
        now = self.clock()
        fresh: dict[str, StreamFeatures] = {}
        for (url, name), entry in entries:
            if entry.ttl > 0:
                fresh.setdefault(url, {})[name] = Cached(entry.value, now + entry.ttl)
        for url, features in fresh.items():
            old = self.get_unlocked(url)
            merged = {n: c for n, c in old.items() if c.expires > now} if old else {}
            merged.update(features)
            if len(merged) <= self._maxsize:
                self._cache[url] = merged

    def put_many(self, entries: Iterable[tuple[FeatureKey, Entry]]) -> None:
        """Store entries under the lock."""
        with self.lock:
            self.put_many_unlocked(entries)
