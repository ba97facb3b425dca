"""The TLRU feature cache: per-feature lifetimes on an injected clock, LRU by stream, no cache."""

from __future__ import annotations

from scorer.cache import ABSENT, Entry, FeatureCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def live(cache: FeatureCache, url: str) -> dict[str, object]:
    with cache.lock:
        features = cache.get_unlocked(url) or {}
    return {name: c.value for name, c in features.items() if c.expires > cache.clock()}


def test_each_feature_lives_for_its_own_ttl() -> None:
    clock = Clock()
    cache = FeatureCache(10, clock=clock)
    cache.put_many([(("u", "short"), Entry(1, 5)), (("u", "long"), Entry(2, 50))])
    clock.now = 6
    assert live(cache, "u") == {"long": 2}
    clock.now = 51
    assert live(cache, "u") == {}
    assert len(cache) == 0  # the stream's entry expired with its last feature


def test_new_features_join_the_live_ones_of_their_stream() -> None:
    clock = Clock()
    cache = FeatureCache(10, clock=clock)
    cache.put_many([(("u", "a"), Entry(1, 5)), (("u", "b"), Entry(2, 50))])
    clock.now = 6
    cache.put_many([(("u", "c"), Entry(ABSENT, 5))])
    assert live(cache, "u") == {"b": 2, "c": ABSENT}
    assert len(cache) == 2  # the expired feature was dropped, sizes count features


def test_least_recently_used_stream_is_evicted_first() -> None:
    cache = FeatureCache(4, clock=Clock())
    cache.put_many([(("a", "f"), Entry(1, 9)), (("a", "g"), Entry(1, 9))])
    cache.put_many([(("b", "f"), Entry(2, 9)), (("b", "g"), Entry(2, 9))])
    live(cache, "a")
    cache.put_many([(("c", "f"), Entry(3, 9))])
    assert live(cache, "b") == {}
    assert live(cache, "a") == {"f": 1, "g": 1}
    assert len(cache) == 3


def test_zero_size_cache_stores_nothing() -> None:
    cache = FeatureCache(0)
    cache.put_many([(("a", "f"), Entry(1, 9))])
    assert live(cache, "a") == {}
    assert len(cache) == 0
