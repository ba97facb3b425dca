"""The TLRU feature cache: per-entry lifetimes on an injected clock, and a disabled cache."""

from __future__ import annotations

from scorer.cache import ABSENT, Entry, FeatureCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_each_entry_lives_for_its_own_ttl() -> None:
    clock = Clock()
    cache = FeatureCache(10, clock=clock)
    cache.put_many([(("u", "short"), Entry(1, 5)), (("u", "long"), Entry(2, 50))])
    clock.now = 6
    with cache.lock:
        assert cache.get_unlocked(("u", "short")) is None
        assert cache.get_unlocked(("u", "long")) == Entry(2, 50)


def test_least_recently_used_entry_is_evicted_first() -> None:
    cache = FeatureCache(2, clock=Clock())
    cache.put_many([(("a", "f"), Entry(1, 9)), (("b", "f"), Entry(2, 9))])
    with cache.lock:
        cache.get_unlocked(("a", "f"))
    cache.put_many([(("c", "f"), Entry(ABSENT, 9))])
    with cache.lock:
        assert cache.get_unlocked(("b", "f")) is None
        assert cache.get_unlocked(("a", "f")) is not None
    assert len(cache) == 2


def test_zero_size_cache_stores_nothing() -> None:
    cache = FeatureCache(0)
    cache.put_many([(("a", "f"), Entry(1, 9))])
    with cache.lock:
        assert cache.get_unlocked(("a", "f")) is None
    assert len(cache) == 0
