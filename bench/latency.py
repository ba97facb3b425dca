"""Scenarios S7 and S8: latency beside CPU-heavy requests, and latency at a fixed offered load.

S7 runs two wrk processes at once against one server: 2 connections of requests whose model
burns about 30 ms of pure-Python CPU (the mixed model, by user id) and 6 connections of ordinary
30-stream requests; the ordinary requests' latency shows how much a heavy one stalls the others.

S8 offers open-loop Poisson load (bench/openloop.py, its schedule kept by bench/openloop.c) at
0.5x and 0.8x of each server's own capacity (measured with wrk just before), for the simple model
and a 4 ms-CPU model, and reports p50/p99/p99.9 counted from each request's scheduled start.
"""

import statistics
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openloop
from load import (
    BODIES,
    Workload,
    make_body,
    parse_wrk,
    run_wrk,
    warm_urls,
    write_lua,
    wrk_command,
)
from procs import cpu_seconds, worker_pids
from rounds import MIN_FAIR_SHARE_FRACTION, ms, round_ratios
from scenarios import Bench, warm
from servers import Server, ServerSpec, running

HEAVY_CONNS = 2
ORDINARY_CONNS = 6
LOADS = (0.5, 0.8)
S8_MODELS = ("simple", "cpu4")


def _wrk(url: str, lua: Path, seconds: float, conns: int) -> list[str]:
    return wrk_command(url, lua, seconds, threads=min(2, conns), conns=conns)


def worker_shares(server: Server, before: dict[int, float]) -> dict[str, Any]:
    """Split the CPU the server's workers spent since `before` and flag an idle worker."""
    spent = {pid: max(0.0, cpu_seconds(pid) - start) for pid, start in before.items()}
    total = sum(spent.values())
    shares = {str(pid): round(s / total, 3) if total else 0.0 for pid, s in spent.items()}
    fair = 1 / len(shares) if shares else 1.0
    unbalanced = len(shares) > 1 and min(shares.values()) < MIN_FAIR_SHARE_FRACTION * fair
    return {"worker_cpu_share": shares, "unbalanced": unbalanced}


def mixed_round(server: Server, heavy: Path, ordinary: Path, seconds: float) -> dict[str, Any]:
    """Run the heavy and the ordinary wrk at the same time against server; return both."""
    server.workers = worker_pids(server.proc.pid)
    before = {pid: cpu_seconds(pid) for pid in server.workers}
    cmds = {
        "heavy": _wrk(server.base, heavy, seconds, HEAVY_CONNS),
        "ordinary": _wrk(server.base, ordinary, seconds, ORDINARY_CONNS),
    }
    procs = {
        name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, cmd in cmds.items()
    }
    out: dict[str, Any] = {}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=seconds + 60)
        out[name] = parse_wrk(cmds[name], output)
    out.update(worker_shares(server, before))
    out["ok"] = all(out[name].get("ok") for name in cmds)
    return out


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def summarize_mixed(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of the ordinary requests' latency and both throughputs."""

    def field(part: str, *path: str) -> list[float | None]:
        values: list[float | None] = []
        for r in rounds:
            value: Any = r.get(part, {})
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            values.append(float(value) if isinstance(value, int | float) else None)
        return values

    return {
        "ordinary_p50_ms": ms(_median(field("ordinary", "latency_us", "p50"))),
        "ordinary_p99_ms": ms(_median(field("ordinary", "latency_us", "p99"))),
        "ordinary_rps": _median(field("ordinary", "rps")),
        "heavy_p50_ms": ms(_median(field("heavy", "latency_us", "p50"))),
        "heavy_p99_ms": ms(_median(field("heavy", "latency_us", "p99"))),
        "heavy_rps": _median(field("heavy", "rps")),
        "errors": sum(
            r.get(p, {}).get("errors_total", 0) for r in rounds for p in ("heavy", "ordinary")
        ),
        "failed": not all(r.get("ok") for r in rounds),
        "unbalanced_rounds": sum(1 for r in rounds if r.get("unbalanced")),
        "min_worker_share": min(
            (min(r["worker_cpu_share"].values()) for r in rounds if r.get("worker_cpu_share")),
            default=None,
        ),
    }


def s7_mixed(bench: Bench) -> dict[str, Any]:
    """Mixed load: 2 connections of ~30 ms-CPU requests beside 6 of ordinary ones, ours vs seed."""
    model = bench.models["mixed"]
    specs = [
        ServerSpec("ours", model, 2, bench.endpoint),
        ServerSpec("seed", model, 2, bench.endpoint),
    ]
    ordinary = Workload(30)
    heavy_lua = write_lua(Workload(30, user="heavy"), bench.lua_dir)
    ordinary_lua = write_lua(ordinary, bench.lua_dir)
    with ExitStack() as stack:
        servers = [stack.enter_context(running(spec, bench.log_dir)) for spec in specs]
        warmups = {s.label: warm(s, ordinary, ordinary_lua, bench.warmup) for s in servers}
        raw: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers}
        for _ in range(bench.rounds):
            for server in servers:
                raw[server.label].append(
                    mixed_round(server, heavy_lua, ordinary_lua, bench.seconds)
                )
        commands = {s.label: " ".join(s.cmd) for s in servers}
    ours, seed = (next(label for label in raw if label.startswith(k)) for k in ("ours", "seed"))
    return {
        "summary": {label: summarize_mixed(rounds) for label, rounds in raw.items()},
        "ratios": {
            "ordinary_p99": round_ratios(raw[ours], raw[seed], "ordinary", "latency_us", "p99"),
            "ordinary_p50": round_ratios(raw[ours], raw[seed], "ordinary", "latency_us", "p50"),
            "heavy_rps": round_ratios(raw[ours], raw[seed], "heavy", "rps"),
            "ordinary_rps": round_ratios(raw[ours], raw[seed], "ordinary", "rps"),
        },
        "wrk_commands": {
            "heavy": " ".join(_wrk("URL", heavy_lua, bench.seconds, HEAVY_CONNS)),
            "ordinary": " ".join(_wrk("URL", ordinary_lua, bench.seconds, ORDINARY_CONNS)),
        },
        "warmup": warmups,
        "server_commands": commands,
        "rounds": raw,
    }


def capacity(server: Server, lua: Path, seconds: float) -> dict[str, Any]:
    """Measure a server's throughput with closed-loop wrk: the median of three short runs."""
    runs = [run_wrk(server.base, lua, seconds) for _ in range(3)]
    return {"rps": _median([r.get("rps") for r in runs]), "runs": [r.get("rps") for r in runs]}


def open_loop(server: Server, rate: float, seconds: float) -> dict[str, Any]:
    """Offer `rate` requests/s of the warm 30-stream bodies to server, open loop."""
    bodies = [(f"u{k}", make_body(f"u{k}", warm_urls(k, 30))) for k in range(BODIES)]
    return openloop.run(
        server.base + "/score", bodies, rate, seconds, deadline=10.0, keep_samples=True
    )


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles over every round's answers together, and the worst generator lag."""
    samples = [v for r in rounds for v in r.pop("ok_samples", [])]
    lag = [r["lag_ms"]["p99"] for r in rounds if r["lag_ms"]["p99"] is not None]
    return {
        "p50_ms": openloop.pct(samples, 0.5),
        "p99_ms": openloop.pct(samples, 0.99),
        "p999_ms": openloop.pct(samples, 0.999),
        "answered": len(samples),
        "sent": sum(r["sent"] for r in rounds),
        "non_2xx": sum(sum(r["other_status"].values()) + r["refused"] for r in rounds),
        "timeouts": sum(r["timeouts"] for r in rounds),
        "conn_errors": sum(r["conn_errors"] for r in rounds),
        "generator_lag_p99_ms_max": max(lag) if lag else None,
        "offered_rps": rounds[0]["offered_rps"] if rounds else None,
        "rounds_p99_ms": [r["ok_ms"]["p99"] for r in rounds],
    }


def s8_fixed_load(bench: Bench) -> dict[str, Any]:
    """Open-loop load at 0.5x and 0.8x of each server's capacity: p50/p99/p99.9, ours vs seed."""
    workload = Workload(30)
    lua = write_lua(workload, bench.lua_dir)
    seconds = max(bench.seconds, 8.0)
    rounds = min(bench.rounds, 3)
    out: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "models": {}}
    for model_name in S8_MODELS:
        model = bench.models[model_name]
        specs = [
            ServerSpec("ours", model, 2, bench.endpoint),
            ServerSpec("seed", model, 2, bench.endpoint),
        ]
        with ExitStack() as stack:
            servers = [stack.enter_context(running(spec, bench.log_dir)) for spec in specs]
            for server in servers:
                warm(server, workload, lua, bench.warmup)
            caps = {s.label: capacity(s, lua, bench.seconds) for s in servers}
            loads: dict[str, Any] = {}
            for load in LOADS:
                raw: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers}
                for _ in range(rounds):
                    for server in servers:
                        rate = load * (caps[server.label]["rps"] or 1.0)
                        raw[server.label].append(open_loop(server, rate, seconds))
                loads[str(load)] = {label: pooled(r) for label, r in raw.items()}
        out["models"][model_name] = {"capacity": caps, "loads": loads}
    return out


SCENARIOS = {"s7": s7_mixed, "s8": s8_fixed_load}
