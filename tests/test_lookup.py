"""Reading a lookup from the cache: values, absent items, expired ones and stream counts."""

from __future__ import annotations

from scorer.features.cache import ABSENT, Entry, FeatureCache
from scorer.features.lookup import Shared, read_cache
from tests.fakes import Clock


def test_hits_and_misses_are_counted_once_per_stream_wanting_them() -> None:
    clock = Clock(0.0)
    cache = FeatureCache(100, 1 << 20, clock=clock)
    cache.put_many(
        [
            (("a", "f1"), Entry(1.5, 60)),
            (("a", "f2"), Entry(ABSENT, 60)),
            (("b", "f1"), Entry(2.5, 5)),
        ]
    )
    clock.now = 10.0  # b's f1 has expired
    shared: Shared = {}
    with cache.lock:
        read = read_cache(cache, {"a": 2, "b": 1, "c": 1}, ["f1", "f2"], shared)
    assert read.found == {"a": {"f1": 1.5}}
    assert (read.hits, read.absent_hits) == (2, 2)  # two streams share url a
    assert sorted(read.missing) == [
        (("b", "f1"), 1),
        (("b", "f2"), 1),
        (("c", "f1"), 1),
        (("c", "f2"), 1),
    ]
    assert shared == {}


def test_a_list_value_found_is_named_for_copying() -> None:
    cache = FeatureCache(100, 1 << 20, clock=Clock(0.0))
    cache.put_many([(("a", "tags"), Entry(["x", "y"], 60))])
    shared: Shared = {}
    with cache.lock:
        read = read_cache(cache, {"a": 1}, ["tags"], shared)
    assert read.found == {"a": {"tags": ["x", "y"]}}
    ((name, copy),) = shared["a"]
    assert name == "tags" and copy(read.found["a"]["tags"]) is not read.found["a"]["tags"]
