"""The reload shape: a new model version published while the service is under the S1 load.

Switch: wrk windows back to back while the model is published again (a new version in a
versioned bucket); errors over every window, the switch's timing, p99 after it against steady.
Memory: the memory model on 1 fresh worker, then on 4 through a reload, PSS of the whole tree
sampled every 0.1 s for its peak and measured after (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from client import send_all
from emulator import BUCKET, client
from load import BODIES, Workload, make_body, run_wrk, warm_urls, write_lua
from procs import cmdline, tree_pss_mib, worker_pids
from servers import Bench, Server, ServerSpec, running
from shapes import warm

RELOAD_BUCKET = "bench-reload"
POLL_SECONDS = 1
AFTER_SECONDS = 10.0  # the window after the switch that the issue asks about


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


def reloading_spec(spec: ServerSpec, model_path: str, workers: int) -> ServerSpec:
    """Ours, serving the versioned copy of a model and polling it every POLL_SECONDS."""
    path = f"s3://{RELOAD_BUCKET}/{model_path.removeprefix(f's3://{BUCKET}/')}"
    poll = (("MODEL_POLL_SECONDS", str(POLL_SECONDS)),)
    return spec.using(model=path, workers=workers, env=(*spec.env, *poll))


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
    bench: Bench, spec: ServerSpec, window: float, steady_windows: int, after_seconds: float
) -> dict[str, Any]:
    """The S1 load in windows of `window` s; publish after the steady ones; time the switch."""
    model = bench.models[spec.model]
    publish = versioned_copy(bench.endpoint, model)
    workload = Workload(30)
    lua = write_lua(workload)
    version: list[str] = []
    with running(reloading_spec(spec, model, 2), bench) as server:
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


def memory_through_reload(bench: Bench, spec: ServerSpec, requests: int) -> dict[str, Any]:
    """PSS of 1 fresh worker, and of 4 workers before, during (peak) and after a reload."""
    model = bench.models["memory"]
    publish = versioned_copy(bench.endpoint, model)
    bodies = [make_body(f"u{k}", warm_urls(k % BODIES, 30)) for k in range(requests)]
    with running(reloading_spec(spec, model, 1), bench) as server:
        statuses = {"w1": send_all(server.base, bodies)}
        fresh = tree_pss_mib(server.proc.pid)["total_mib"]
    version: list[str] = []
    with running(reloading_spec(spec, model, 4), bench) as server:
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
        "failed": not switched or any(code != "200" for c in statuses.values() for code in c),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def reload(bench: Bench, spec: ServerSpec) -> dict[str, Any]:
    """A new model version published under the S1 load: errors, switch time, p99, PSS."""
    window, steady, after = (1.0, 3, 3.0) if bench.short else (2.0, 5, AFTER_SECONDS)
    switch = switch_under_load(bench, spec, window, steady, after)
    memory = memory_through_reload(bench, spec, requests=300 if bench.short else 2000)
    failed = switch["failed"] or memory["failed"]
    out = {"short": bench.short, "poll_seconds": POLL_SECONDS, "switch": switch, "memory": memory}
    return out | {"failed": failed, "wrk_command": switch["wrk_command"]}
