"""Scenario "reload": a new model version published while the service is under the S1 load.

    .venv/bin/python bench/reloading.py [--short]   # alone: emulator, models, this scenario
    .venv/bin/python bench/run.py --only reload      # inside the harness (and in `make bench`)

Switch: ours (2 workers, MODEL_POLL_SECONDS=1) serves the S1 workload (wrk -t2 -c8, 30 warm
streams) in back-to-back windows; after the steady windows the model file is published again to
its key in a versioned bucket, a new version to the service. Reported: wrk errors and non-2xx
answers over every window (goal 0); the switch time, from the upload to the first answer of a new
worker and to the exit of the last old one; p99 of the windows in the 10 s after the switch
against the steady windows (new workers start with empty feature caches).

Memory: the memory model (as S5) on a fresh 1-worker start, then on 4 workers through a reload.
PSS of the whole tree (master, workers and the check subprocess) is sampled every 0.1 s during
the switch for its peak, and measured again once the requests have been served by the new
workers: 4 workers after the reload over 1 fresh worker, goal <= 1.2 (as S5).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from alone import fresh_bench, output_path
from client import send_all
from emulator import (
    BUCKET,
    client,
)
from load import BODIES, Workload, make_body, run_wrk, warm_urls, write_lua
from memory import tree_pss_mib
from procs import cmdline, worker_pids
from scenarios import Bench, warm
from servers import Server, ServerSpec, running

RELOAD_BUCKET = "bench-reload"
POLL_SECONDS = 1
AFTER_SECONDS = 10.0  # the window after the switch that the issue asks about
PSS_GOAL = 1.2


def versioned_copy(endpoint: str, model_path: str) -> Callable[[], str]:
    """Copy a model into a versioned bucket; return a function that publishes it again."""
    s3 = client("s3", endpoint)
    if RELOAD_BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=RELOAD_BUCKET)
        s3.put_bucket_versioning(
            Bucket=RELOAD_BUCKET, VersioningConfiguration={"Status": "Enabled"}
        )
    key = model_path.removeprefix(f"s3://{BUCKET}/")
    # Bytes, not copy_object: moto's copy of a multipart object fails the GET's checksum check.
    data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def publish() -> str:
        return str(s3.put_object(Bucket=RELOAD_BUCKET, Key=key, Body=data)["VersionId"])

    publish()
    return publish


def reloading_spec(bench: Bench, model_path: str, workers: int) -> ServerSpec:
    """Ours, serving the versioned copy of a model and polling it every POLL_SECONDS."""
    return ServerSpec(
        "ours",
        f"s3://{RELOAD_BUCKET}/{model_path.removeprefix(f's3://{BUCKET}/')}",
        workers,
        bench.endpoint,
        extra_env=(("MODEL_POLL_SECONDS", str(POLL_SECONDS)),),
    )


def serving_workers(master: int) -> set[int]:
    """Return the master's workers, not the check subprocess of a reload."""
    return {p for p in worker_pids(master) if "scorer.models.staging" not in cmdline(p)}


def health_version(base: str) -> str | None:
    try:
        with urllib.request.urlopen(base + "/health", timeout=5) as response:
            return str(json.loads(response.read())["model_version"])
    except (OSError, ValueError, KeyError):
        return None


class SwitchWatch:
    """Sample a server every 0.1 s through a reload: workers, /health's version, PSS."""

    def __init__(self, server: Server, new_version: Callable[[], str | None], pss: bool) -> None:
        self.server = server
        self.new_version = new_version
        self.pss = pss
        self.old_workers = serving_workers(server.proc.pid)
        self.published: float | None = None
        self.first_new: float | None = None  # /health first answered with the new version
        self.all_new: float | None = None  # the last old worker exited
        self.peak_pss_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SwitchWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def done(self) -> bool:
        return self.all_new is not None and self.first_new is not None

    def _run(self) -> None:
        master = self.server.proc.pid
        while not self._stop.wait(0.1):
            now = time.monotonic()
            if self.pss:
                self.peak_pss_mib = max(self.peak_pss_mib, tree_pss_mib(master)["total_mib"])
            wanted = self.new_version()
            if self.published is None or wanted is None:
                continue
            if self.first_new is None and health_version(self.server.base) == wanted:
                self.first_new = now
            if self.all_new is None and not serving_workers(master) & self.old_workers:
                self.all_new = now


def window_figures(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests, errors and p99 (median and worst window) of some wrk windows."""
    p99s = [w["latency_us"]["p99"] / 1000 for w in windows if "latency_us" in w]
    return {
        "windows": len(windows),
        "requests": sum(w.get("requests", 0) for w in windows),
        "errors": sum(w.get("errors_total", 0) for w in windows),
        "failed_windows": sum(1 for w in windows if not w.get("ok")),
        "p99_ms_median": round(statistics.median(p99s), 2) if p99s else None,
        "p99_ms_max": round(max(p99s), 2) if p99s else None,
        "rps_median": round(statistics.median(w["rps"] for w in windows if "rps" in w), 1)
        if any("rps" in w for w in windows)
        else None,
    }


def switch_under_load(
    bench: Bench, window: float, steady_windows: int, after_seconds: float
) -> dict[str, Any]:
    """The S1 load in windows of `window` s; publish after the steady ones; time the switch."""
    publish = versioned_copy(bench.endpoint, bench.models["simple"])
    workload = Workload(30)
    lua = write_lua(workload, bench.lua_dir)
    version: list[str] = []
    with running(reloading_spec(bench, bench.models["simple"], 2), bench.log_dir) as server:
        warmup = warm(server, workload, lua, bench.warmup)
        watch = SwitchWatch(server, lambda: version[0] if version else None, pss=False).start()
        windows: list[dict[str, Any]] = []
        deadline = None
        try:
            for index in range(steady_windows + 200):
                if index == steady_windows:
                    watch.published = time.monotonic()
                    # Published once this window's load runs, so the switch happens under it.
                    timer = threading.Timer(0.2, lambda: version.append(publish()))
                    timer.start()
                started = time.monotonic()
                result = run_wrk(server.base, lua, window)
                result.update(start=started, end=time.monotonic())
                windows.append(result)
                if deadline is None and watch.done:
                    assert watch.first_new is not None
                    deadline = watch.first_new + after_seconds
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            watch.stop()
        first_new, all_new, published = watch.first_new, watch.all_new, watch.published
    assert published is not None
    steady = windows[:steady_windows]
    switching = [w for w in windows[steady_windows:] if first_new is None or w["start"] < first_new]
    after = [
        w
        for w in windows[steady_windows:]
        if first_new is not None and first_new <= w["start"] < first_new + after_seconds
    ]
    every = window_figures(windows)
    return {
        "window_s": window,
        "warmup": warmup,
        "switch_s": {
            "first_new_worker": round(first_new - published, 2) if first_new else None,
            "last_old_worker_gone": round(all_new - published, 2) if all_new else None,
        },
        "all": every,
        "steady": window_figures(steady),
        "switching": window_figures(switching),
        "after": {**window_figures(after), "seconds": after_seconds},
        "p99_after_over_steady": ratio(
            window_figures(after)["p99_ms_median"], window_figures(steady)["p99_ms_median"]
        ),
        "failed": every["errors"] > 0 or every["failed_windows"] > 0 or first_new is None,
        "wrk_command": windows[0].get("cmd", ""),
    }


def memory_through_reload(bench: Bench, requests: int) -> dict[str, Any]:
    """PSS of 1 fresh worker, and of 4 workers before, during (peak) and after a reload."""
    publish = versioned_copy(bench.endpoint, bench.models["memory"])
    bodies = [make_body(f"u{k}", warm_urls(k % BODIES, 30)) for k in range(requests)]
    with running(reloading_spec(bench, bench.models["memory"], 1), bench.log_dir) as server:
        statuses = {"w1": send_all(server.base, bodies)}
        fresh = tree_pss_mib(server.proc.pid)["total_mib"]
    version: list[str] = []
    with running(reloading_spec(bench, bench.models["memory"], 4), bench.log_dir) as server:
        statuses["w4 before"] = send_all(server.base, bodies)
        before = tree_pss_mib(server.proc.pid)["total_mib"]
        watch = SwitchWatch(server, lambda: version[0] if version else None, pss=True).start()
        watch.published = time.monotonic()
        version.append(publish())
        deadline = time.monotonic() + 300
        while not watch.done and time.monotonic() < deadline:
            time.sleep(0.2)
        watch.stop()
        switched = watch.done and len(serving_workers(server.proc.pid)) == 4
        statuses["w4 after"] = send_all(server.base, bodies)
        after = tree_pss_mib(server.proc.pid)["total_mib"]
    return {
        "requests": requests,
        "pss_mib": {
            "w1_fresh": fresh,
            "w4_before_reload": before,
            "w4_peak_during_switch": watch.peak_pss_mib,
            "w4_after_reload": after,
        },
        "ratio_after_over_w1": ratio(after, fresh),
        "ratio_before_over_w1": ratio(before, fresh),
        "peak_over_before": ratio(watch.peak_pss_mib, before),
        "switch_s": round(watch.all_new - watch.published, 2) if watch.all_new else None,
        "statuses": statuses,
        "failed": not switched
        or any(code != "200" for counts in statuses.values() for code in counts),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def reload_scenario(bench: Bench, short: bool = False) -> dict[str, Any]:
    """A new model version published under the S1 load: errors, switch time, p99, PSS."""
    switch = switch_under_load(
        bench,
        window=1.0 if short else 2.0,
        steady_windows=3 if short else 5,
        after_seconds=3.0 if short else AFTER_SECONDS,
    )
    memory = memory_through_reload(bench, requests=300 if short else 2000)
    return {
        "short": short,
        "poll_seconds": POLL_SECONDS,
        "switch": switch,
        "memory": memory,
        "failed": switch["failed"] or memory["failed"],
        "wrk_command": switch["wrk_command"],
    }


def main() -> int:
    """Run the reload scenario alone against a fresh emulator; print and save its results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="fewer, shorter windows and requests")
    parser.add_argument("--warmup", type=float, default=4.0, help="wrk warm-up, seconds")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: run bash bench/setup.sh", file=sys.stderr)
        return 2
    with fresh_bench("reload", warmup=args.warmup) as bench:
        result = reload_scenario(bench, short=args.short)
    out = output_path("reload", args.short)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("failed", "poll_seconds")}, indent=1))
    print(json.dumps({"switch": summary(result["switch"]), "memory": result["memory"]}, indent=1))
    print(f"[reload] wrote {out}")
    return 1 if result["failed"] else 0


def summary(switch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in switch.items() if k not in ("warmup", "wrk_command")}


if __name__ == "__main__":
    sys.exit(main())
