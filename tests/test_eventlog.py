"""The per-worker producer: events after the answer, nothing raised into a request, drops kept."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException
from flask import Flask

from config import SettingsError, load_settings
from scorer.app import create_app
from scorer.eventlog.producer import EventLog, producer_config
from scorer.metrics import Metrics
from scorer.models.model import validate_model
from tests import fakes
from tests.conftest import make_settings, sample

KAFKA = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "KAFKA_TOPIC": "events"}


@pytest.fixture
def producers() -> list[fakes.FakeProducer]:
    return []


@pytest.fixture
def logged_app(metrics: Metrics, producers: list[fakes.FakeProducer]) -> Flask:
    def factory(config: dict[str, Any]) -> fakes.FakeProducer:
        producers.append(fakes.FakeProducer(config))
        return producers[-1]

    settings = make_settings(**KAFKA, KAFKA_FRACTION=1, LOGS_FRACTION=0)
    model = validate_model(fakes.echo_model([]), "m.pkl")
    return create_app(settings, model, metrics=metrics, producer_factory=factory)


def score_body(userid: str | None = "u-1") -> dict[str, Any]:
    user = {} if userid is None else {"userid": userid}
    return {"user": user, "streams": [{"streamUrl": "https://s/1"}], "playlist": {}}


def test_the_event_is_produced_once_the_answer_is_sent(
    logged_app: Flask, producers: list[fakes.FakeProducer], metrics: Metrics
) -> None:
    response = logged_app.test_client().post("/score", json=score_body())
    assert response.status_code == 200
    assert not producers or not producers[0].produced  # the body is not sent yet

    response.close()  # the server has written the body

    [(topic, key, value)] = producers[0].produced
    assert (topic, key) == ("events", b"u-1")
    assert orjson.loads(value)["model_output"] == response.json
    assert sample(metrics, "scorer_events_queued_total") == 1


def test_requests_not_answered_200_or_without_user_have_no_event(
    logged_app: Flask, producers: list[fakes.FakeProducer]
) -> None:
    client = logged_app.test_client()
    for body in (score_body(None), {"user": {"userid": "u"}, "streams": [{"x": 1}]}):
        client.post("/score", json=body).close()
    client.post("/score", json={"user": {"userid": "u"}, "streams": []}).close()  # 200 {}

    assert all(not p.produced for p in producers)


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [(BufferError("Local: Queue full"), "queue_full"), (KafkaException("fatal"), "error")],
)
def test_a_refused_event_is_counted_and_the_answer_unchanged(
    logged_app: Flask,
    producers: list[fakes.FakeProducer],
    metrics: Metrics,
    refusal: BaseException,
    reason: str,
) -> None:
    client = logged_app.test_client()
    client.post("/score", json=score_body()).close()  # starts the producer
    producers[0].refuse = refusal

    response = client.post("/score", json=score_body())
    response.close()

    assert response.status_code == 200
    assert response.json is not None and response.json["user"] == {"userid": "u-1"}
    assert sample(metrics, "scorer_events_dropped_total", reason=reason) == 1
    assert sample(metrics, "scorer_events_queued_total") == 1


def test_delivery_reports_count_delivered_dropped_and_latency(metrics: Metrics) -> None:
    log = EventLog(make_settings(**KAFKA), metrics, fakes.FakeProducer)
    log.start()
    on_delivery = log._producer.config["on_delivery"]

    class Delivered:
        def latency(self) -> float:
            return 0.004

    on_delivery(None, Delivered())
    on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), Delivered())
    log.close(0)

    assert sample(metrics, "scorer_events_delivered_total") == 1
    assert sample(metrics, "scorer_events_dropped_total", reason="delivery") == 1
    assert sample(metrics, "scorer_event_delivery_seconds_bucket", le="0.005") == 1


def test_the_exit_flush_is_bounded_and_counts_what_it_left(metrics: Metrics) -> None:
    log = EventLog(make_settings(**KAFKA, KAFKA_FLUSH_SECONDS=3), metrics, fakes.FakeProducer)
    log.start()
    producer = log._producer
    producer.left_after_flush = 7

    assert log.close() == 7

    assert producer.flushed_with == 3
    assert sample(metrics, "scorer_events_dropped_total", reason="unflushed") == 7


def test_plaintext_by_default_with_a_bounded_lz4_queue() -> None:
    config = producer_config(
        make_settings(**KAFKA, KAFKA_QUEUE_MAX_MESSAGES=500, KAFKA_QUEUE_MAX_KBYTES=2048)
    )
    assert config["compression.type"] == "lz4"
    assert (config["queue.buffering.max.messages"], config["queue.buffering.max.kbytes"]) == (
        500,
        2048,
    )
    assert not {"security.protocol", "sasl.mechanism", "sasl.password"} & config.keys()


SECRET_KEYS = {
    "KAFKA_WRITER_USER": "writer",
    "KAFKA_WRITER_PASSWORD": "s3cret-pass",
    "KAFKA_BROKER_CA_CERTIFICATE": base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode(),
}


def test_the_seeds_secret_keys_give_sasl_ssl_with_scram_and_the_ca() -> None:
    config = producer_config(make_settings(**KAFKA, SECRET_KEYS=json.dumps(SECRET_KEYS)))
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("writer", "s3cret-pass")
    assert config["ssl.ca.pem"] == "-----BEGIN CERTIFICATE-----\n"


def test_explicit_settings_win_over_secret_keys() -> None:
    settings = make_settings(
        **KAFKA,
        SECRET_KEYS=json.dumps(SECRET_KEYS),
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="api-key",
        KAFKA_SASL_PASSWORD="api-secret",
        KAFKA_SSL_CA_LOCATION="/etc/ssl/certs/ca-certificates.crt",
    )
    config = producer_config(settings)
    assert (config["sasl.mechanism"], config["sasl.username"]) == ("PLAIN", "api-key")
    assert config["sasl.password"] == "api-secret"
    assert config["ssl.ca.location"] == "/etc/ssl/certs/ca-certificates.crt"
    assert "ssl.ca.pem" not in config
    assert "api-secret" not in repr(settings) and "s3cret-pass" not in repr(settings)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "b:9092"}, "set KAFKA_TOPIC too"),
        ({**KAFKA, "KAFKA_FLUSH_SECONDS": "10", "TIMEOUT": "5"}, "below TIMEOUT"),
        ({**KAFKA, "SECRET_KEYS": '{"KAFKA_WRITER_PASSWORD": "pw-xyz"'}, "content is not shown"),
        ({**KAFKA, "SECRET_KEYS": '{"KAFKA_WRITER_PASSWORD": "pw-xyz"}'}, "KAFKA_WRITER_USER"),
    ],
)
def test_event_log_settings_that_cannot_work_are_refused_without_the_secret(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("S3_MODEL_PATH", "s3://models/m.pkl")
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message) as refused:
        load_settings()
    assert "pw-xyz" not in str(refused.value)
