"""The soak shape: the real service for minutes at a share of its capacity, workers recycling.

Ours (2 workers, MAX_REQUESTS so workers recycle, its own PROMETHEUS_MULTIPROC_DIR): capacity
with 8 kept-alive clients, closed loop; then open-loop Poisson arrivals (bench/openloop.c) at a
share of it, in back-to-back windows of SAMPLE_SECONDS. After each window: RSS and PSS of the
master and workers, the files in the metrics directory and the time of one /metrics scrape. It
fails if RSS grew RSS_GOAL or more after warm-up, the metrics directory kept growing, any
request failed, or the master died.
"""

import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openloop
from client import scrape, send_all
from load import make_body
from procs import memory_kib, worker_pids
from servers import Bench, Server, ServerSpec, running

SAMPLE_SECONDS = 10.0
RSS_GOAL = 0.05


def soak(
    bench: Bench, spec: ServerSpec, minutes: float, max_requests: int, load: float, streams: int
) -> dict[str, Any]:
    """Run ours at `load` x its capacity for `minutes`; sample memory and metrics as it goes."""
    minutes = 0.5 if bench.short else minutes
    rng = random.Random(7)  # each body: `streams` of the pool's first 100, as a small catalogue
    urls = [
        [f"https://example.com/s/{i}" for i in rng.sample(range(100), streams)] for _ in range(64)
    ]
    bodies = [(f"viewer-{n}", make_body(f"viewer-{n}", u)) for n, u in enumerate(urls)]
    raw = [body for _, body in bodies]
    scratch = Path(tempfile.mkdtemp(prefix="scorer-soak-"))
    metrics_dir = scratch / "metrics"
    env = (("MAX_REQUESTS", str(max_requests)), ("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir)))
    windows, samples = [], []
    with running(spec.using(env=(*spec.env, *env)), bench, log_dir=scratch) as server:
        closed_loop(server, raw, 2.0)  # fill both workers' caches
        capacity = closed_loop(server, raw, 2 * bench.seconds)
        rate = round(capacity * load, 1)
        print(f"[soak] capacity {capacity:.0f} req/s; open loop at {rate:.0f} req/s", flush=True)
        started = time.monotonic()
        samples.append(sample(server, metrics_dir, started))
        while time.monotonic() - started < minutes * 60:
            url = f"{server.base}/score"
            windows.append(openloop.run(url, bodies, rate, SAMPLE_SECONDS, 10.0, keep_samples=True))
            samples.append(sample(server, metrics_dir, started))
        master_alive = server.proc.poll() is None
    booted = (scratch / f"{spec.label}.log").read_text(errors="replace").count("Booting worker")
    # After warm-up, and only where every worker was up: a sample mid-recycle misses one.
    full = [x for x in samples if len(x["workers"]) == spec.workers]
    warmed = [x for x in full if x["t"] >= min(60, minutes * 20)] or full[-2:]
    latencies = sorted(v for w in windows for v in w.pop("ok_samples"))
    failures = {
        "non-2xx": sum(w["refused"] + sum(w["other_status"].values()) for w in windows),
        "timeouts": sum(w["timeouts"] for w in windows),
        "connection errors": sum(w["conn_errors"] for w in windows),
    }
    growth = {k: growth_of(warmed, k) for k in ("rss_kib", "pss_kib")}
    files = [x["metrics_files"] for x in warmed]
    result = {
        "minutes": minutes,
        "max_requests": max_requests,
        "load": load,
        "capacity_rps": capacity,
        "target_rps": rate,
        "requests": sum(w["sent"] for w in windows),
        "failed_requests": sum(failures.values()),
        "failures": failures,
        "generator_lag_p99_ms_max": max((w["lag_ms"]["p99"] or 0) for w in windows),
        "p50_ms": openloop.pct(latencies, 0.5),
        "p99_ms": openloop.pct(latencies, 0.99),
        "max_ms": openloop.pct(latencies, 1.0),
        "workers_replaced": max(0, booted - spec.workers),
        "rss_growth": growth["rss_kib"],
        "pss_growth": growth["pss_kib"],
        "files_bounded": files[-1] <= max(files[:2]) + 4,
        "master_alive_at_end": master_alive,
        "samples": samples,
    }
    result["achieved_rps"] = round(result["requests"] / (len(windows) * SAMPLE_SECONDS), 1)
    result["passed"] = growth["rss_kib"] < RSS_GOAL and result["files_bounded"] and master_alive
    result["passed"] = result["passed"] and not result["failed_requests"]
    result["failed"] = not result["passed"]
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1), flush=True)
    return result


def closed_loop(server: Server, bodies: list[bytes], seconds: float) -> float:
    """Return the 200s per second 8 back-to-back clients get, kept-alive, for about `seconds`."""
    started, scored = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        scored += send_all(server.base, bodies * 2).get("200", 0)
    return round(scored / (time.monotonic() - started), 1)


def growth_of(samples: list[dict[str, Any]], key: str) -> float:
    """Return the growth of one figure from the first two samples to the last two (medians)."""
    base = statistics.median(x[key] for x in samples[:2])
    return round((statistics.median(x[key] for x in samples[-2:]) - base) / base, 4)


def sample(server: Server, metrics_dir: Path, started: float) -> dict[str, Any]:
    """Measure the tree's memory, the metrics files and one scrape's time."""
    workers = worker_pids(server.proc.pid)
    memory = [memory_kib(pid) for pid in [server.proc.pid, *workers]]
    files = [p for p in metrics_dir.iterdir() if p.suffix == ".db"]
    scrape_started = time.monotonic()
    answered = bool(scrape(server.base))  # parsed too: what Prometheus would pay, near enough
    seconds = round(time.monotonic() - scrape_started, 4) if answered else -1.0
    return {
        "t": round(time.monotonic() - started, 1),
        "workers": workers,
        "rss_kib": sum(m["Rss"] for m in memory),
        "pss_kib": sum(m["Pss"] for m in memory),
        "metrics_files": len(files),
        "metrics_bytes": sum(p.stat().st_size for p in files if p.exists()),
        "scrape_seconds": seconds,
    }
