"""Soak test: the real service for minutes at ~70% of its capacity, with workers recycling.

    .venv/bin/python bench/soak.py [--minutes 5] [--max-requests 2000] [--load 0.7]

Starts moto and `gunicorn -c gunicorn.conf.py` (2 workers, MAX_REQUESTS so workers recycle),
measures capacity with a closed loop (--capacity-seconds), then runs an open loop at --load of
it for --minutes. Every 10 s it samples the RSS of master + workers (/proc), the files in
PROMETHEUS_MULTIPROC_DIR and the time of one /metrics scrape. Writes bench/results/soak-*.json
and prints a summary; exits 1 if RSS grew 5% or more after warm-up, the metrics directory kept
growing, or any request failed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.local_stack import emulator_env, free_port, start_emulator  # noqa: E402
from examples.run_local import STREAMS, TABLE, seed  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SAMPLE_SECONDS = 10.0
RSS_GOAL = 0.05
STREAMS_PER_REQUEST = 10


# --- the service ---------------------------------------------------------------------------
def start_service(emulator: int, port: int, max_requests: int, metrics_dir: Path, log: Path) -> Any:
    env = {
        **os.environ,
        **emulator_env(emulator),
        "S3_MODEL_PATH": seed(emulator),
        "FEATURES_TABLE": TABLE,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "MAX_REQUESTS": str(max_requests),
        "LOGS_FRACTION": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited at start:\n{log.read_text()}")
        if len(children(process.pid)) == 2:
            try:
                get(port, "/health")
                return process
            except OSError:
                pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"gunicorn did not start:\n{log.read_text()}")


def children(pid: int) -> list[int]:
    pids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids.extend(int(p) for p in (task / "children").read_text().split())
    except OSError:
        pass
    return sorted(pids)


def memory_kib(pid: int) -> tuple[int, int]:
    """Return (RSS, PSS) of one process in KiB, (0, 0) if it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def get(port: int, path: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"GET {path}: {response.status}")
        return body
    finally:
        connection.close()


# --- load ----------------------------------------------------------------------------------
def make_bodies(count: int = 64) -> list[bytes]:
    rng = random.Random(7)
    return [
        json.dumps(
            {
                "user": {"userid": f"viewer-{n}"},
                "streams": [{"streamUrl": u} for u in rng.sample(STREAMS, STREAMS_PER_REQUEST)],
                "playlist": {"name": "home"},
            }
        ).encode()
        for n in range(count)
    ]


class Client:
    """One kept-alive connection, reopened after any failure, as a pooled HTTP client does."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._connection: http.client.HTTPConnection | None = None
        self._used = False

    def post(self, body: bytes) -> str:
        """Send one /score request; return "ok", "http <status>" or the error's kind."""
        if self._connection is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self._used = False
        reused = self._used
        try:
            self._connection.request(
                "POST", "/score", body=body, headers={"Content-Type": "application/json"}
            )
            response = self._connection.getresponse()
            response.read()
            self._used = True
            if response.will_close:
                self.close()
            return "ok" if response.status == 200 else f"http {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            where = "reused connection" if reused else "new connection"
            return f"{type(exc).__name__} on {where}"

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def closed_loop(port: int, bodies: list[bytes], threads: int, seconds: float) -> float:
    """Return the requests per second `threads` back-to-back clients get through."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run() -> None:
        client, local = Client(port), Counter[str]()
        while time.monotonic() < stop:
            local[client.post(random.choice(bodies))] += 1
        client.close()
        with lock:
            outcomes.update(local)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes["ok"] / (time.monotonic() - started)


class OpenLoop:
    """Send requests at a fixed rate, whatever the answers' latency (no coordinated omission)."""

    def __init__(self, port: int, bodies: list[bytes], rate: float, threads: int) -> None:
        self.port, self.bodies, self.rate = port, bodies, rate
        self.outcomes: Counter[str] = Counter()
        self.latencies: list[float] = []  # from the scheduled send time, seconds
        self.behind = 0  # sends the client could not start on time (its own saturation)
        self._queue: queue.Queue[float | None] = queue.Queue()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work) for _ in range(threads)]

    def _work(self) -> None:
        client = Client(self.port)
        while (scheduled := self._queue.get()) is not None:
            outcome = client.post(random.choice(self.bodies))
            latency = time.monotonic() - scheduled
            with self._lock:
                self.outcomes[outcome] += 1
                self.latencies.append(latency)
        client.close()

    def run(self, seconds: float) -> None:
        for thread in self._threads:
            thread.start()
        start = time.monotonic()
        sent = 0
        while (now := time.monotonic()) < start + seconds:
            due = int((now - start) * self.rate) + 1
            if self._queue.qsize() > self.rate:  # more than a second of sends waiting
                self.behind += due - sent
                sent = due
            while sent < due:
                self._queue.put(start + sent / self.rate)
                sent += 1
            time.sleep(0.002)
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


# --- sampling ------------------------------------------------------------------------------
def sample(master: int, port: int, metrics_dir: Path, started: float) -> dict[str, Any]:
    workers = children(master)
    memory = [memory_kib(pid) for pid in [master, *workers]]
    files = [p for p in metrics_dir.iterdir() if p.suffix == ".db"]
    scrape_started = time.monotonic()
    try:
        scraped = get(port, "/metrics")
        scrape = time.monotonic() - scrape_started
    except OSError:
        scraped, scrape = b"", -1.0
    answered = sum(
        float(line.rpartition(b" ")[2])
        for line in scraped.splitlines()
        if line.startswith(b'scorer_requests_total{endpoint="/score"')
    )
    return {
        "t": round(time.monotonic() - started, 1),
        "workers": workers,
        "rss_kib": sum(rss for rss, _ in memory),
        "pss_kib": sum(pss for _, pss in memory),
        "metrics_files": len(files),
        "metrics_bytes": sum(p.stat().st_size for p in files if p.exists()),
        "scrape_seconds": round(scrape, 4),
        "score_requests_counted": answered,
    }


def sampler(master: int, port: int, metrics_dir: Path, stop: threading.Event, out: list[Any]):
    started = time.monotonic()
    while True:
        out.append(sample(master, port, metrics_dir, started))
        if stop.wait(SAMPLE_SECONDS):
            out.append(sample(master, port, metrics_dir, started))
            return


# --- main ----------------------------------------------------------------------------------
def summarize(result: dict[str, Any]) -> str:
    s = result["samples"]
    lines = [
        f"soak: {result['minutes']} min at {result['load']:.0%} of {result['capacity_rps']:.0f} "
        f"req/s (target {result['target_rps']:.0f}), MAX_REQUESTS={result['max_requests']}",
        f"requests sent {result['requests']} ({result['achieved_rps']:.0f} req/s), "
        f"failed {result['failed']} {result['failures']}, client behind {result['behind']}",
        f"latency p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms",
        f"workers replaced {result['workers_replaced']}",
        f"RSS master+workers {s[0]['rss_kib'] // 1024} MiB at start, "
        f"{result['rss_baseline_kib'] // 1024} MiB after warm-up, "
        f"{result['rss_end_kib'] // 1024} MiB at end: growth {result['rss_growth']:+.1%} "
        f"(goal < {RSS_GOAL:.0%}); PSS growth {result['pss_growth']:+.1%}",
        "metrics dir files: "
        + " ".join(str(x["metrics_files"]) for x in s)
        + f" ({'bounded' if result['files_bounded'] else 'GROWING'})",
        "scrape ms: " + " ".join(f"{x['scrape_seconds'] * 1000:.0f}" for x in s),
        f"verdict: {'PASS' if result['passed'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=2000)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=8, help="client threads")
    parser.add_argument("--warmup-seconds", type=float, default=None)
    args = parser.parse_args()
    seconds = args.minutes * 60
    warmup = args.warmup_seconds if args.warmup_seconds is not None else min(60, seconds / 3)

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Logs outside bench/results/logs, which the benchmark harness cleans.
    scratch = Path(tempfile.mkdtemp(prefix="scorer-soak-"))
    metrics_dir = scratch / "metrics"
    emulator_port, port = free_port(), free_port()
    emulator = start_emulator(emulator_port)
    service = None
    try:
        log = scratch / "gunicorn.log"
        service = start_service(emulator_port, port, args.max_requests, metrics_dir, log)
        bodies = make_bodies()
        closed_loop(port, bodies, args.threads, 2)  # fill both workers' caches
        capacity = closed_loop(port, bodies, args.threads, args.capacity_seconds)
        rate = capacity * args.load
        print(f"capacity {capacity:.0f} req/s; open loop at {rate:.0f} req/s", flush=True)

        samples: list[dict[str, Any]] = []
        stop = threading.Event()
        watcher = threading.Thread(
            target=sampler, args=(service.pid, port, metrics_dir, stop, samples)
        )
        watcher.start()
        load = OpenLoop(port, bodies, rate, threads=max(16, args.threads * 2))
        load.run(seconds)
        stop.set()
        watcher.join()
        master_alive = service.poll() is None
    finally:
        if service is not None:
            service.terminate()
            service.wait(timeout=60)
        emulator.terminate()
        emulator.wait(timeout=10)

    after = [x for x in samples if x["t"] >= warmup] or samples[-2:]
    rss_base = int(statistics.median(x["rss_kib"] for x in after[:2]))
    rss_end = int(statistics.median(x["rss_kib"] for x in after[-2:]))
    pss_base = statistics.median(x["pss_kib"] for x in after[:2])
    pss_end = statistics.median(x["pss_kib"] for x in after[-2:])
    files_bounded = after[-1]["metrics_files"] <= max(x["metrics_files"] for x in after[:2]) + 4
    try:
        booted = log.read_text(errors="replace").count("Booting worker with pid")
    except OSError:
        booted = len({pid for x in samples for pid in x["workers"]})  # a lower bound
    latencies = sorted(load.latencies) or [0.0]
    requests = sum(load.outcomes.values())
    failed = requests - load.outcomes["ok"]
    result = {
        "started": stamp,
        "minutes": args.minutes,
        "max_requests": args.max_requests,
        "load": args.load,
        "capacity_rps": round(capacity, 1),
        "target_rps": round(rate, 1),
        "achieved_rps": round(requests / seconds, 1),
        "requests": requests,
        "failed": failed,
        "failures": {k: v for k, v in load.outcomes.items() if k != "ok"},
        "behind": load.behind,
        # Latency from each request's scheduled send time, so client queueing counts too.
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max_ms": latencies[-1] * 1000,
        "workers_replaced": max(0, booted - 2),  # from the gunicorn log
        "warmup_seconds": warmup,
        "rss_baseline_kib": rss_base,
        "rss_end_kib": rss_end,
        "rss_growth": (rss_end - rss_base) / rss_base,
        "pss_growth": (pss_end - pss_base) / pss_base,
        "files_bounded": files_bounded,
        "master_alive_at_end": master_alive,
        "samples": samples,
    }
    result["passed"] = (
        result["rss_growth"] < RSS_GOAL and files_bounded and failed == 0 and master_alive
    )
    path = RESULTS / f"soak-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(summarize(result))
    print(f"results: {path.relative_to(ROOT)}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
