"""Fixtures: a moto emulator process over HTTP, feature tables, settings, the app and its client."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from config import Settings
from examples.local_kafka import create_topic, start_tansu
from examples.local_stack import (
    aws_client,
    create_features_table,
    emulator_env,
    free_port,
    put_features,
    start_emulator,
)
from scorer.app import create_app
from scorer.metrics import Metrics
from scorer.models.model import validate_model
from tests import fakes

_table_names = (f"features-{n}" for n in itertools.count())
_topic_names = (f"events-{n}" for n in itertools.count())


@pytest.fixture(scope="session")
def emulator() -> Iterator[int]:
    """Run moto in server mode for the whole session and point boto3 at it."""
    port = free_port()
    process = start_emulator(port)
    saved = dict(os.environ)
    os.environ.update(emulator_env(port))
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        yield port
    finally:
        os.environ.clear()
        os.environ.update(saved)
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Broker:
    """A tansu broker on 127.0.0.1, its process (to pause) and bootstrap address."""

    process: Any
    bootstrap: str

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Run tansu (memory storage) on a free 127.0.0.1 port for the whole session."""
    port = free_port()
    with (tmp_path_factory.mktemp("tansu") / "tansu.log").open("wb") as log:
        process = start_tansu(port, log)
    broker = Broker(process, f"127.0.0.1:{port}")
    try:
        yield broker
    finally:
        broker.resume()  # a test that paused it and failed
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def topic(kafka: Broker) -> str:
    """A fresh topic of two partitions."""
    name = next(_topic_names)
    create_topic(kafka.bootstrap, name)
    return name


@pytest.fixture
def dynamodb(emulator: int) -> Any:
    return aws_client("dynamodb", emulator)


@pytest.fixture
def table(dynamodb: Any) -> str:
    """A fresh, empty feature table."""
    name = next(_table_names)
    create_features_table(dynamodb, name)
    return name


def seed_features(dynamodb: Any, table: str, urls: list[str], names: list[str]) -> None:
    """Store value `url|name` for every url and feature name."""
    put_features(
        dynamodb, table, ((u, n, {"value": {"S": f"{u}|{n}"}}) for u in urls for n in names)
    )


def make_settings(**values: Any) -> Settings:
    """Settings from explicit values only (no `.env`, defaults otherwise)."""
    values.setdefault("S3_MODEL_PATH", "s3://models/test-model.pkl")
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(table: str) -> Settings:
    return make_settings(FEATURES_TABLE=table, LOGS_FRACTION=0)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def model_dict() -> dict[str, Any]:
    return fakes.echo_model()


@pytest.fixture
def app(settings: Settings, model_dict: dict[str, Any], metrics: Metrics) -> Flask:
    app = create_app(settings, validate_model(model_dict, "test-model.pkl"), metrics=metrics)
    app.extensions["scorer"].init_worker()
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """Return one sample of an in-process Metrics (0 when it was never set)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


def sample_value(metrics_text: str, name: str, labels: str = "") -> float:
    """Return the value of one sample in Prometheus text (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in metrics_text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


def counter_total(metrics_text: str, name: str) -> float:
    """Sum a counter over all its label sets."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rpartition(" ")[2])
    return total
