"""Read one lookup's features from the cache: what is there, what is missing, what was hit.

Pure over a `FeatureCache` whose lock the caller holds: no store, no threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scorer.features.cache import ABSENT, Copier, FeatureCache, FeatureKey

Shared = dict[str, tuple[tuple[str, Copier], ...]]
"""By url, the features found whose values are lists or maps, and how to copy each."""


@dataclass(slots=True)
class CacheRead:
    """What the cache had for a lookup, counted once per stream that wanted it."""

    found: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[tuple[FeatureKey, int]] = field(default_factory=list)  # with stream counts
    hits: int = 0
    absent_hits: int = 0


def read_cache(
    cache: FeatureCache, per_url: Mapping[str, int], names: Sequence[str], shared: Shared
) -> CacheRead:
    """Return the live cached values of `names` for each url, and the keys missing.

    The caller holds the cache lock. A key cached as absent is a hit with no value. The list
    and map values found are added to `shared`: they are the cache's own, to be copied before
    a model may change them.
    """
    read = CacheRead()
    found, missing = read.found, read.missing
    hits = absent_hits = 0
    get = cache.get_unlocked
    now = cache.clock()
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
    read.hits, read.absent_hits = hits, absent_hits
    return read
