"""The TLRU feature cache: per-feature lifetimes on an injected clock, LRU by stream, no cache."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest

from scorer.features.cache import ABSENT, Entry, FeatureCache
from tests.fakes import Clock


def live(cache: FeatureCache, url: str) -> dict[str, object]:
    with cache.lock:
        features = cache.get_unlocked(url) or {}
    return {name: c.value for name, c in features.items() if c.expires > cache.clock()}


def test_each_feature_lives_for_its_own_ttl() -> None:
    clock = Clock(0.0)
    cache = FeatureCache(10, clock=clock)
    cache.put_many([(("u", "short"), Entry(1, 5)), (("u", "long"), Entry(2, 50))])
    clock.now = 6
    assert live(cache, "u") == {"long": 2}
    clock.now = 51
    assert live(cache, "u") == {}
    assert len(cache) == 0  # the stream's entry expired with its last feature


def test_new_features_join_the_live_ones_of_their_stream() -> None:
    clock = Clock(0.0)
    cache = FeatureCache(10, clock=clock)
    cache.put_many([(("u", "a"), Entry(1, 5)), (("u", "b"), Entry(2, 50))])
    clock.now = 6
    cache.put_many([(("u", "c"), Entry(ABSENT, 5))])
    assert live(cache, "u") == {"b": 2, "c": ABSENT}
    assert len(cache) == 2  # the expired feature was dropped, sizes count features


def test_least_recently_used_stream_is_evicted_first() -> None:
    cache = FeatureCache(4, clock=Clock(0.0))
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


MiB = 1024 * 1024


def long_url(n: int) -> str:
    return f"https://streams.example.com/{n:08d}/" + "x" * 2000


@pytest.mark.parametrize(
    "make_value",
    [
        lambda n: ABSENT,
        lambda n: float(n),
        lambda n: f"text {n}" * 20,
        lambda n: [float(n + i) for i in range(16)],
        lambda n: {"a": float(n), "b": [f"x{n}", True, None]},
    ],
    ids=["absent", "float", "string", "list", "map"],
)
def test_long_urls_fill_the_cache_only_up_to_its_byte_bound(
    make_value: Callable[[int], object],
) -> None:
    cache = FeatureCache(50_000, max_bytes=MiB, clock=Clock(0.0))
    gc.collect()
    tracemalloc.start()
    try:
        for start in range(0, 2000, 100):  # 2,000 unknown streams, as chunks of one read
            cache.put_many(
                [((long_url(n), "f"), Entry(make_value(n), 30)) for n in range(start, start + 100)]
            )
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    assert 250 < len(cache) < 2000  # unbounded, 2,000 such streams take 5 MiB or more
    assert cache.bytes <= MiB
    assert held <= 1.1 * MiB  # the estimate bounds what the entries really take...
    assert 0.9 < held / cache.bytes < 1.1  # ...within 10%
    assert live(cache, long_url(1999)) == {"f": make_value(1999)}  # the oldest went first
    assert live(cache, long_url(0)) == {}


def test_a_stream_larger_than_the_byte_bound_is_not_cached() -> None:
    cache = FeatureCache(100, max_bytes=4096, clock=Clock(0.0))
    cache.put_many([(("small", "f"), Entry(1.0, 9))])
    cache.put_many([(("big", "f"), Entry("x" * 5000, 9))])
    assert live(cache, "big") == {}
    assert live(cache, "small") == {"f": 1.0}  # and nothing was evicted to make room for it


def test_byte_estimate_follows_values_in_and_out() -> None:
    clock = Clock(0.0)
    cache = FeatureCache(100, max_bytes=MiB, clock=clock)
    cache.put_many([(("u", "short"), Entry("x" * 10_000, 5)), (("u", "long"), Entry(1.0, 50))])
    with_text = cache.bytes
    assert 10_000 < with_text < 11_000
    clock.now = 6
    cache.put_many([(("v", "f"), Entry(1.0, 50))])  # "u" keeps only its live feature
    cache.put_many([(("u", "other"), Entry(2.0, 50))])
    assert cache.bytes < with_text - 9_000
    clock.now = 100  # everything expired: each stream is dropped when next asked for
    assert live(cache, "u") == live(cache, "v") == {}
    assert (len(cache), cache.bytes) == (0, 0)
