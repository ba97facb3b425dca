"""Feature enrichment against the emulator over HTTP: batching, caching, coalescing, TTLs."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from config import Settings
from examples.local_stack import put_features
from scorer.features.cache import FeatureCache
from scorer.features.fetcher import FeatureFetcher
from scorer.features.store import FeatureStore, make_client
from scorer.metrics import Metrics
from tests.conftest import make_settings, sample, seed_features

NAMES = ["f1", "f2", "f3"]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_fetcher(
    settings: Settings, metrics: Metrics, clock: Any = None, pool: Any = None
) -> FeatureFetcher:
    cache = FeatureCache(settings.cache_maxsize, clock=clock) if clock else FeatureCache(1000)
    store = FeatureStore(make_client(settings, 8), settings, metrics)
    return FeatureFetcher(
        cache,
        store,
        pool or ThreadPoolExecutor(4),
        metrics,
        stream_pk_prefix=settings.stream_pk_prefix,
        timeout=5.0,
    )


def streams_for(urls: list[str]) -> list[dict[str, Any]]:
    return [{"streamUrl": url} for url in urls]


def test_sixty_streams_get_all_180_features_and_warm_request_reads_nothing(
    dynamodb: Any, table: str, metrics: Metrics
) -> None:
    urls = [f"https://s/{n}" for n in range(60)]
    seed_features(dynamodb, table, urls, NAMES)
    fetcher = make_fetcher(make_settings(FEATURES_TABLE=table), metrics)

    streams = streams_for(urls)
    assert fetcher.enrich(streams, NAMES) is False
    assert all(s[n] == f"{s['streamUrl']}|{n}" for s in streams for n in NAMES)
    assert sample(metrics, "scorer_dynamodb_keys_requested_total") == 180

    warm = streams_for(urls)
    fetcher.enrich(warm, NAMES)
    assert warm == streams
    assert (
        sample(metrics, "scorer_dynamodb_keys_requested_total") == 180
    )  # nothing read the second time
    assert sample(metrics, "scorer_feature_cache_hits_total", kind="stream", result="value") == 180


def test_cache_gauges_report_the_entries_and_bytes_held(
    dynamodb: Any, table: str, metrics: Metrics
) -> None:
    seed_features(dynamodb, table, ["https://a", "https://b"], NAMES)
    fetcher = make_fetcher(make_settings(FEATURES_TABLE=table), metrics)

    fetcher.enrich(streams_for(["https://a", "https://b", "https://unknown"]), NAMES)

    assert sample(metrics, "scorer_feature_cache_entries", kind="stream") == len(fetcher.cache) == 9
    held = sample(metrics, "scorer_feature_cache_bytes", kind="stream")
    assert held == fetcher.cache.bytes
    assert 3 * 400 < held < 3 * 2000  # three streams of three small features


def test_duplicate_streams_all_get_features(dynamodb: Any, table: str, metrics: Metrics) -> None:
    seed_features(dynamodb, table, ["https://a", "https://b"], NAMES)
    fetcher = make_fetcher(make_settings(FEATURES_TABLE=table), metrics)
    streams = streams_for(["https://a", "https://b", "https://a", "https://a"])

    fetcher.enrich(streams, NAMES)

    assert [s.get("f2") for s in streams] == ["https://a|f2", "https://b|f2"] + ["https://a|f2"] * 2
    assert sample(metrics, "scorer_dynamodb_keys_requested_total") == 6  # keys deduplicated
    assert (
        sample(metrics, "scorer_feature_cache_misses_total", kind="stream", result="fetched") == 12
    )  # every stream x feature lookup counted


def test_dynamodb_values_keep_their_types(dynamodb: Any, table: str, metrics: Metrics) -> None:
    value = {
        "M": {
            "n": {"N": "1.5"},
            "l": {"L": [{"N": "2"}, {"S": "x"}, {"BOOL": True}, {"NULL": True}]},
            "ns": {"NS": ["3"]},
            "ss": {"SS": ["a"]},
        }
    }
    put_features(dynamodb, table, [("https://typed", "f1", {"value": value})])
    fetcher = make_fetcher(make_settings(FEATURES_TABLE=table), metrics)
    streams = streams_for(["https://typed"])

    fetcher.enrich(streams, ["f1"])

    assert streams[0]["f1"] == {"n": 1.5, "l": [2.0, "x", True, None], "ns": [3.0], "ss": ["a"]}


def test_unknown_stream_is_cached_as_absent(dynamodb: Any, table: str, metrics: Metrics) -> None:
    fetcher = make_fetcher(make_settings(FEATURES_TABLE=table), metrics)
    for _ in range(3):
        streams = streams_for(["https://nowhere"])
        fetcher.enrich(streams, NAMES)
        assert streams == [{"streamUrl": "https://nowhere"}]
    assert sample(metrics, "scorer_dynamodb_keys_requested_total") == 3
    assert sample(metrics, "scorer_feature_cache_hits_total", kind="stream", result="absent") == 6


def test_item_ttl_decides_when_a_feature_is_read_again(
    dynamodb: Any, table: str, metrics: Metrics
) -> None:
    put_features(
        dynamodb,
        table,
        [
            ("https://t", "short", {"value": {"N": "1"}, "cache_ttl_in_seconds": {"N": "10"}}),
            ("https://t", "default", {"value": {"N": "2"}}),
        ],
    )
    clock = FakeClock()
    settings = make_settings(FEATURES_TABLE=table, FEATURE_TTL_SECONDS=100)
    fetcher = make_fetcher(settings, metrics, clock=clock)
    names = ["short", "default"]

    def requested() -> float:
        return sample(metrics, "scorer_dynamodb_keys_requested_total")

    fetcher.enrich(streams_for(["https://t"]), names)
    assert requested() == 2
    clock.now += 11  # the short item expired, the default one has not
    fetcher.enrich(streams_for(["https://t"]), names)
    assert requested() == 3
    clock.now += 95  # now the default one expired too, the short one was re-read 95 s ago
    fetcher.enrich(streams_for(["https://t"]), names)
    assert requested() == 5


def test_concurrent_requests_read_each_key_once(
    dynamodb: Any, table: str, metrics: Metrics
) -> None:
    urls = [f"https://hot/{n}" for n in range(50)]
    seed_features(dynamodb, table, urls, NAMES)
    fetcher = make_fetcher(make_settings(FEATURES_TABLE=table), metrics)
    barrier = threading.Barrier(16)

    def one_request() -> list[dict[str, Any]]:
        streams = streams_for(urls)
        barrier.wait()
        fetcher.enrich(streams, NAMES)
        return streams

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: one_request(), range(16)))

    assert all(r == results[0] for r in results)
    assert all(len(s) == 4 for s in results[0])
    assert sample(metrics, "scorer_dynamodb_keys_requested_total") == 150
    lookups = 16 * 150
    hits = sample(metrics, "scorer_feature_cache_hits_total", kind="stream", result="value")
    misses = sum(
        sample(metrics, "scorer_feature_cache_misses_total", kind="stream", result=result)
        for result in ("fetched", "coalesced")
    )
    assert hits + misses == lookups


def test_key_dynamodb_would_refuse_costs_the_other_streams_nothing(
    dynamodb: Any, table: str, metrics: Metrics
) -> None:
    seed_features(dynamodb, table, ["https://ok"], NAMES)
    fetcher = make_fetcher(make_settings(FEATURES_TABLE=table), metrics)
    streams = streams_for(["https://ok", "https://" + "x" * 3000])

    assert fetcher.enrich(streams, NAMES) is False

    assert streams[0]["f1"] == "https://ok|f1"
    assert set(streams[1]) == {"streamUrl"}
    assert (
        sample(metrics, "scorer_feature_cache_misses_total", kind="stream", result="invalid") == 3
    )


def test_unreachable_store_degrades_instead_of_failing(metrics: Metrics) -> None:
    settings = make_settings(FEATURES_TABLE="features", DYNAMODB_MAX_ATTEMPTS=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on discard
        fetcher = make_fetcher(settings, metrics)
    streams = streams_for(["https://a"])

    assert fetcher.enrich(streams, NAMES) is True

    assert streams == [{"streamUrl": "https://a"}]
    assert sample(metrics, "scorer_degraded_requests_total", reason="error") == 1
    assert fetcher.cache.size_unlocked() == 0  # a failure is not cached as "absent"


def test_client_values_named_like_features_never_reach_the_model(
    dynamodb: Any, table: str, metrics: Metrics
) -> None:
    seed_features(dynamodb, table, ["https://known"], ["f1"])  # f2 and f3: not in the table
    fetcher = make_fetcher(make_settings(FEATURES_TABLE=table), metrics)

    def sent() -> list[dict[str, Any]]:
        return [
            {"streamUrl": "https://known", "f1": "client", "f2": "client", "tag": "kept"},
            {"streamUrl": "https://unknown", "f1": "client", "tag": "kept"},
            {"streamUrl": "https://" + "x" * 3000, "f3": "client"},  # never looked up
        ]

    for _ in range(2):  # read from the store, then from the cache
        streams = sent()
        fetcher.enrich(streams, NAMES)
        assert streams == [
            {"streamUrl": "https://known", "f1": "https://known|f1", "tag": "kept"},
            {"streamUrl": "https://unknown", "tag": "kept"},
            {"streamUrl": "https://" + "x" * 3000},
        ]


def test_client_values_named_like_features_are_dropped_when_the_store_fails(
    metrics: Metrics,
) -> None:
    settings = make_settings(FEATURES_TABLE="features", DYNAMODB_MAX_ATTEMPTS=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on discard
        fetcher = make_fetcher(settings, metrics)
    streams = [{"streamUrl": "https://a", "f1": "client", "tag": "kept"}]

    assert fetcher.enrich(streams, NAMES) is True

    assert streams == [{"streamUrl": "https://a", "tag": "kept"}]


def test_a_feature_named_streamurl_never_drops_the_stream_url(metrics: Metrics) -> None:
    fetcher = make_fetcher(make_settings(FEATURES_TABLE="features"), metrics, pool=RefusingPool())
    streams = streams_for(["https://a"])

    fetcher.enrich(streams, ["streamUrl", "f1"])

    assert streams == [{"streamUrl": "https://a"}]


class RefusingPool:
    """A pool that cannot start a thread, as when the process is out of them."""

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("can't start new thread")


def test_a_pool_that_refuses_work_degrades_without_poisoning_keys(metrics: Metrics) -> None:
    fetcher = make_fetcher(make_settings(FEATURES_TABLE="features"), metrics, pool=RefusingPool())

    assert fetcher.enrich(streams_for(["https://a"]), NAMES) is True
    assert len(fetcher.inflight) == 0  # the next request tries again instead of waiting in vain
