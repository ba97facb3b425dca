"""Memory one worker's feature cache takes when clients send long unknown stream URLs.

In process, no HTTP: each request goes through FeatureFetcher.enrich as in a worker (the
worker's own fetcher and cache from `build_fetcher`, default settings unless given), with a store
that answers every key "not in the table", as DynamoDB does for a made-up URL. So the cache ends
up holding what it would after that many such requests inside ABSENT_TTL_SECONDS.

Two fresh processes: one reads the growth of its RSS, the other the bytes tracemalloc sees
allocated and still held (exact for Python objects, but it slows allocation and costs memory of
its own, so it does not run where RSS is read). Prints one JSON object.

    .venv/bin/python bench/cache_memory.py [--requests 60] [--streams 1000] [--url-bytes 2040]
        [--features 1] [--env CACHE_MAX_BYTES=...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # the client is built, never called
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

MiB = 1024 * 1024


class AbsentStore:
    """Answer every key as not in the table, like DynamoDB for URLs nobody stored."""

    def __init__(self, absent_ttl: float) -> None:
        self._ttl = absent_ttl

    def fetch_chunk(self, keys: Sequence[tuple[str, str]], deadline: float) -> dict[Any, Any]:
        from scorer.features.cache import ABSENT, Entry

        return {key: Entry(ABSENT, self._ttl) for key in keys}


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fill(args: argparse.Namespace) -> dict[str, Any]:
    """Send the requests through a worker's fetcher; return what the cache and process hold."""
    from config import Settings
    from scorer.metrics import Metrics
    from scorer.worker import build_fetcher

    # A generous budget: under tracemalloc, chunks would otherwise time out and go uncached.
    overrides = {"FEATURE_TIMEOUT_SECONDS": "60", **dict(item.split("=", 1) for item in args.env)}
    settings = Settings(_env_file=None, S3_MODEL_PATH="s3://bench/m.pkl", **overrides)  # type: ignore[arg-type]
    fetcher = build_fetcher(settings, Metrics())
    fetcher._store = AbsentStore(settings.absent_ttl_seconds)  # type: ignore[assignment]
    names = [f"feature_{n}" for n in range(args.features)]
    prefix = "https://streams.example.com/"
    pad = args.url_bytes - len(prefix) - 12

    def request(number: int) -> None:
        urls = (
            f"{prefix}{n:012d}{'x' * pad}"
            for n in range(number * args.streams, (number + 1) * args.streams)
        )
        fetcher.enrich([{"streamUrl": url} for url in urls], names)

    request(0)  # first use: imports, the pool's threads, botocore's lazy parts
    gc.collect()
    if args.mode == "trace":
        tracemalloc.start()
    before_rss, features_before = rss_bytes(), len(fetcher.cache)
    for number in range(1, args.requests + 1):
        request(number)
    gc.collect()
    result = {
        "features cached": len(fetcher.cache),
        "features added": len(fetcher.cache) - features_before,
        "rss added MiB": round((rss_bytes() - before_rss) / MiB, 1),
    }
    estimate = getattr(fetcher.cache, "bytes_unlocked", None)
    if estimate is not None:
        with fetcher.cache.lock:
            result["cache estimate MiB"] = round(estimate() / MiB, 1)
    if args.mode == "trace":
        result["traced added MiB"] = round(tracemalloc.get_traced_memory()[0] / MiB, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--streams", type=int, default=1000, help="per request (MAX_STREAMS)")
    parser.add_argument("--url-bytes", type=int, default=2040)
    parser.add_argument("--features", type=int, default=1, help="the model's stream_features")
    parser.add_argument("--env", action="append", default=[], help="a setting, NAME=value")
    parser.add_argument("--mode", choices=["rss", "trace"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(fill(args)))
        return
    report: dict[str, Any] = {
        "requests": args.requests,
        "streams per request": args.streams,
        "url bytes": args.url_bytes,
        "features per stream": args.features,
        "settings": args.env,
    }
    for mode in ("rss", "trace"):
        out = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--mode", mode],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        report[mode] = json.loads(out)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
