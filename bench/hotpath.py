"""Where a warm /score request spends its CPU inside the worker, stage by stage, in process.

No HTTP and no emulator: the cache is filled by hand, so only our own code and the model run.
Each figure is the minimum over 7 repeats of 2,000 calls (the least-disturbed run), in us.

    .venv/bin/python bench/hotpath.py
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
import timeit
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # the client is built, never called
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

import orjson

from config import Settings
from examples import model as example
from scorer.app import create_app
from scorer.codec import encode
from scorer.features.cache import ABSENT, Entry
from scorer.features.enrichment import GLOBAL_ID
from scorer.logs import FORMAT, ClientText, RecordFormatter
from scorer.models.model import build_model
from scorer.payload import parse_score_request

STREAMS = 30
LOG = "user %s streams: %s"  # the sampled request log's format (scorer/scoring.py)


def best_us(call: Callable[[], Any], number: int = 2000) -> float:
    """Return the fastest of 7 timings of `number` calls, per call, in microseconds."""
    return min(timeit.repeat(call, number=number, repeat=7)) / number * 1e6


def measure() -> dict[str, float]:
    """Time each stage of a warm 30-stream request, and the whole request through WSGI."""
    settings = Settings(_env_file=None, S3_MODEL_PATH="s3://bench/example.pkl", LOGS_FRACTION=0)  # type: ignore[call-arg]
    model = build_model(example.dumps(), "example.pkl")
    app = create_app(settings, model)
    scorer = app.extensions["scorer"]
    scorer.init_worker()
    stream, names = scorer.fetcher.fetchers.stream, model.stream_features
    urls = [f"https://streams.example.com/live/{n}" for n in range(STREAMS)]
    stream.cache.put_many(((url, name), Entry(1.0, 1e9)) for url in urls for name in names)
    body = orjson.dumps({"user": {"userid": "u"}, "streams": [{"streamUrl": u} for u in urls]})
    request = parse_score_request(body, settings.max_streams)
    stream.enrich(request.streams, names)
    per_url = Counter(urls)
    # The same streams again with list values (16 numbers each), which each stream gets a copy of.
    lists = [f"https://streams.example.com/vod/{n}" for n in range(STREAMS)]
    values = [float(i) for i in range(16)]
    stream.cache.put_many(((url, name), Entry(values, 1e9)) for url in lists for name in names)
    # The user's and the global features as cached "not in the table": no store call is made
    # (without these, every request would wait on a DynamoDB read that cannot succeed here).
    fetchers = scorer.fetcher.fetchers
    fetchers.user.cache.put_many(
        ((u, f), Entry(ABSENT, 1e9)) for u in ("u",) for f in model.user_features
    )
    fetchers.everyone.cache.put_many(
        ((GLOBAL_ID, f), Entry(ABSENT, 1e9)) for f in model.global_features
    )

    def run_model() -> None:
        rows = model.preprocess(request.user, request.streams, request.playlist, model.params)
        encode(model.predict(rows, model.params))

    # The sampled request log (LOGS_FRACTION of requests) as the handler formats it.
    args = (ClientText("u"), ClientText(request.streams))
    record = logging.LogRecord("scorer.scoring", logging.INFO, __file__, 0, LOG, args, None)
    formatter = RecordFormatter(FORMAT)

    def wsgi(**headers: str) -> None:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/score", "QUERY_STRING": ""}
        environ |= {"CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), **headers}
        b"".join(app(environ, lambda status, headers: None))

    # A client deadline that passed 10 s ago: refused (503) before the body is read.
    late = {"HTTP_X_REQUEST_TIMEOUT_MS": "250", "HTTP_X_REQUEST_START": f"t={time.time() - 10}"}
    return {
        "parse and check the body": best_us(lambda: parse_score_request(body, 1000)),
        "feature lookup (90 keys, warm)": best_us(lambda: stream.lookup(per_url, names)),
        "feature enrich (90 lists of 16 numbers, warm)": best_us(
            lambda: stream.enrich([{"streamUrl": url} for url in lists], names)
        ),
        "example model: preprocess, predict, encode": best_us(run_model),
        "sampled request log line (format only; 1% of requests)": best_us(
            lambda: formatter.format(record)
        ),
        "whole POST /score through WSGI (no HTTP)": best_us(wsgi),
        "a refused POST /score through WSGI (deadline passed; no HTTP)": best_us(
            lambda: wsgi(**late)
        ),
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
