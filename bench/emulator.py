"""Start the local AWS emulator (moto server) and fill it: bucket, features table, models."""

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from procs import start_process, wait_http

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, for examples/
from examples.local_stack import create_features_table as create_table
from examples.local_stack import put_features

BUCKET = "bench-models"
TABLE = "features"
REGION = "us-east-1"
STREAM_FEATURES = ("f1", "f2", "f3")


def aws_env(endpoint: str) -> dict[str, str]:
    """Return the AWS_* variables that point a client at the emulator."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }


def start_emulator(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start moto in server mode on 127.0.0.1:port and wait until it answers."""
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = start_process(cmd, env=dict(os.environ), log_path=log_path)
    wait_http(f"http://127.0.0.1:{port}/moto-api/", timeout=60, proc=proc)
    return proc


def client(service: str, endpoint: str) -> Any:
    """Build a boto3 client for the emulator."""
    env = aws_env(endpoint)
    # boto3-stubs types client() per literal service name; this helper takes any name.
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def stream_url(i: int) -> str:
    """Name the i-th stream of the warm pool."""
    return f"https://example.com/s/{i}"


USERS = 64  # the warm bodies' user ids, u0..u63 (bench/load.py's BODIES)
HISTORY_STREAMS = 50


def user_items(pool_size: int) -> list[tuple[str, str, dict[str, Any]]]:
    """Three numbers and a 50-stream watch history (pool streams) per warm user."""
    items = []
    for k in range(USERS):
        items += [(f"u{k}", f"u{n}", {"value": {"N": str(k + n)}}) for n in (1, 2, 3)]
        history = [{"S": stream_url((k * 7 + i) % pool_size)} for i in range(HISTORY_STREAMS)]
        items.append((f"u{k}", "watched", {"value": {"L": history}}))
    return items


def create_features_table(endpoint: str, pool_size: int) -> None:
    """Create the features table: f1..f3 for every stream of the warm pool, the warm users'
    features and history, and two global features (the history model reads them)."""
    ddb = client("dynamodb", endpoint)
    create_table(ddb, TABLE)
    put_features(
        ddb,
        TABLE,
        (
            (
                stream_url(i),
                feature,
                {
                    "value": {"N": str(round((i % 97) * 0.01 + n, 3))},
                    "cache_ttl_in_seconds": {"N": "3600"},
                },
            )
            for i in range(pool_size)
            for n, feature in enumerate(STREAM_FEATURES)
        ),
    )
    put_features(ddb, TABLE, user_items(pool_size), prefix="USER#")
    put_features(ddb, TABLE, [("", g, {"value": {"N": "1"}}) for g in ("g1", "g2")], "GLOBAL")


def pickle_models(seed_python: Path, models_script: Path, out_dir: Path) -> dict[str, Any]:
    """Pickle the benchmark models with the seed venv's python and cloudpickle; describe them."""
    done = subprocess.run(
        [str(seed_python), str(models_script), str(out_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    described: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return described


def upload_models(endpoint: str, model_dir: Path) -> dict[str, str]:
    """Upload each NAME.pkl to the bucket; return NAME -> s3:// path."""
    s3 = client("s3", endpoint)
    s3.create_bucket(Bucket=BUCKET)
    paths = {}
    for pkl in sorted(model_dir.glob("*.pkl")):
        key = f"models/{pkl.name}"
        s3.upload_file(str(pkl), BUCKET, key)
        paths[pkl.stem] = f"s3://{BUCKET}/{key}"
    return paths


def time_batch_gets(endpoint: str, keys: int, count: int = 25) -> dict[str, float]:
    """Median ms for the emulator to answer `keys` fresh keys: sequential and parallel chunks.

    This is the floor under any service's cold request: what the emulator alone costs.
    """
    ddb = client("dynamodb", endpoint)
    sequential: list[float] = []
    parallel: list[float] = []
    with ThreadPoolExecutor(8) as pool:
        for _ in range(count):
            for timings, concurrent in ((sequential, False), (parallel, True)):
                tag = uuid.uuid4().hex[:12]
                wanted = [
                    {
                        "pk": {"S": f"STREAM#https://example.com/c/{tag}/{i // 3}"},
                        "sk": {"S": STREAM_FEATURES[i % 3]},
                    }
                    for i in range(keys)
                ]
                chunks = [wanted[i : i + 100] for i in range(0, len(wanted), 100)]

                def get(chunk: list[dict[str, Any]]) -> None:
                    ddb.batch_get_item(RequestItems={TABLE: {"Keys": chunk}})

                start = time.perf_counter()
                if concurrent:
                    list(pool.map(get, chunks))
                else:
                    for chunk in chunks:
                        get(chunk)
                timings.append((time.perf_counter() - start) * 1000)
    return {
        "keys": keys,
        "sequential_ms": round(statistics.median(sequential), 2),
        "parallel_ms": round(statistics.median(parallel), 2),
    }
