"""Run wrk rounds alternating between servers, and reduce them to medians and ratios."""

import statistics
from pathlib import Path
from typing import Any

from load import run_wrk
from procs import cpu_seconds, worker_pids
from servers import Server

# A worker is flagged when it does under half its fair share (25% of the CPU with 2 workers).
MIN_FAIR_SHARE_FRACTION = 0.5


def measure_round(server: Server, lua: Path, seconds: float) -> dict[str, Any]:
    """Run one wrk round and record how the CPU time split across the server's workers."""
    # Re-read the workers each round: a recycled or crashed worker has a new pid.
    server.workers = worker_pids(server.proc.pid)
    before = {pid: cpu_seconds(pid) for pid in server.workers}
    result = run_wrk(server.base, lua, seconds)
    after = worker_pids(server.proc.pid)
    result["workers_replaced"] = sorted(after) != sorted(server.workers)
    spent = {pid: max(0.0, cpu_seconds(pid) - before[pid]) for pid in server.workers}
    total = sum(spent.values())
    shares = {str(pid): round(s / total, 3) if total else 0.0 for pid, s in spent.items()}
    result["worker_cpu_share"] = shares
    result["worker_cpu_seconds"] = round(total, 2)
    if len(shares) > 1:
        fair = 1 / len(shares)
        result["unbalanced"] = min(shares.values()) < MIN_FAIR_SHARE_FRACTION * fair
    else:
        result["unbalanced"] = False
    return result


def alternate(
    servers: list[Server], lua: Path, rounds: int, seconds: float
) -> dict[str, list[dict[str, Any]]]:
    """Run rounds A B C, A B C, ... so drift on the machine hits every server alike."""
    results: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers}
    for _ in range(rounds):
        for server in servers:
            results[server.label].append(measure_round(server, lua, seconds))
    return results


def median_of(rounds: list[dict[str, Any]], *path: str) -> float | None:
    """Median of one field over the rounds that produced it."""
    values = []
    for r in rounds:
        value: Any = r
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            values.append(float(value))
    return round(statistics.median(values), 1) if values else None


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Reduce one server's rounds to medians, error counts and a pass/fail flag."""
    errors = sum(r.get("errors_total", 0) for r in rounds)
    shares = [min(r["worker_cpu_share"].values()) for r in rounds if r.get("worker_cpu_share")]
    return {
        "rps": median_of(rounds, "rps"),
        "p50_ms": ms(median_of(rounds, "latency_us", "p50")),
        "p90_ms": ms(median_of(rounds, "latency_us", "p90")),
        "p99_ms": ms(median_of(rounds, "latency_us", "p99")),
        "requests": sum(r.get("requests", 0) for r in rounds),
        "errors": errors,
        "failed": errors > 0 or not all(r.get("ok") for r in rounds),
        "min_worker_share": min(shares) if shares else None,
        "unbalanced": any(r.get("unbalanced") for r in rounds),
        "unbalanced_rounds": sum(1 for r in rounds if r.get("unbalanced")),
        "workers_replaced": any(r.get("workers_replaced") for r in rounds),
        "rounds_rps": [r.get("rps") for r in rounds],
    }


def ms(us: float | None) -> float | None:
    """Convert microseconds to milliseconds, keeping None."""
    return None if us is None else round(us / 1000, 2)


def round_ratios(a: list[dict[str, Any]], b: list[dict[str, Any]], *path: str) -> dict[str, Any]:
    """Per-round ratio a/b of one field (rounds paired in order), with their median."""
    ratios = []
    for ra, rb in zip(a, b, strict=False):
        va: Any = ra
        vb: Any = rb
        for key in path:
            va = va.get(key) if isinstance(va, dict) else None
            vb = vb.get(key) if isinstance(vb, dict) else None
        if isinstance(va, int | float) and isinstance(vb, int | float) and vb:
            ratios.append(round(va / vb, 3))
    return {"per_round": ratios, "median": round(statistics.median(ratios), 3) if ratios else None}
