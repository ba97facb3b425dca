"""Prometheus metrics, summed over every gunicorn worker in multiprocess mode.

`PROMETHEUS_MULTIPROC_DIR` must be set before `prometheus_client` is first imported
(gunicorn.conf.py does it); without it (unit tests) the metrics live in this process only.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
STAGES = ("features", "preprocess", "predict", "serialize")
CACHE_KINDS = ("stream", "user", "global")
"""The feature caches: a stream's features, a user's, and those shared by everyone."""
SHED_REASONS = ("queue", "queue_limit", "deadline", "disconnected")
"""Why a /score request was refused under overload (scorer/serving/shedding.py)."""
EVENT_DROP_REASONS = ("queue_full", "delivery", "encode", "error", "unflushed")
"""Why an inference event never reached Kafka (scorer/eventlog/producer.py)."""
DELIVERY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


class CacheMetrics(NamedTuple):
    """One cache's hot-path children, resolved once (.labels() takes a lock and a lookup)."""

    hits_value: Counter
    hits_absent: Counter
    misses_fetched: Counter
    misses_coalesced: Counter
    misses_invalid: Counter
    entries: Gauge
    bytes: Gauge
    decode_failures: Counter

    @classmethod
    def of(cls, metrics: Metrics, kind: str) -> CacheMetrics:
        hits, misses = metrics.cache_hits, metrics.cache_misses
        return cls(
            hits.labels(kind, "value"),
            hits.labels(kind, "absent"),
            misses.labels(kind, "fetched"),
            misses.labels(kind, "coalesced"),
            misses.labels(kind, "invalid"),
            metrics.cache_entries.labels(kind),
            metrics.cache_bytes.labels(kind),
            metrics.decode_failures.labels(kind),
        )


class Metrics:
    """Every metric the service exports, registered in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "scorer_requests", "HTTP requests answered.", ["endpoint", "status"], registry=r
        )
        self.request_duration = Histogram(
            "scorer_request_duration_seconds",
            "Time to answer a /score request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "scorer_stage_duration_seconds",
            "Time spent in each stage of a /score request.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "scorer_feature_cache_hits",
            "Feature lookups answered by the cache, by cache (kind: stream, user, global) and "
            "result (value, or absent from the table).",
            ["kind", "result"],
            registry=r,
        )
        self.cache_misses = Counter(
            "scorer_feature_cache_misses",
            "Feature lookups not in the cache, by cache (kind) and result (fetched by this "
            "request, coalesced onto a fetch in flight, or invalid key never sent).",
            ["kind", "result"],
            registry=r,
        )
        self.cache_entries = Gauge(
            "scorer_feature_cache_entries",
            "Entries in the feature caches of all live workers, by cache (kind).",
            ["kind"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_bytes = Gauge(
            "scorer_feature_cache_bytes",
            "Estimated bytes held by the feature caches of all live workers, by cache (kind).",
            ["kind"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.decode_failures = Counter(
            "scorer_feature_decode_failures",
            "Feature values a codec could not decode (the model got None), by cache (kind).",
            ["kind"],
            registry=r,
        )
        self.dynamodb_duration = Histogram(
            "scorer_dynamodb_request_duration_seconds",
            "Latency of one BatchGetItem call, retries by botocore included.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dynamodb_errors = Counter(
            "scorer_dynamodb_errors",
            "BatchGetItem calls that failed, by error.",
            ["error"],
            registry=r,
        )
        self.dynamodb_unprocessed_keys = Counter(
            "scorer_dynamodb_unprocessed_keys",
            "Keys DynamoDB returned as UnprocessedKeys (each retry counts again).",
            registry=r,
        )
        self.dynamodb_keys_requested = Counter(
            "scorer_dynamodb_keys_requested", "Keys sent in BatchGetItem calls.", registry=r
        )
        self.degraded_requests = Counter(
            "scorer_degraded_requests",
            "Requests scored without some features because the store failed or was too slow.",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "scorer_model_info",
            "The model this service scores with (value 1).",
            ["name", "sha256", "stream_features", "version"],
            registry=r,
            # One series per model over all live workers (liveall would add one per pid).
            multiprocess_mode="livemax",
        )
        self.model_reloads = Counter(
            "scorer_model_reloads",
            "Attempts to swap in a new model version (failure: refused, the current one kept).",
            ["result"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "scorer_model_loaded_timestamp_seconds",
            "Unix time the model now served was loaded (at start or by the last reload).",
            registry=r,
            # Set by the master only; the workers' zeros go with them (live*), max is the master's.
            multiprocess_mode="livemax",
        )
        self.model_poll_errors = Counter(
            "scorer_model_poll_errors",
            "Checks of the model's version that failed (retried the next period).",
            registry=r,
        )
        self.queue_delay = Histogram(
            "scorer_queue_delay_seconds",
            "Time a /score request waited for a worker thread.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests_shed = Counter(
            "scorer_requests_shed",
            "/score requests refused with 503 to stay within capacity, by reason.",
            ["reason"],
            registry=r,
        )
        self.inflight = Gauge(
            "scorer_inflight_requests",
            "/score requests a worker thread is answering, over all live workers.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.events_queued = Counter(
            "scorer_events_queued",
            "Inference events handed to a worker's Kafka producer queue.",
            registry=r,
        )
        self.events_delivered = Counter(
            "scorer_events_delivered", "Inference events the Kafka broker acknowledged.", registry=r
        )
        self.events_dropped = Counter(
            "scorer_events_dropped",
            "Inference events lost, by reason (queue_full: the bounded queue was full; delivery: "
            "refused by the broker or timed out; encode; error: refused by the producer; "
            "unflushed: still queued when the worker exited).",
            ["reason"],
            registry=r,
        )
        self.event_delivery_duration = Histogram(
            "scorer_event_delivery_seconds",
            "Time from queueing an inference event to the broker's acknowledgement.",
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.event_queue = Gauge(
            "scorer_event_queue_messages",
            "Inference events queued in the Kafka producers of all live workers, not yet acked.",
            registry=r,
            multiprocess_mode="livesum",
        )
        # Hot-path children resolved once: .labels() costs a lock and a dict lookup each call.
        self.stage = {stage: self.stage_duration.labels(stage) for stage in STAGES}
        self.caches = {kind: CacheMetrics.of(self, kind) for kind in CACHE_KINDS}
        stream = self.caches["stream"]  # what the stream-only code and its tests use
        self.hits_value, self.hits_absent = stream.hits_value, stream.hits_absent
        self.misses_fetched = stream.misses_fetched
        # Every result and reason exists from the start, so a dashboard shows 0, not no data.
        self.reloads_succeeded = self.model_reloads.labels("success")
        self.reloads_failed = self.model_reloads.labels("failure")
        self.shed = {reason: self.requests_shed.labels(reason) for reason in SHED_REASONS}
        self.dropped = {reason: self.events_dropped.labels(reason) for reason in EVENT_DROP_REASONS}

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text of all workers, with the derived hit ratio."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            # A fresh registry per scrape, as the client_python multiprocess docs prescribe.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            with directory_lock(Path(directory), exclusive=False):
                families = list(registry.collect())
        else:
            families = list(self.registry.collect())
        families.append(hit_ratio(families))
        return generate_latest(_Snapshot(families)), CONTENT_TYPE_LATEST


@contextmanager
def directory_lock(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Keep scrapes (shared) and the archiving of a dead worker (exclusive) apart."""
    with open(directory / ".lock", "a+b") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def archive_dead_worker(pid: int, directory: Path) -> None:
    """Fold an exited worker's counters and histograms into one archive file per type.

    client_python keeps a file per process forever; with worker recycling (MAX_REQUESTS) the
    directory, and every scrape's work, would grow without bound. Live gauges are dropped.
    """
    with directory_lock(directory, exclusive=True):
        multiprocess.mark_process_dead(pid, str(directory))
        for kind in ("counter", "histogram"):
            dead = directory / f"{kind}_{pid}.db"
            if not dead.exists():
                continue
            archive = MmapedDict(str(directory / f"{kind}_archive.db"))
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(dead)):
                    total, _ = archive.read_value(key)
                    archive.write_value(key, total + value, timestamp)
            finally:
                archive.close()
            dead.unlink()


def hit_ratio(families: list[Metric]) -> Metric:
    """Derive the cache hit ratio over all workers from the summed hit and miss counters."""
    totals = {"scorer_feature_cache_hits_total": 0.0, "scorer_feature_cache_misses_total": 0.0}
    for family in families:
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    hits = totals["scorer_feature_cache_hits_total"]
    lookups = hits + totals["scorer_feature_cache_misses_total"]
    return GaugeMetricFamily(
        "scorer_feature_cache_hit_ratio",
        "Share of feature lookups answered by the caches, over all workers and kinds.",
        value=hits / lookups if lookups else 0.0,
    )


class _Snapshot(Collector):
    """Metric families already collected, in the form generate_latest takes."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
