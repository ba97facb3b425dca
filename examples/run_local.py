"""`make run`: the real service against a local emulator holding the example model and features.

With KAFKA=1 (`make run KAFKA=1`), tansu too, on 127.0.0.1:9092: every user's events go there.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys

from examples import model
from examples.local_kafka import create_topic, start_tansu
from examples.local_stack import (
    aws_client,
    create_features_table,
    emulator_env,
    free_port,
    put_features,
    start_emulator,
    upload_model,
)

TABLE = "features"
KAFKA_PORT = 9092
TOPIC = "inference-events"
STREAMS = [f"https://streams.example.com/live/{n}" for n in range(1, 101)]


def seed(port: int) -> str:
    """Put the example model in S3; in DynamoDB, three features per example stream, a user
    (`viewer-1`: an affinity and a watch history of 10 streams) and the global boost."""
    dynamodb = aws_client("dynamodb", port)
    create_features_table(dynamodb, TABLE)
    put_features(
        dynamodb,
        TABLE,
        (
            (url, name, {"value": {"N": str(value)}})
            for n, url in enumerate(STREAMS, start=1)
            for name, value in zip(model.FEATURES, (n * 37 % 1000, n % 5, n % 7 / 7), strict=True)
        ),
    )
    history = {"L": [{"S": url} for url in STREAMS[10:20]]}
    put_features(
        dynamodb,
        TABLE,
        [
            ("viewer-1", "affinity", {"value": {"S": '{"quality": 0.25}'}}),
            ("viewer-1", "watched", {"value": history}),
        ],
        prefix="USER#",
    )
    boost = struct.pack("<3f", 1.0, 1.0, 2.0)
    put_features(dynamodb, TABLE, [("", "boost", {"value": {"B": boost}})], prefix="GLOBAL")
    return upload_model(aws_client("s3", port), "scorer-models", "example-model.pkl", model.dumps())


def main() -> int:
    port = int(os.environ.get("EMULATOR_PORT") or free_port())
    emulator = start_emulator(port)
    broker = start_tansu(KAFKA_PORT) if os.environ.get("KAFKA") == "1" else None
    try:
        model_path = seed(port)
        service_port = os.environ.get("PORT", "8000")
        body = {
            "user": {"userid": "viewer-1"},
            "streams": [{"streamUrl": url} for url in STREAMS[:3]],
            "playlist": {"name": "home"},
        }
        print(f"Emulator on 127.0.0.1:{port}, model at {model_path}. Score with:\n", flush=True)
        print(
            f"  curl -s -X POST http://127.0.0.1:{service_port}/score "
            f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'\n",
            flush=True,
        )
        env = {
            **os.environ,
            **emulator_env(port),
            "S3_MODEL_PATH": model_path,
            "FEATURES_TABLE": TABLE,
            "HOST": os.environ.get("HOST", "127.0.0.1"),
            "PORT": service_port,
        }
        if broker is not None:
            bootstrap = f"127.0.0.1:{KAFKA_PORT}"
            create_topic(bootstrap, TOPIC)
            env.update(KAFKA_BOOTSTRAP_SERVERS=bootstrap, KAFKA_TOPIC=TOPIC, KAFKA_FRACTION="1")
            print(f"Kafka (tansu) on {bootstrap}, topic {TOPIC}: see README, Inference event log.")
        service = subprocess.Popen(["gunicorn", "-c", "gunicorn.conf.py"], env=env)
        # Stopping `make run` (Ctrl-C, or SIGTERM from a supervisor) stops gunicorn gracefully
        # and then the emulator: nothing is left running.
        signal.signal(signal.SIGTERM, lambda *_: service.send_signal(signal.SIGTERM))
        try:
            return service.wait()
        except KeyboardInterrupt:
            service.send_signal(signal.SIGTERM)
            return service.wait()
    finally:
        emulator.terminate()
        emulator.wait()
        if broker is not None:
            broker.terminate()
            broker.wait()


if __name__ == "__main__":
    sys.exit(main())
