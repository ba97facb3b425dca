"""Start the local AWS emulator (moto server) and fill it: bucket, features table, models."""

import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from procs import free_port, start_process, stop_process, wait_http

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for examples/
from examples.local_stack import create_features_table as create_table
from examples.local_stack import put_features

BUCKET = "bench-models"
TABLE = "features"
REGION = "us-east-1"
STREAM_FEATURES = ("f1", "f2", "f3")


def aws_env(endpoint: str) -> dict[str, str]:
    """Return the AWS_* variables that point a client at the emulator."""
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return {"AWS_ENDPOINT_URL": endpoint, **keys, "AWS_DEFAULT_REGION": REGION}


@contextmanager
def emulated(log_dir: Path, pool: int, seed_python: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run moto holding the features and every benchmark model; yield its URL and the models.

    The models are pickled by the seed venv's python (its cloudpickle), so both services load
    the very same bytes; without the seed venv the project's own will do.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    # moto records requests (see KeyCount) to this file, in its working directory by default.
    env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(log_dir / "moto-recording.jsonl")}
    proc = start_process(cmd, env=env, log_path=log_dir / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{endpoint}/moto-api/", timeout=60, proc=proc)
        with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
            pickler = seed_python if seed_python.exists() else Path(sys.executable)
            cmd = [str(pickler), str(Path(__file__).with_name("models.py")), tmp]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            described = json.loads(done.stdout.strip().splitlines()[-1])
            create_features_table(endpoint, pool)
            paths = upload_models(endpoint, Path(tmp))
        yield endpoint, {"paths": paths, "described": described}
    finally:
        stop_process(proc)


def client(service: str, endpoint: str) -> Any:
    """Build a boto3 client for the emulator."""
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **keys)  # type: ignore[call-overload]


class KeyCount:
    """Count the DynamoDB keys each call asks the emulator for, from moto's request recording.

    The seed exposes no metrics, so both services' reads are counted on the emulator's side.
    """

    def __init__(self, endpoint: str) -> None:
        self.recorder = f"{endpoint}/moto-api/recorder"

    def post(self, *actions: str) -> None:
        """Tell the recorder to do each action in turn."""
        for action in actions:
            request = urllib.request.Request(f"{self.recorder}/{action}", method="POST")
            urllib.request.urlopen(request, timeout=10).close()

    def reset(self) -> None:
        """Forget what was recorded and record from now on."""
        self.post("stop-recording", "reset-recording", "start-recording")

    def stop(self) -> None:
        """Stop recording: every request would cost moto a write to the file."""
        self.post("stop-recording")

    def snapshot(self) -> dict[str, Any]:
        """Return the calls, the keys requested and the distinct keys since the last reset."""
        with urllib.request.urlopen(f"{self.recorder}/download-recording") as response:
            lines = response.read().decode().splitlines()
        calls, keys = 0, Counter[str]()
        for entry in map(json.loads, lines):
            target = entry["headers"].get("X-Amz-Target", "")
            body = base64.b64decode(entry["body"]) if entry["body_encoded"] else entry["body"]
            if target.endswith(".BatchGetItem"):
                tables = json.loads(body)["RequestItems"].values()
                found = [key for table in tables for key in table["Keys"]]
            elif target.endswith(".GetItem"):
                found = [json.loads(body)["Key"]]
            else:
                continue
            calls += 1
            keys.update(json.dumps(key, sort_keys=True) for key in found)
        return {"calls": calls, "keys_requested": keys.total(), "unique_keys": len(keys)}


def stream_url(i: int) -> str:
    """Name the i-th stream of the warm pool."""
    return f"https://example.com/s/{i}"


USERS = 64  # the warm bodies' user ids, u0..u63 (bench/load.py's BODIES)
HISTORY_STREAMS = 50


def create_features_table(endpoint: str, pool_size: int) -> None:
    """Create the features table: f1..f3 for every stream of the warm pool, the warm users'
    features and history, and two global features (the history model reads them)."""
    ddb = client("dynamodb", endpoint)
    create_table(ddb, TABLE)
    ttl = {"cache_ttl_in_seconds": {"N": "3600"}}
    streams = (
        (stream_url(i), f, {"value": {"N": str(round((i % 97) * 0.01 + n, 3))}, **ttl})
        for i in range(pool_size)
        for n, f in enumerate(STREAM_FEATURES)
    )
    put_features(ddb, TABLE, streams)
    users = []  # each warm user's u1..u3 and 50-stream watch history (of pool streams)
    for k in range(USERS):
        users += [(f"u{k}", f"u{n}", {"value": {"N": str(k + n)}}) for n in (1, 2, 3)]
        history = [{"S": stream_url((k * 7 + i) % pool_size)} for i in range(HISTORY_STREAMS)]
        users.append((f"u{k}", "watched", {"value": {"L": history}}))
    put_features(ddb, TABLE, users, prefix="USER#")
    put_features(ddb, TABLE, [("", g, {"value": {"N": "1"}}) for g in ("g1", "g2")], "GLOBAL")


def upload_models(endpoint: str, model_dir: Path) -> dict[str, str]:
    """Upload each NAME.pkl to the bucket; return NAME -> s3:// path."""
    s3 = client("s3", endpoint)
    s3.create_bucket(Bucket=BUCKET)
    pkls = sorted(model_dir.glob("*.pkl"))
    for pkl in pkls:
        s3.upload_file(str(pkl), BUCKET, f"models/{pkl.name}")
    return {pkl.stem: f"s3://{BUCKET}/models/{pkl.name}" for pkl in pkls}


def time_batch_gets(endpoint: str, keys: int, count: int = 25) -> dict[str, float]:
    """Median ms for the emulator to answer `keys` fresh keys: sequential and parallel chunks.

    This is the floor under any service's cold request: what the emulator alone costs.
    """
    ddb = client("dynamodb", endpoint)
    timings: dict[str, list[float]] = {"sequential": [], "parallel": []}

    def get(chunk: list[dict[str, Any]]) -> None:
        ddb.batch_get_item(RequestItems={TABLE: {"Keys": chunk}})

    with ThreadPoolExecutor(8) as pool:
        for _ in range(count):
            for name, mapper in (("sequential", map), ("parallel", pool.map)):
                tag = uuid.uuid4().hex[:12]
                pks = [f"STREAM#https://example.com/c/{tag}/{i // 3}" for i in range(keys)]
                wanted = [
                    {"pk": {"S": pk}, "sk": {"S": STREAM_FEATURES[i % 3]}}
                    for i, pk in enumerate(pks)
                ]
                chunks = [wanted[i : i + 100] for i in range(0, len(wanted), 100)]
                start = time.perf_counter()
                list(mapper(get, chunks))
                timings[name].append((time.perf_counter() - start) * 1000)
    medians = {f"{name}_ms": round(statistics.median(ms), 2) for name, ms in timings.items()}
    return {"keys": keys, **medians}
