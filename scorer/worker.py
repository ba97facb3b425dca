"""Per-process resources, created in each worker after fork and never in the master.

A boto3 client and its connection pool, threads and locks do not survive fork(): created in the
master they would be shared by every worker's sockets and threads that no longer exist.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask

from config import Settings
from scorer.eventlog.producer import EventLog
from scorer.features.cache import FeatureCache
from scorer.features.enrichment import GLOBAL_PK, USER_PK_PREFIX, Enricher, Fetchers
from scorer.features.fetcher import FeatureFetcher
from scorer.features.store import FeatureStore, make_client
from scorer.metrics import Metrics
from scorer.models.model import Model
from scorer.models.poller import ModelPoller
from scorer.models.reload import ModelReloader
from scorer.models.source import source_for
from scorer.scoring import Scorer
from scorer.serving.watchdog import Retire


def byte_budgets(total: int, model: Model | None) -> dict[str, int]:
    """Split CACHE_MAX_BYTES between the caches a model uses (streams get it all in seed 0.1).

    Users are as many as streams but hold fewer features each; globals are a handful.
    """
    if model is None or not (model.user_features or model.global_features):
        return {"stream": total, "user": 0, "global": 0}
    user = total // 4 if model.user_features else 0
    everyone = total // 32 if model.global_features else 0
    return {"stream": total - user - everyone, "user": user, "global": everyone}


def build_enricher(
    settings: Settings, metrics: Metrics, model: Model | None = None, botocore_data: Any = None
) -> Enricher:
    """Create one worker's feature caches, DynamoDB client and fetch pool, shared by kind."""
    pool_size = settings.fetch_threads
    client = make_client(settings, max(pool_size, settings.threads), botocore_data)
    pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="features")
    versioned = frozenset(model.codecs) if model is not None else frozenset()
    budgets = byte_budgets(settings.cache_max_bytes, model)

    def fetcher(kind: str, prefix: str, maxsize: int) -> FeatureFetcher:
        return FeatureFetcher(
            FeatureCache(maxsize, budgets[kind]),
            FeatureStore(client, settings, metrics, prefix=prefix, versioned=versioned),
            pool,
            metrics,
            stream_pk_prefix=prefix,
            timeout=settings.feature_timeout_seconds,
            kind=kind,
        )

    fetchers = Fetchers(
        fetcher("stream", settings.stream_pk_prefix, settings.cache_maxsize),
        fetcher("user", USER_PK_PREFIX, settings.user_cache_maxsize),
        fetcher("global", GLOBAL_PK, settings.global_cache_maxsize),
    )
    return Enricher(
        fetchers,
        metrics,
        timeout=settings.feature_timeout_seconds,
        max_history=settings.max_history_streams,
    )


def build_fetcher(
    settings: Settings, metrics: Metrics, botocore_data: Any = None
) -> FeatureFetcher:
    """Create one worker's stream-feature fetcher alone (what bench/cache_memory.py measures)."""
    return build_enricher(settings, metrics, None, botocore_data).fetchers.stream


def init_worker(
    app: Flask,
    retire: Retire | None = None,
    *,
    master_pid: int | None = None,
    is_alive: Callable[[], bool] = lambda: True,
) -> None:
    """Create the worker's per-process resources; gunicorn's post_fork hook calls this.

    `retire` is how the watchdog retires this worker around a stuck request.
    """
    scorer: Scorer = app.extensions["scorer"]
    sys.setswitchinterval(scorer.settings.switch_interval_ms / 1000)
    scorer.init_worker()
    events: EventLog | None = app.extensions.get("scorer.events")
    if events is not None:
        events.start()
    app.extensions["scorer.watchdog"].start(retire)
    reloader: ModelReloader | None = app.extensions.get("scorer.reloader")
    settings = scorer.settings
    if reloader is not None and scorer.model is not None and settings.model_poll_seconds > 0:
        source = source_for(settings, connect_timeout=2, read_timeout=5, attempts=1)
        ModelPoller(
            source,
            settings.model_poll_seconds,
            reloader.run_dir,
            scorer.model.version,
            scorer.metrics,
            master_pid=os.getppid() if master_pid is None else master_pid,
            is_alive=is_alive,
        ).start()


def exit_worker(app: Flask) -> None:
    """Flush the worker's queued inference events; gunicorn's worker_exit hook calls this.

    Every way a worker ends passes here once its requests are done: stop, reload, recycling.
    """
    events: EventLog | None = app.extensions.get("scorer.events")
    if events is not None:
        events.close()
