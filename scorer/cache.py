"""The per-worker feature cache: a lock-guarded TLRU cache with a lifetime per entry.

Each entry carries its own lifetime (the item's `cache_ttl_in_seconds`, the default TTL, or the
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
    """A cached value (or ABSENT) and how many seconds it lives."""

    value: Any
    ttl: float


def _expires_at(_key: Hashable, entry: Entry, now: float) -> float:
    return now + entry.ttl


class FeatureCache:
    """A TLRU cache safe to share between a worker's request threads."""

    def __init__(self, maxsize: int, clock: Callable[[], float] = time.monotonic) -> None:
        # cachetools refuses maxsize 0: keep one slot and never fill it.
        self._cache: TLRUCache[FeatureKey, Entry] = TLRUCache(
            maxsize=max(maxsize, 1), ttu=_expires_at, timer=clock
        )
        self._enabled = maxsize > 0
        self.lock = threading.Lock()

    def __len__(self) -> int:
        with self.lock:
            return self.size_unlocked()

    def size_unlocked(self) -> int:
        """Return the number of entries, expired ones not yet evicted included."""
        return len(self._cache) if self._enabled else 0

    def get_unlocked(self, key: FeatureKey) -> Entry | None:
        """Return the live entry for key; the caller holds `lock`."""
        try:
            # Indexing, not .get(): .get checks membership then indexes, each through the
            # timer, and costs five times as much on the hot path (90 lookups a request).
            return self._cache[key]
        except KeyError:
            return None

    def put_many_unlocked(self, entries: Iterable[tuple[FeatureKey, Entry]]) -> None:
        """Store entries; the caller holds `lock`."""
        if not self._enabled:
            return
        for key, entry in entries:
            if entry.ttl > 0:
                self._cache[key] = entry

    def put_many(self, entries: Iterable[tuple[FeatureKey, Entry]]) -> None:
        """Store entries under the lock."""
        with self.lock:
            self.put_many_unlocked(entries)
