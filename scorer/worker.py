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
from scorer.cache import FeatureCache
from scorer.eventlog import EventLog
from scorer.features import FeatureFetcher
from scorer.metrics import Metrics
from scorer.poller import ModelPoller
from scorer.reload import ModelReloader
from scorer.scoring import Scorer
from scorer.source import source_for
from scorer.store import FeatureStore, make_client
from scorer.watchdog import Retire


def build_fetcher(
    settings: Settings, metrics: Metrics, botocore_data: Any = None
) -> FeatureFetcher:
    """Create one worker's feature cache, DynamoDB client and fetch pool."""
    pool_size = settings.fetch_threads
    client = make_client(settings, max(pool_size, settings.threads), botocore_data)
    return FeatureFetcher(
        FeatureCache(settings.cache_maxsize, settings.cache_max_bytes),
        FeatureStore(client, settings, metrics),
        ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="features"),
        metrics,
        stream_pk_prefix=settings.stream_pk_prefix,
        timeout=settings.feature_timeout_seconds,
    )


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
