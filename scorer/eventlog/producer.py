"""One worker's Kafka producer of inference events: never slows or fails the request it logs.

As confluent-kafka's `examples/producer.py`: events go into librdkafka's bounded local queue
(`produce` never blocks; a full queue drops the event and counts it), delivery reports are
served by a poll thread of the worker's own, and the exiting worker flushes within a bound.
The producer is created after fork, like the DynamoDB client: its threads do not survive one.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from config import Settings
from scorer.eventlog.event import Trace, encode_event, is_logged
from scorer.metrics import Metrics
from scorer.payload import ScoreRequest

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often the poll thread serves reports and samples the queue length
WARN_EVERY_SECONDS = 30.0  # at most one warning per this about lost events: a dead broker
# fails every event, and a log line per event would cost more than the event

ProducerFactory = Callable[[dict[str, Any]], Any]


def producer_config(settings: Settings) -> dict[str, Any]:
    """Return librdkafka's configuration: the bounded queue, lz4, and the security settings."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": "scorer",
        "compression.type": "lz4",
        # A retry after a lost acknowledgement must not write the event twice.
        "enable.idempotence": True,
        "linger.ms": 20,  # batches of events, not a request per event
        "queue.buffering.max.messages": settings.kafka_queue_max_messages,
        "queue.buffering.max.kbytes": settings.kafka_queue_max_kbytes,
    }
    secrets = settings.kafka_secret_keys
    protocol = settings.kafka_security_protocol or ("SASL_SSL" if secrets else None)
    mechanism = settings.kafka_sasl_mechanism or ("SCRAM-SHA-512" if secrets else None)
    username = settings.kafka_sasl_username or secrets.get("KAFKA_WRITER_USER")
    password = settings.kafka_sasl_password
    if protocol:
        config["security.protocol"] = protocol
    if mechanism:
        config["sasl.mechanism"] = mechanism
    if username:
        config["sasl.username"] = username
    if password is not None:
        config["sasl.password"] = password.get_secret_value()
    elif "KAFKA_WRITER_PASSWORD" in secrets:
        config["sasl.password"] = secrets["KAFKA_WRITER_PASSWORD"]
    if settings.kafka_ssl_ca_location is not None:
        config["ssl.ca.location"] = str(settings.kafka_ssl_ca_location)
    elif "KAFKA_BROKER_CA_CERTIFICATE" in secrets:
        # In memory: the seed wrote it to /tmp, which a read-only root may not have.
        config["ssl.ca.pem"] = base64.b64decode(secrets["KAFKA_BROKER_CA_CERTIFICATE"]).decode()
    return config


class SentBody:
    """The answer's body, whose `close()` (gunicorn's, once the body is written) logs it."""

    __slots__ = ("_body", "_on_close")

    def __init__(self, body: bytes, on_close: Callable[[], None]) -> None:
        self._body = body
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter((self._body,))

    def close(self) -> None:
        self._on_close()


class EventLog:
    """The inference events of one worker: sampling, the producer, its poll thread, the flush."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        producer_factory: ProducerFactory = Producer,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._topic = settings.kafka_topic
        self._fraction = settings.kafka_fraction
        self._factory = producer_factory
        self._producer: Any = None
        self._pid = 0
        self._closed = False  # flushed on the way out: nothing is produced after
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None
        self._warned_at = -WARN_EVERY_SECONDS
        self._dropped = metrics.dropped

    def start(self) -> None:
        """Create this worker's producer and its poll thread (after fork, from `init_worker`).

        It does not wait for the brokers: the service starts while they are unreachable.
        """
        with self._lock:
            if self._producer is not None and self._pid == os.getpid():
                return
            config = producer_config(self.settings)
            config["on_delivery"] = self._on_delivery
            config["error_cb"] = self._on_error
            config["logger"] = logging.getLogger("scorer.kafka")  # librdkafka's, via poll
            self._producer = self._factory(config)
            self._pid = os.getpid()
            self._stopping.clear()
            self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
            self._poller.start()
        logger.info(
            "worker %d: inference events to topic %s at %s, fraction %g",
            self._pid,
            self._topic,
            self.settings.kafka_bootstrap_servers,
            self._fraction,
        )

    def trace(self, request: ScoreRequest, query: dict[str, str]) -> Trace | None:
        """Return a Trace for a request whose user is logged, else None."""
        if not is_logged(request.user.get("userid"), self._fraction):
            return None
        return Trace(request.user, request.playlist, query)

    def after_sent(self, body: bytes, trace: Trace) -> SentBody:
        """Return the response body that publishes the request's event once it is sent."""
        return SentBody(body, lambda: self.publish(trace))

    def publish(self, trace: Trace) -> None:
        """Encode and queue one event; whatever fails is counted and never raised."""
        if self._closed:
            self._dropped["unflushed"].inc()
            return
        try:
            if self._producer is None or self._pid != os.getpid():
                self.start()  # no post_fork hook ran (another server, a test's app)
            key, value = encode_event(trace)
        except Exception:
            logger.exception("inference event not encoded")
            self._dropped["encode"].inc()
            return
        try:
            self._producer.produce(self._topic, value, key)
        except BufferError:  # the bounded queue is full: the broker is slow or away
            self._dropped["queue_full"].inc()
            self._warn("queue full (%d events or %d KiB): dropping events", *self._bounds())
            return
        except Exception as exc:  # KafkaException (a fatal producer error), anything else
            self._dropped["error"].inc()
            self._warn("event refused by the producer: %s", exc)
            return
        self._metrics.events_queued.inc()

    def close(self, timeout: float | None = None) -> int:
        """Stop the poll thread and flush within `timeout` seconds; return the events left.

        What is left is counted as dropped (`unflushed`): the worker is about to exit.
        """
        producer = self._producer
        self._closed = True
        if producer is None or self._pid != os.getpid():
            return 0
        timeout = self.settings.kafka_flush_seconds if timeout is None else timeout
        self._stopping.set()
        if self._poller is not None:
            self._poller.join(POLL_SECONDS * 4)
        started = time.monotonic()
        left = int(producer.flush(timeout))
        self._metrics.event_queue.set(left)
        if left:
            self._dropped["unflushed"].inc(left)
            logger.warning(
                "worker %d exiting: %d inference events not flushed within %g s",
                self._pid,
                left,
                timeout,
            )
        else:
            logger.info(
                "worker %d: inference events flushed in %.2f s",
                self._pid,
                time.monotonic() - started,
            )
        self._producer = None
        return left

    def _poll(self) -> None:
        producer = self._producer
        while not self._stopping.is_set():
            try:
                producer.poll(POLL_SECONDS)
                self._metrics.event_queue.set(len(producer))
            except Exception:  # a callback's bug must not end delivery reports
                logger.exception("kafka poll failed")
                time.sleep(POLL_SECONDS)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._dropped["delivery"].inc()
            self._warn("event not delivered: %s", error)
            return
        self._metrics.events_delivered.inc()
        latency = message.latency()
        if latency is not None:
            self._metrics.event_delivery_duration.observe(latency)

    def _on_error(self, error: KafkaError) -> None:
        # Brokers down, authentication refused: librdkafka retries on its own; say it, not often.
        if error.fatal():
            logger.error("kafka producer failed for good: %s", error)
        else:
            self._warn("kafka: %s", error)

    def _bounds(self) -> tuple[int, int]:
        return self.settings.kafka_queue_max_messages, self.settings.kafka_queue_max_kbytes

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            logger.warning(message, *args)


def build_event_log(
    settings: Settings, metrics: Metrics, producer_factory: ProducerFactory | None = None
) -> EventLog | None:
    """Return the event log the settings ask for (None: KAFKA_BOOTSTRAP_SERVERS is unset)."""
    if settings.kafka_bootstrap_servers is None or settings.kafka_fraction == 0:
        return None
    return EventLog(settings, metrics, producer_factory or Producer)
