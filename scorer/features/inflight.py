"""Reads in flight, shared: a key missed by several requests at once is read once.

The first request to miss a key claims it and registers the read it starts (one BatchGetItem
chunk); the others wait on that read instead of starting their own. The cache's lock guards
the register: whoever finds a key missing claims it or joins its read under that lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

from scorer.features.cache import ABSENT, Entry, FeatureKey, copier
from scorer.features.lookup import Shared
from scorer.features.store import MAX_BATCH_KEYS, is_valid_key

Chunk = list[FeatureKey]
Read = Future[dict[FeatureKey, Entry]]
"""One BatchGetItem chunk in flight: its entries, once read."""
Waits = dict[Read, list[FeatureKey]]
"""The reads a request waits on, with the keys it wants from each."""


@dataclass(slots=True)
class Claim:
    """The missing keys of a lookup sorted out: read by it, joined, or never to be sent."""

    owned: Chunk
    fetched: int
    coalesced: int
    invalid: int


class InFlight:
    """One cache's register of keys being read, and the read each waits on."""

    def __init__(self, pk_prefix: str) -> None:
        self._prefix = pk_prefix
        self._reads: dict[FeatureKey, Read] = {}

    def __len__(self) -> int:
        return len(self._reads)

    def join_or_claim(self, missing: Iterable[tuple[FeatureKey, int]], waits: Waits) -> Claim:
        """Wait on reads in flight for the keys they cover; claim the rest to read.

        The caller holds the cache lock. Counts are of lookups (a key wanted by two streams
        of the request counts twice); a key DynamoDB would refuse is never sent.
        """
        owned: Chunk = []
        fetched = coalesced = invalid = 0
        reads = self._reads
        for key, count in missing:
            if (future := reads.get(key)) is not None:
                waits.setdefault(future, []).append(key)
                coalesced += count
            elif is_valid_key(key, self._prefix):
                owned.append(key)
                fetched += count
            else:
                invalid += count
        return Claim(owned, fetched, coalesced, invalid)

    def start(self, owned: Chunk, waits: Waits, submit: Callable[[Chunk, Read], Any]) -> None:
        """Register the claimed keys in chunks of one BatchGetItem, and submit each read.

        The caller holds the cache lock. A chunk `submit` refuses (RuntimeError: no thread,
        or shutting down) fails at once, and its keys are released so the next request tries
        them again instead of waiting in vain.
        """
        reads = self._reads
        for start in range(0, len(owned), MAX_BATCH_KEYS):
            chunk = owned[start : start + MAX_BATCH_KEYS]
            future: Read = Future()
            for key in chunk:
                reads[key] = future
            waits[future] = chunk
            try:
                submit(chunk, future)
            except RuntimeError as exc:
                self.release(chunk, future)
                future.set_exception(exc)

    def release(self, chunk: Chunk, future: Read) -> None:
        """Forget the chunk's keys read by `future` (the caller holds the cache lock)."""
        reads = self._reads
        for key in chunk:
            if reads.get(key) is future:
                del reads[key]


def collect(
    waits: Waits, timeout: float, found: dict[str, dict[str, Any]], shared: Shared
) -> set[str]:
    """Add what the reads found within `timeout` to `found`; return why any fell short."""
    done, not_done = wait(waits, timeout=max(0.0, timeout))
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
