"""The Flask app factory: routes on top of an injected Scorer, settings and model."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from flask import Flask, Response, request

from config import Settings
from scorer import __version__
from scorer.codec import encode
from scorer.errors import ModelNotLoaded, register_error_handlers
from scorer.eventlog.producer import ProducerFactory, build_event_log
from scorer.http.fastpath import UNMATCHED, ScoreEndpoint
from scorer.http.openapi import build_spec
from scorer.metrics import Metrics
from scorer.models.model import Model
from scorer.scoring import FetcherFactory, Scorer
from scorer.serving.shedding import Shedder
from scorer.serving.watchdog import Watchdog

JSON = "application/json"


def create_app(
    settings: Settings,
    model: Model | None,
    *,
    metrics: Metrics | None = None,
    fetcher_factory: FetcherFactory | None = None,
    producer_factory: ProducerFactory | None = None,
) -> Flask:
    """Build the app; per-worker resources are created later, by `init_worker` after fork."""
    if fetcher_factory is None:
        from scorer.features.store import load_botocore_data
        from scorer.worker import build_enricher

        # Parsed here, in the master, only for a model that will read features.
        reads_features = model is not None and model.reads_features
        botocore_data = load_botocore_data() if reads_features else None
        fetcher_factory = functools.partial(build_enricher, botocore_data=botocore_data)
    metrics = metrics or Metrics()
    scorer = Scorer(settings, model, metrics, fetcher_factory)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["scorer"] = scorer
    register_error_handlers(app)
    requests_total = metrics.requests

    @app.after_request
    def _count(response: Response) -> Response:
        rule = request.url_rule
        requests_total.labels(rule.rule if rule else UNMATCHED, response.status_code).inc()
        return response

    @app.get("/")
    def root() -> Response:
        return _json({"message": "ML Scoring Service is running.", "model_name": _model_name()})

    @app.get("/health")
    def health() -> Response:
        if scorer.model is None:
            raise ModelNotLoaded("ML Model not loaded")
        sizes = scorer.cache_sizes
        return _json(
            {
                "status": "ok",
                "model_loaded": True,
                "cache_size": sizes["stream"],  # seed 0.1's name for the stream cache
                "stream_cache_size": sizes["stream"],
                "user_cache_size": sizes["user"],
                "global_cache_size": sizes["global"],
                "model_name": scorer.model.name,
                "stream_features": list(scorer.model.stream_features),
                "user_features": list(scorer.model.user_features),
                "global_features": list(scorer.model.global_features),
                "model_sha256": scorer.model.sha256,
                "model_version": scorer.model.version,
                "model_loaded_at": iso_utc(scorer.model.loaded_at),
            }
        )

    @app.get("/openapi.json")
    def openapi() -> Response:
        model = scorer.model
        if model is None:
            return _json(build_spec(__version__, []))
        return _json(
            build_spec(
                __version__,
                list(model.stream_features),
                list(model.user_features),
                list(model.global_features),
            )
        )

    @app.get("/metrics")
    def prometheus() -> Response:
        text, content_type = metrics.render()
        return Response(text, content_type=content_type)

    def _model_name() -> str | None:
        return scorer.model.name if scorer.model is not None else settings.model_name

    # /score, every method of it, bypasses Flask's per-request machinery (scorer/http/fastpath.py).
    watchdog = Watchdog(settings.timeout, metrics)
    app.extensions["scorer.watchdog"] = watchdog
    routes = frozenset(rule.rule for rule in app.url_map.iter_rules())
    shedder = build_shedder(settings)
    app.extensions["scorer.shedder"] = shedder  # the worker refuses on arrival by it too
    events = build_event_log(settings, metrics, producer_factory)  # producer: after fork
    app.extensions["scorer.events"] = events
    app.wsgi_app = ScoreEndpoint(  # type: ignore[method-assign]
        app.wsgi_app, scorer, metrics, settings.max_body_bytes, watchdog, routes, shedder, events
    )
    return app


def build_shedder(settings: Settings) -> Shedder | None:
    """Return the load-shedding policy the settings ask for (None: SHEDDING is off)."""
    if not settings.shedding:
        return None
    return Shedder(
        settings.shed_queue_target_ms / 1000,
        settings.shed_queue_interval_ms / 1000,
        settings.shed_max_queue_ms / 1000,
        warmup=settings.shed_warmup_seconds,
    )


def iso_utc(timestamp: float) -> str:
    """Return a Unix time as ISO 8601 in UTC, to the second: `2026-11-27T09:13:00Z`."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(value: object) -> Response:
    return Response(encode(value), mimetype=JSON)
