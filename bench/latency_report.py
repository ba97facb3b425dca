"""docs/benchmarks.md sections and goal rows for S7 (heavy beside ordinary) and S8 (fixed load)."""

from typing import Any

from tables import fmt, goal, table


def latency_goals(sc: dict[str, Any]) -> list[list[Any]]:
    """Rows of the goals table for S7, S8 and worker balance."""
    rows: list[list[Any]] = []
    if "s7" in sc:
        ratios = sc["s7"]["ratios"]
        rows.append(goal("S7 ordinary p99 ours/seed", ratios["ordinary_p99"]["median"], 0.2, False))
        rows.append(goal("S7 heavy throughput ours/seed", ratios["heavy_rps"]["median"], 1.0, True))
    if "s8" in sc:
        for model, result in sc["s8"]["models"].items():
            for load, servers in result["loads"].items():
                ours = _pick(servers, "ours")
                seed = _pick(servers, "seed")
                name = f"S8 {model} at {load}x: p99 ours/seed"
                if any(void(s) for s in (ours, seed) if s):
                    lag = max(s["generator_lag_p99_ms_max"] or 0 for s in (ours, seed) if s)
                    rows.append(
                        [name, f"void: generator lag {fmt(lag)} ms", "≤ 1.0", "not measured"]
                    )
                    continue
                ratio = None
                if ours and seed and ours["p99_ms"] and seed["p99_ms"]:
                    ratio = round(ours["p99_ms"] / seed["p99_ms"], 2)
                rows.append(goal(name, ratio, 1.0, False))
    unbalanced = unbalanced_rounds(sc)
    rows.append(goal("UNBALANCED rounds (ours, every scenario)", unbalanced, 0, False))
    return rows


MAX_LAG_MS = 10.0
"""A run whose generator sent its requests later than this (p99) did not offer the load."""


def void(summary: dict[str, Any]) -> bool:
    """Tell whether an S8 run is void: the generator could not keep its schedule."""
    lag = summary.get("generator_lag_p99_ms_max")
    return lag is None or lag > MAX_LAG_MS


def unbalanced_rounds(sc: dict[str, Any]) -> int:
    """Count the rounds in which one of our workers did under half its fair share of CPU."""
    count = 0
    for result in sc.values():
        parts = [result, *result.get("by_workers", {}).values()]
        for part in parts:
            for label, summary in part.get("summary", {}).items():
                if label.startswith("ours"):
                    count += int(summary.get("unbalanced_rounds") or 0)
    return count


def _pick(servers: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    return next((v for k, v in servers.items() if k.startswith(prefix)), None)


def latency_lines(sc: dict[str, Any]) -> list[str]:
    """Render S7 and S8 as they ran."""
    lines: list[str] = []
    if "s7" in sc:
        lines += s7_lines(sc["s7"])
    if "s8" in sc:
        lines += s8_lines(sc["s8"])
    return lines


def s7_lines(s7: dict[str, Any]) -> list[str]:
    """Render S7: 2 heavy connections beside 6 ordinary ones."""
    rows = [
        [
            label,
            s["ordinary_p50_ms"],
            s["ordinary_p99_ms"],
            s["ordinary_rps"],
            s["heavy_p50_ms"],
            s["heavy_p99_ms"],
            s["heavy_rps"],
            s["errors"],
            s["min_worker_share"],
            s["unbalanced_rounds"],
        ]
        for label, s in s7["summary"].items()
    ]
    ratios = s7["ratios"]
    lines = [
        "## S7: CPU-heavy requests beside ordinary ones",
        "",
        "The mixed model: a request whose user id starts with `heavy` burns about 30 ms of"
        " pure-Python CPU, others score like the simple model. Two wrk at once against each"
        " server: 2 connections of heavy requests and 6 of ordinary 30-stream ones, warm cache.",
        "",
    ]
    lines += table(
        [
            "server",
            "ordinary p50 ms",
            "ordinary p99 ms",
            "ordinary req/s",
            "heavy p50 ms",
            "heavy p99 ms",
            "heavy req/s",
            "errors",
            "min worker CPU share",
            "UNBALANCED rounds",
        ],
        rows,
    )
    lines += table(
        ["ratio ours/seed", "median", "per round"],
        [
            [name, r["median"], ", ".join(fmt(v) for v in r["per_round"])]
            for name, r in ratios.items()
        ],
    )
    lines += ["```", s7["wrk_commands"]["heavy"], s7["wrk_commands"]["ordinary"], "```", ""]
    return lines


def s8_lines(s8: dict[str, Any]) -> list[str]:
    """Render S8: open-loop load at fractions of each server's capacity."""
    lines = [
        "## S8: latency at a fixed offered load (open loop)",
        "",
        "Poisson arrivals from `bench/openloop.c` (one thread, epoll; latency counted from each"
        " request's scheduled start; the generator's own lag, from the scheduled start to the"
        " write, or to connect() on a new connection, is reported: a round whose generator lags"
        f" is void), {s8['rounds']} rounds of {fmt(s8['seconds'])} s per server and load,"
        " servers alternated; percentiles over all rounds' answers. Capacity: the median of"
        " three closed-loop wrk runs (`-t2 -c8`) just before. A run whose generator lag p99"
        f" passed {fmt(MAX_LAG_MS)} ms is VOID: the generator, on the same two cores, could not"
        " offer the load on schedule.",
        "",
    ]
    for model, result in s8["models"].items():
        lines += [f"### {model} model", ""]
        rows = []
        for load, servers in result["loads"].items():
            for label, s in servers.items():
                rows.append(
                    [
                        f"{load}x",
                        label,
                        result["capacity"][label]["rps"],
                        fmt(s["offered_rps"]),
                        s["p50_ms"],
                        s["p99_ms"],
                        s["p999_ms"],
                        s["answered"],
                        s["non_2xx"] + s["timeouts"] + s["conn_errors"],
                        fmt(s["generator_lag_p99_ms_max"]) + (" VOID" if void(s) else ""),
                    ]
                )
        lines += table(
            [
                "load",
                "server",
                "capacity req/s",
                "offered req/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "answered",
                "failed",
                "generator lag p99 ms (worst round)",
            ],
            rows,
        )
    return lines
