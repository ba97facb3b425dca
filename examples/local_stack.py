"""A local AWS emulator (moto in server mode) holding a model in S3 and features in DynamoDB.

The service talks to it exactly as to AWS, over HTTP through boto3; only AWS_ENDPOINT_URL differs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

import boto3

REGION = "us-east-1"
EMULATOR_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_emulator(port: int, log: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start moto in server mode on 127.0.0.1:port and wait until it answers."""
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **EMULATOR_ENV},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the emulator did not answer within 30 s")


def emulator_env(port: int) -> dict[str, str]:
    """Return the environment that points boto3 at the emulator."""
    return {**EMULATOR_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}


def aws_client(service: str, port: int) -> Any:
    """Return a boto3 client for the emulator."""
    env = emulator_env(port)
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def create_features_table(dynamodb: Any, table: str) -> None:
    """Create the seed service's feature table: `pk` (hash) and `sk` (range), both strings."""
    dynamodb.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


def put_features(
    dynamodb: Any,
    table: str,
    items: Iterable[tuple[str, str, Mapping[str, Any]]],
    prefix: str = "STREAM#",
) -> None:
    """Write (streamUrl, feature, attributes) items; attributes are low-level DynamoDB values."""
    batch: list[dict[str, Any]] = []
    for url, name, attributes in items:
        item = {"pk": {"S": prefix + url}, "sk": {"S": name}, **attributes}
        batch.append({"PutRequest": {"Item": item}})
        if len(batch) == 25:
            dynamodb.batch_write_item(RequestItems={table: batch})
            batch = []
    if batch:
        dynamodb.batch_write_item(RequestItems={table: batch})


def upload_model(s3: Any, bucket: str, key: str, data: bytes) -> str:
    """Store model bytes in a new bucket and return their s3:// path."""
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"
