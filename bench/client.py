"""Send individual requests from Python: samples, sequential latency, fixed counts, metrics."""

import contextlib
import http.client
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit


def connect(base: str, timeout: float) -> http.client.HTTPConnection:
    """Open an HTTP connection to the server at base (http://host:port)."""
    parts = urlsplit(base)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def post_score(base: str, body: bytes, timeout: float = 30.0) -> tuple[int, Any, float]:
    """POST body to base/score on a fresh connection; return status, parsed JSON, seconds."""
    with contextlib.closing(connect(base, timeout)) as conn:
        start = time.perf_counter()
        conn.request("POST", "/score", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        elapsed = time.perf_counter() - start
    try:
        data = json.loads(raw)
    except ValueError:
        data = raw.decode(errors="replace")
    return resp.status, data, elapsed


def send_all(
    base: str, bodies: list[bytes], threads: int = 8, keepalive: bool = True
) -> dict[str, int]:
    """Send every body once from a pool of threads; count statuses.

    With keepalive each thread keeps one connection (so one worker); without, every request
    opens a new one and the kernel spreads them over the workers.
    """
    counts: dict[str, int] = {}
    lock = threading.Lock()
    local = threading.local()

    def send(body: bytes) -> None:
        conn = local.conn = getattr(local, "conn", None) or connect(base, 30)
        try:
            conn.request("POST", "/score", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            key, reuse = str(resp.status), keepalive
        except (OSError, http.client.HTTPException) as exc:
            key, reuse = type(exc).__name__, False
        if not reuse:
            conn.close()
            local.conn = None
        with lock:
            counts[key] = counts.get(key, 0) + 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, bodies))
    return counts


def send_at_once(base: str, body: bytes, copies: int) -> list[int]:
    """Send copies of body together, released by a barrier; return the statuses."""
    barrier = threading.Barrier(copies)

    def send(_: int) -> int:
        barrier.wait(timeout=30)
        return post_score(base, body)[0]

    with ThreadPoolExecutor(copies) as pool:
        return list(pool.map(send, range(copies)))


_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(base: str) -> list[tuple[str, dict[str, str], float]]:
    """Return every sample of base/metrics as (name, labels, value); [] if it does not answer."""
    with contextlib.closing(connect(base, 10)) as conn:
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        except (OSError, http.client.HTTPException):
            return []
    samples = (_SAMPLE.match(line) for line in text.splitlines())
    return [(m[1], dict(_LABEL.findall(m[2] or "")), float(m[3])) for m in samples if m]


def read_metric(base: str, name: str) -> float | None:
    """Sum the samples of one Prometheus metric from base/metrics (None if absent)."""
    values = [value for sample, _, value in scrape(base) if sample == name]
    return sum(values) if values else None
