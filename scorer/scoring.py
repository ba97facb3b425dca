"""Score one request: fetch its features, preprocess, predict, encode; record what it cost.

The model is the team's own code, so everything it raises becomes the seed's 500
"Model prediction failed", with the traceback in the log, and never takes the worker down.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from config import Settings
from scorer.codec import encode
from scorer.errors import ModelFailed, ModelNotLoaded, NoModelOutput
from scorer.eventlog.event import Trace
from scorer.features.enrichment import Enricher, Extras
from scorer.logs import ClientText
from scorer.metrics import Metrics
from scorer.models.model import Model
from scorer.payload import ScoreRequest
from scorer.record import ScoreRecord

logger = logging.getLogger(__name__)

FetcherFactory = Callable[[Settings, Metrics, Model], Enricher]
"""Builds a worker's fetchers for the model it serves (after fork)."""


def request_params(model: Model, query: Mapping[str, str], extras: Extras | None) -> Any:
    """Return the params one request's model sees: a copy, with what this request adds.

    The shared params are read by every thread and never written. `globals` and
    `history_streams` are there only for a model that asks for them, as in seed 0.1.
    """
    params = model.params
    if not isinstance(params, Mapping):
        return params
    params = {**params, "query_params": dict(query)}
    if model.global_features:
        params["globals"] = extras.globals if extras else dict.fromkeys(model.global_features)
    if model.history is not None:
        params["history_streams"] = extras.history_streams if extras else []
    return params


def is_empty(output: Any) -> bool:
    """Tell whether the model gave nothing to return (None, or an empty container or array)."""
    if output is None:
        return True
    size = getattr(output, "size", None)  # numpy arrays: truthiness of a big array raises
    if isinstance(size, int) and hasattr(output, "shape"):
        return size == 0
    try:
        return len(output) == 0
    except TypeError:
        return False


class Scorer:
    """The model, the worker's feature fetcher and the metrics, behind one `score` call."""

    def __init__(
        self,
        settings: Settings,
        model: Model | None,
        metrics: Metrics,
        fetcher_factory: FetcherFactory,
    ) -> None:
        self.settings = settings
        self.model = model
        self.metrics = metrics
        self._fetcher_factory = fetcher_factory
        self._fetcher: Enricher | None = None
        self._fetcher_pid = 0
        self._init_lock = threading.Lock()

    def init_worker(self) -> None:
        """Publish the model info, create the DynamoDB client, pool and cache (after fork).

        A model that reads no features needs none of them, nor any AWS configuration.
        """
        self.publish_model_info()
        if self.model is None or not self.model.reads_features:
            return
        with self._init_lock:
            if self._fetcher is None or self._fetcher_pid != os.getpid():
                self._fetcher = self._fetcher_factory(self.settings, self.metrics, self.model)
                self._fetcher_pid = os.getpid()
                logger.info("worker %d: feature store client and cache ready", self._fetcher_pid)

    def publish_model_info(self) -> None:
        """Set the model info gauge for this process.

        In workers only: a series set by the master would stay until the master exits. The
        gauge is `livemax`: live workers' equal series merge into one, an exited worker's goes.
        """
        if self.model is not None:
            model = self.model
            labels = (model.name, model.sha256, ",".join(model.stream_features), model.version)
            self.metrics.model_info.labels(*labels).set(1)

    @property
    def fetcher(self) -> Enricher:
        """Return this process's fetcher, creating it if the post-fork hook did not run."""
        if self._fetcher is None or self._fetcher_pid != os.getpid():
            self.init_worker()
        assert self._fetcher is not None
        return self._fetcher

    @property
    def cache_sizes(self) -> dict[str, int]:
        """Return the entries (features) in each of this worker's feature caches, by kind."""
        if self._fetcher is None:
            return {"stream": 0, "user": 0, "global": 0}
        return self._fetcher.fetchers.sizes()

    def score(
        self,
        request: ScoreRequest,
        query: Mapping[str, str],
        record: ScoreRecord | None = None,
        *,
        trace: Trace | None = None,
    ) -> bytes:
        """Return the model's JSON output for one checked request; fill `record` and `trace`
        (the inference event's input and output) if given."""
        model = self.model
        if model is None:
            raise ModelNotLoaded("ML Model not loaded")
        if not request.streams:
            return b"{}"
        stage = self.metrics.stage
        started = time.perf_counter()
        if record is None:
            record = ScoreRecord()
        extras = self.fetcher.enrich(model, request, record) if model.reads_features else None
        if self.settings.logs_fraction and random.random() < self.settings.logs_fraction:
            userid = ClientText(request.user.get("userid", ""))
            logger.info("user %s streams: %s", userid, ClientText(request.streams))
        params = request_params(model, query, extras)
        record.streams_scored = len(request.streams)
        t_features = time.perf_counter()
        if trace is not None:
            trace.keep_input(request.user, request.streams)
        try:
            model_input = model.preprocess(request.user, request.streams, request.playlist, params)
            t_preprocess = time.perf_counter()
            output = model.predict(model_input, params)
        except Exception:
            logger.exception("Model prediction failed")
            raise ModelFailed("Model prediction failed") from None
        t_predict = time.perf_counter()
        if is_empty(output):
            raise NoModelOutput("No model output generated")
        try:
            body = encode(output)
        except TypeError:
            logger.exception("model output cannot be encoded as JSON")
            raise ModelFailed("Model prediction failed") from None
        t_serialize = time.perf_counter()
        record.preprocess_ms = (t_preprocess - t_features) * 1000
        record.predict_ms = (t_predict - t_preprocess) * 1000
        stage["features"].observe(t_features - started)
        stage["preprocess"].observe(t_preprocess - t_features)
        stage["predict"].observe(t_predict - t_preprocess)
        stage["serialize"].observe(t_serialize - t_predict)
        if trace is not None:
            marks = (started, t_features, t_preprocess, t_predict, t_serialize)
            trace.keep_output(model, body, record, marks)
        return body
