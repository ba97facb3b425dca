"""Run wrk rounds alternating between servers, and reduce them to medians and ratios."""

import statistics
from collections.abc import Callable
from typing import Any

from procs import cpu_seconds, worker_pids
from servers import Server

# A worker is flagged when it does under half its fair share (25% of the CPU with 2 workers).
MIN_FAIR_SHARE_FRACTION = 0.5


def measured(server: Server, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run load() and record how the CPU time split across the server's workers meanwhile."""
    server.workers = worker_pids(server.proc.pid)  # a recycled or crashed worker has a new pid
    before = {pid: cpu_seconds(pid) for pid in server.workers}
    result = load()
    result["workers_replaced"] = sorted(worker_pids(server.proc.pid)) != sorted(before)
    spent = {pid: max(0.0, cpu_seconds(pid) - start) for pid, start in before.items()}
    total = sum(spent.values())
    shares = {str(pid): round(s / total, 3) if total else 0.0 for pid, s in spent.items()}
    result["worker_cpu_share"] = shares
    result["worker_cpu_seconds"] = round(total, 2)
    fair = 1 / max(1, len(shares))
    result["unbalanced"] = len(shares) > 1 and min(shares.values()) < MIN_FAIR_SHARE_FRACTION * fair
    return result


def alternate(
    servers: list[Server], rounds: int, one: Callable[[Server], dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Run rounds A B C, A B C, ... so drift on the machine hits every server alike."""
    results: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers}
    for _ in range(rounds):
        for s in servers:
            results[s.label].append(measured(s, lambda s=s: one(s)))
    return results


def field_of(record: Any, path: tuple[str, ...]) -> float | None:
    """Return the number at path in a nested dict, or None."""
    for key in path:
        record = record.get(key) if isinstance(record, dict) else None
    return float(record) if isinstance(record, int | float) else None


def median_of(rounds: list[dict[str, Any]], *path: str, digits: int = 1) -> float | None:
    """Median of one field over the rounds that produced it."""
    values = [v for r in rounds if (v := field_of(r, path)) is not None]
    return round(statistics.median(values), digits) if values else None


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Reduce one server's rounds to medians, error counts and a pass/fail flag."""
    errors = sum(r.get("errors_total", 0) for r in rounds)
    return {
        "rps": median_of(rounds, "rps"),
        "p50_ms": ms(median_of(rounds, "latency_us", "p50")),
        "p90_ms": ms(median_of(rounds, "latency_us", "p90")),
        "p99_ms": ms(median_of(rounds, "latency_us", "p99")),
        "requests": sum(r.get("requests", 0) for r in rounds),
        "errors": errors,
        "failed": errors > 0 or not all(r.get("ok") for r in rounds),
        **balance(rounds),
        "workers_replaced": any(r.get("workers_replaced") for r in rounds),
        "rounds_rps": [r.get("rps") for r in rounds],
    }


def balance(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The least CPU share any worker had, and the rounds in which one was under half its due."""
    shares = [min(r["worker_cpu_share"].values()) for r in rounds if r.get("worker_cpu_share")]
    return {
        "min_worker_share": min(shares) if shares else None,
        "unbalanced": any(r.get("unbalanced") for r in rounds),
        "unbalanced_rounds": sum(1 for r in rounds if r.get("unbalanced")),
    }


def ms(us: float | None) -> float | None:
    """Convert microseconds to milliseconds, keeping None."""
    return None if us is None else round(us / 1000, 2)


def round_ratios(a: list[dict[str, Any]], b: list[dict[str, Any]], *path: str) -> dict[str, Any]:
    """Per-round ratio a/b of one field (rounds paired in order), with their median."""
    pairs = [(field_of(ra, path), field_of(rb, path)) for ra, rb in zip(a, b, strict=False)]
    ratios = [round(va / vb, 3) for va, vb in pairs if va is not None and vb]
    return {"per_round": ratios, "median": round(statistics.median(ratios), 3) if ratios else None}
