"""Write docs/benchmarks.md, bench/chart.png and bench/overload.png from a results dict.

python bench/report.py RESULTS.json [OUT.md]     # re-render them from a results file
"""

import json
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parent.parent
MAX_LAG_MS = 10.0  # an S8 run whose generator lagged more (p99) did not offer the load: void
S9_STREAMS = 30  # warm streams a request in S9 (bench/overload.py)

Cell = Callable[[Any], str]  # renders a value as a table cell
Get = str | Callable[[Any], Any]  # a function of an item, or a path or template (see dig)
Column = tuple[str, Get]  # a table's header, and how to get each row's cell from its item
Render = Callable[[dict[str, Any]], list[str]]  # a scenario's result to its section
Rows = Iterator[list[Any]]  # rows of the goals table


def fmt(value: Any) -> str:
    """Render a cell: numbers rounded, None as n/a."""
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return raw(value)


def raw(value: Any) -> str:
    """Render a cell as it is, None as n/a."""
    return "n/a" if value is None else str(value)


def dig(item: Any, get: Get) -> Any:
    """Return get(item), item's fields in get if a template ("{key}x"), or else follow get, a path
    "key.key*.key:format", into item: key* is the first key starting with key, the format is
    format()'s (d: an int); None past a missing key."""
    if callable(get):
        return get(item)
    if "{" in get:
        return get.format_map(item)
    path, _, spec = get.partition(":")
    for key in path.split("."):
        if not isinstance(item, dict):
            return None
        if key.endswith("*"):  # the first key that starts with the rest
            key = next((k for k in item if k.startswith(key[:-1])), None)
        item = item.get(key)
    if item is None or not spec:
        return item
    return format(int(item) if spec == "d" else item, spec)


def columns(spec: str, **getters: Callable[[Any], Any]) -> list[Column]:
    """Parse "header=path | header=@getter | header": a bare header is its own path."""
    pairs = [(h, get or h) for h, _, get in (part.partition("=") for part in spec.split(" | "))]
    return [(h, getters[get[1:]] if get.startswith("@") else get) for h, get in pairs]


def leaves(tree: dict[str, Any], *names: str) -> list[dict[str, Any]]:
    """Flatten nested dicts to their leaves, each with the keys on its way under `names`."""
    if not names:
        return [tree]
    return [{**leaf, names[0]: k} for k, sub in tree.items() for leaf in leaves(sub, *names[1:])]


def table(headers: list[str], rows: Iterable[Iterable[Any]], cell: Cell = fmt) -> list[str]:
    """Render a Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return [*lines, *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows), ""]


def grid(cols: list[Column], items: Iterable[Any], cell: Cell = fmt) -> list[str]:
    """Render a Markdown table of one row per item."""
    rows = [[dig(item, get) for _, get in cols] for item in items]
    return table([header for header, _ in cols], rows, cell)


def joined(values: Iterable[Any], cell: Cell = fmt) -> str:
    """Render values as one comma-separated cell."""
    return ", ".join(cell(v) for v in values)


def markdown(*parts: Any) -> list[str]:
    """Render titles and paragraphs (strings) and tables (lists of lines), skipping empty parts."""
    return [line for p in parts if p for line in ([p, ""] if isinstance(p, str) else p)]


def ratio(a: float | None, b: float | None) -> float | None:
    """Return a / b to two places, or None if either is missing or zero."""
    return round(a / b, 2) if a and b else None


def void(run: dict[str, Any]) -> bool:
    """Tell whether an S8 run is void: the generator could not keep its schedule."""
    return (lag := run.get("generator_lag_p99_ms_max")) is None or lag > MAX_LAG_MS


def completed(results: dict[str, Any]) -> dict[str, Any]:
    """Return the scenarios that ran to the end (crashed ones carry only an error)."""
    return {k: v for k, v in results["scenarios"].items() if not v.get("error")}


def goal(name: str, value: float | None, target: str) -> list[Any]:
    """Return a row of the goals table; target is "≥ LIMIT" or "≤ LIMIT"."""
    limit = float(target[2:]) if "." in target else int(target[2:])
    if value is None:
        return [name, "n/a", limit, "not measured"]
    met = value >= limit if target.startswith("≥") else value <= limit
    return [name, value, target, "met" if met else "NOT met"]


def s8_goals(s8: dict[str, Any]) -> Rows:
    """Yield S8's p99 ratio per model and load; a void run is not measured."""
    for model, result in s8["models"].items():
        for load, servers in result["loads"].items():
            ours, seed = dig(servers, "ours*"), dig(servers, "seed*")
            name, pair = f"S8 {model} at {load}x: p99 ours/seed", [s for s in (ours, seed) if s]
            if any(void(s) for s in pair):
                lag = max(s["generator_lag_p99_ms_max"] or 0 for s in pair)
                yield [name, f"void: generator lag {fmt(lag)} ms", "≤ 1.0", "not measured"]
            else:
                p99 = ratio(ours["p99_ms"], seed["p99_ms"]) if ours and seed else None
                yield goal(name, p99, "≤ 1.0")


def s9_goals(s9: dict[str, Any]) -> Rows:
    """Yield S9's goals for ours at 2x and 4x, at 0.5x and 0.8x, and a refusal's CPU."""
    ours, plain = (s9["servers"].get(name, {}) for name in ("ours", "ours, no shedding"))
    for load in ("2", "4", "0.5", "0.8"):
        s = ours.get("steps", {}).get(load)
        if s is None:
            continue
        at = f"S9 {load}x{' (VOID: the generator lagged)' if s['void'] else ''}"
        if load in ("2", "4"):
            yield goal(f"{at}: goodput / capacity", s["goodput_share"], "≥ 0.8")
            yield goal(f"{at}: p99 of successes, ms", s["ok_p99_ms"], "≤ 100")
            yield goal(f"{at}: p99 of refusals, ms", s["refused_p99_ms"], "≤ 10")
            yield goal(f"{at}: timeouts / sent", s["timeout_share"], "≤ 0.01")
            continue
        yield goal(f"{at}: refused / sent", s["refused_share"], "≤ 0.001")
        over = ratio(s["ok_p99_ms"], plain.get("steps", {}).get(load, {}).get("ok_p99_ms"))
        if over is not None:
            yield goal(f"{at}: p99 over p99 without shedding", over, "≤ 1.0")
    if ours.get("cost"):
        cpu = ours["cost"]["refused_over_scored"]
        yield goal("S9 a refusal's worker CPU / a scored request's", cpu, "≤ 0.1")


def goals(sc: dict[str, Any]) -> Rows:
    """Yield the issue's goals, of the scenarios that ran, in the report's order."""
    if "s1" in sc:
        s1 = sc["s1"]
        yield goal("S1 throughput ours/seed", dig(s1, "ratios.seed*.rps.median"), "≥ 3.0")
        yield goal("S1 p99 ours/seed", dig(s1, "ratios.seed*.p99.median"), "≤ 0.5")
        yield goal("S1 throughput ours/floor", dig(s1, "ratios.floor*.rps.median"), "≥ 0.6")
        yield goal("S1 p99 ours/seed (no worse)", dig(s1, "ratios.seed*.p99.median"), "≤ 1.0")
        if any(s["failed"] for s in s1["summary"].values()):
            yield ["S1 run", "FAILED (errors or non-2xx)", "0 errors", "NOT met"]
    if "s3" in sc:
        cold = dig(sc["s3"], "cold_latency.ratio")
        yield goal("S3 cold 300-key / 30-key latency (ours)", cold, "≤ 1.5")
    if "s5" in sc:
        pss = dig(sc["s5"], "variants.ours(freeze=true).ratio")
        yield goal("S5 PSS 4 workers / 1 worker (ours, GC_FREEZE=true)", pss, "≤ 1.2")
    if "s6" in sc:
        reads = dig(sc["s6"], "servers.ours*.100.reads_per_unique_key")
        yield goal("S6 DynamoDB reads per unique key (ours, 100 streams)", reads, "≤ 2.0")
    if "s9" in sc:
        yield from s9_goals(sc["s9"])
    for c in leaves(sc["s10"]["models"], "model", "conns") if "s10" in sc else []:
        if int(c["conns"]) <= 8:  # past the workers' 8 threads, a queue of its own: shown only
            bad = sum((r["errors"] or 0) + (r["shed"] or 0) for r in c["rounds"])
            yield goal(f"S10 {c['model']}, {c['conns']} connections: non-2xx", bad, "≤ 0")
    if "reload" in sc:
        every, pss = sc["reload"]["switch"]["all"], dig(sc["reload"], "memory.ratio_after_over_w1")
        bad = every["errors"] + every["failed_windows"]
        yield goal("Reload: errors and non-2xx under load", bad, "≤ 0")
        yield goal("Reload: PSS 4 workers after a reload / 1 worker", pss, "≤ 1.2")
    if "s7" in sc:
        s7 = sc["s7"]
        yield goal("S7 ordinary p99 ours/seed", dig(s7, "ratios.ordinary_p99.median"), "≤ 0.2")
        yield goal("S7 heavy throughput ours/seed", dig(s7, "ratios.heavy_rps.median"), "≥ 1.0")
    if "s8" in sc:
        yield from s8_goals(sc["s8"])
    unbalanced = sum(  # rounds in which one of our workers did under half its fair share of CPU
        int(s.get("unbalanced_rounds") or 0)
        for result in sc.values()
        for part in (result, *result.get("by_workers", {}).values())
        for label, s in part.get("summary", {}).items()
        if label.startswith("ours")
    )
    yield goal("UNBALANCED rounds (ours, every scenario)", unbalanced, "≤ 0")


def shortfall_lines(results: dict[str, Any], sc: dict[str, Any]) -> Iterator[str]:
    """Say, for each goal not met, by how much and what stands in the way, from the figures."""
    s1, s3 = sc.get("s1", {}), sc.get("s3", {})
    seed, floor, ours = (dig(s1, f"summary.{p}*") for p in ("seed", "floor", "ours"))
    vs_seed, vs_floor = (dig(s1, f"ratios.{p}*") for p in ("seed", "floor"))
    if seed and floor and vs_seed and vs_floor:
        rps, p99 = floor["rps"] / seed["rps"], floor["p99_ms"] / seed["p99_ms"]
        missed = ["the throughput goal"] if rps < 3.0 else []
        missed += ["the p99 goal"] if p99 > 0.5 else []
        bound = (  # whether the floor itself misses the goals, so no app on that server meets them
            "Doing no work at all, the design's server (synchronous WSGI on gunicorn gthread)"
            f" misses {' and '.join(missed)} on this machine, so no app served by it can meet"
            f" {'it' if len(missed) == 1 else 'them'} here: gunicorn's own per-request work is"
            " past the bound."
            if missed
            else "The floor meets both goals: the distance is the service's own cost."
        )
        env = results.get("commands", {}).get("ours env", "").split()
        threads = next((part[8:] for part in env if part.startswith("THREADS=")), "?")
        yield from markdown(
            "**S1, throughput ≥ 3.0x and p99 ≤ 0.5x the seed's.** Ours: "
            f"{vs_seed['rps']['median']:.2f}x the seed's throughput and "
            f"{vs_seed['p99']['median']:.2f}x its p99 (medians of the per-round ratios). The floor,"
            " gunicorn gthread with the same workers and threads answering a fixed JSON after"
            f" parsing the body (no features, no model), reaches {rps:.2f}x the seed's throughput"
            f" with {p99:.2f}x its p99 (ratios of the medians). {bound} Ours reaches"
            f" {vs_floor['rps']['median']:.0%} of the floor's throughput (goal 60%).",
            ours
            and vs_seed["p99"]["median"] > 0.5
            and f"The tail: ours {ours['p99_ms']:.1f} ms at p99, the floor {floor['p99_ms']:.1f}"
            f" ms, the seed {seed['p99_ms']:.1f} ms. A worker's threads share one GIL, so a"
            " request waits behind the others in its worker; fewer threads shorten the tail at"
            " the same throughput. A side run, `THREADS=2 python bench/run.py --only s1 --rounds"
            " 3 --report REPORT.md` (results `bench/results/bench-20261127T020048Z.json`), gave"
            " 1.23x the seed's throughput and 0.88x its p99, against"
            f" {vs_seed['p99']['median']:.2f}x in this run at {threads} threads, the default,"
            " which keeps more requests going while DynamoDB is slow (README, `THREADS`).",
        )
    if s3.get("cold_latency") and emulator_ratio(s3) is not None:
        yield from markdown(
            "**S3, a 300-key cold request ≤ 1.5x a 30-key one.** Ours: "
            f"{s3['cold_latency']['ratio']:.2f}x. The emulator alone, chunks read in parallel"
            f" exactly as the service does, takes {emulator_ratio(s3):.2f}x as long for 300 keys"
            " as for 30: moto answers from one Python process, so three concurrent chunks cost it"
            " about three times one chunk. The service adds no serial cost on top (its ratio is"
            " below the emulator's); against DynamoDB, where chunks are served in parallel, the"
            " goal depends on DynamoDB's latency, which this machine cannot measure."
        )


COMPARED = columns(
    "server | req/s (median)=rps | p50 ms=p50_ms | p90 ms=p90_ms | p99 ms=p99_ms | requests"
    " | errors+non-2xx=errors | of which refused (503 overloaded)=shed:d | run=@run"
    " | min worker CPU share=cpu | features seen (sample)=features"
    " | scored without some features=degraded:d",
    run=lambda s: "FAILED" if s["failed"] else "ok",
)
RATIOS = columns(
    "ratio=ours / {other} | throughput (median)=rps.median | per round=@rps"
    " | p99 (median)=p99.median | per round=@p99",
    rps=lambda r: joined(r["rps"]["per_round"]),
    p99=lambda r: joined(r["p99"]["per_round"]),
)


def compare(result: dict[str, Any]) -> list[str]:
    """Render one side-by-side comparison: medians per server, then ratios of ours to each."""
    servers = []
    for s in leaves(result["summary"], "server"):
        sample = result["samples"].get(s["server"], {})
        seen, expected = sample.get("features_seen"), sample.get("features_expected")
        cpu = fmt(s["min_worker_share"])  # the smallest worker's share, and if it was too small
        if s["unbalanced"]:
            cpu += f" UNBALANCED in {s.get('unbalanced_rounds', '?')}/{len(s['rounds_rps'])} rounds"
        cpu += " (a worker was replaced)" if s.get("workers_replaced") else ""
        features = f"{fmt(seen)}/{fmt(expected)}" if expected else fmt(seen)
        servers.append({**s, "cpu": cpu, "features": features})
    cmd = ["```", result["wrk_command"], "```", ""]
    return [*grid(COMPARED, servers), *grid(RATIOS, leaves(result["ratios"], "other")), *cmd]


def compared(title: str, *notes: str | Render) -> Render:
    """Return the section of one comparison, then notes on it (paragraphs, or functions)."""
    return lambda r: markdown(
        f"## {title}", compare(r), *(n(r) if callable(n) else n for n in notes)
    )


def emulator_ratio(s3: dict[str, Any]) -> float | None:
    """Return how much longer the emulator alone takes for S3's many keys than for its few."""
    alone = s3.get("emulator_alone", [])
    return alone[1]["parallel_ms"] / alone[0]["parallel_ms"] if len(alone) == 2 else None


def cold_latency_lines(s3: dict[str, Any]) -> list[str]:
    """Render the 100-stream vs 10-stream cold latency of ours, and the emulator's own share."""
    c, alone = s3.get("cold_latency"), s3.get("emulator_alone", [])
    if not c:
        return []
    cold = [
        [c[f"{n}_streams"], 3 * c[f"{n}_streams"], c[f"{n}_median_ms"], c["requests_each"]]
        for n in ("few", "many")
    ]
    emulator = [[e["keys"], e["sequential_ms"], e["parallel_ms"]] for e in alone]
    return markdown(
        "Cold latency on ours, sequential requests with fresh URLs:",
        table(["streams", "keys", "median ms", "requests"], cold),
        f"Ratio {c['many_streams']}/{c['few_streams']} streams: **{c['ratio']}**"
        f" (statuses {c['statuses']}).",
        "The emulator alone (boto3 BatchGetItem of fresh keys, chunks of 100, median):",
        table(["keys", "sequential chunks ms", "parallel chunks ms"], emulator),
        emulator_ratio(s3)
        and f"The emulator alone takes {emulator_ratio(s3):.2f}x as long for {alone[1]['keys']}"
        f" keys as for {alone[0]['keys']} (chunks in parallel): its per-key cost dominates both"
        " figures, so read the service's ratio against this one rather than against 1.0.",
    )


MEMORY = columns(
    "server | PSS 1 worker MiB=w1.pss.total_mib | PSS 4 workers MiB=w4.pss.total_mib"
    " | 4w / 1w=ratio | run=@run",
    run=lambda s: "FAILED" if s["failed"] else "ok",
)
STAMPEDE = columns(
    "server | streams | unique keys=@keys | BatchGetItem calls=calls"
    " | keys requested (moto)=keys_requested | reads per unique key=reads_per_unique_key"
    " | scorer_dynamodb_keys_requested_total delta=metric_keys_requested | statuses",
    keys=lambda c: 3 * int(c["streams"]),
)
BELOW_CAPACITY = columns(
    "model | connections=conns | req/s per round=@rps | p99 ms per round=@p99"
    " | non-2xx=@non_2xx | refused=@shed",
    rps=lambda c: joined(r["rps"] for r in c["rounds"]),
    p99=lambda c: joined(r["p99_ms"] for r in c["rounds"]),
    non_2xx=lambda c: joined((r["non_2xx"] for r in c["rounds"]), str),
    shed=lambda c: joined(r["shed"] for r in c["rounds"]),
)
HEAVY = columns(
    "server | ordinary p50 ms=ordinary_p50_ms | ordinary p99 ms=ordinary_p99_ms"
    " | ordinary req/s=ordinary_rps | heavy p50 ms=heavy_p50_ms | heavy p99 ms=heavy_p99_ms"
    " | heavy req/s=heavy_rps | errors | min worker CPU share=min_worker_share"
    " | UNBALANCED rounds=unbalanced_rounds"
)
HEAVY_RATIOS = columns(
    "ratio ours/seed=name | median | per round=@rounds", rounds=lambda r: joined(r["per_round"])
)


def s8_lines(s8: dict[str, Any]) -> list[str]:
    """Render S8: open-loop load at fractions of each server's capacity."""
    cols = columns(
        "load={load}x | server | capacity req/s=@capacity | offered req/s=offered_rps"
        " | p50 ms=p50_ms | p99 ms=p99_ms | p99.9 ms=p999_ms | answered | failed=@failed"
        " | generator lag p99 ms (worst round)=@lag",
        capacity=lambda s: s8["models"][s["model"]]["capacity"][s["server"]]["rps"],
        failed=lambda s: s["non_2xx"] + s["timeouts"] + s["conn_errors"],
        lag=lambda s: fmt(s["generator_lag_p99_ms_max"]) + (" VOID" if void(s) else ""),
    )
    runs = leaves({m: r["loads"] for m, r in s8["models"].items()}, "model", "load", "server")
    return markdown(
        "## S8: latency at a fixed offered load (open loop)",
        "Poisson arrivals from `bench/openloop.c` (one thread, epoll; latency counted from each"
        " request's scheduled start; the generator's own lag, from the scheduled start to the"
        " write, or to connect() on a new connection, is reported: a round whose generator lags"
        f" is void), {s8['rounds']} rounds of {fmt(s8['seconds'])} s per server and load, servers"
        " alternated; percentiles over all rounds' answers. Capacity: the median of three"
        " closed-loop wrk runs (`-t2 -c8`) just before. A run whose generator lag p99 passed"
        f" {fmt(MAX_LAG_MS)} ms is VOID: the generator, on the same two cores, could not offer"
        " the load on schedule.",
        *(
            [f"### {model} model", "", *grid(cols, [r for r in runs if r["model"] == model])]
            for model in s8["models"]
        ),
    )


def reload_lines(reload: dict[str, Any]) -> list[str]:
    """Render the reload scenario: a new model version published under the S1 load."""
    switch, memory = reload["switch"], reload["memory"]
    phases = {
        "steady, before the upload": switch["steady"],
        "from the upload to the first new worker": switch["switching"],
        f"{switch['after']['seconds']:g} s after the switch (cold caches)": switch["after"],
        "every window": switch["all"],
    }
    cols = columns(
        "phase | windows | requests | errors + non-2xx=errors"
        " | p99 ms (median window)=p99_ms_median | p99 ms (worst window)=p99_ms_max"
        " | req/s (median window)=rps_median"
    )
    pss = columns(
        "1 worker, fresh=pss_mib.w1_fresh | 4 workers before the reload=pss_mib.w4_before_reload"
        " | 4 workers, peak during the switch=pss_mib.w4_peak_during_switch"
        " | 4 workers after the reload=pss_mib.w4_after_reload"
        " | after / 1 worker=ratio_after_over_w1 | peak / before=peak_over_before"
    )
    return markdown(
        "## Reload: a new model version published under the S1 load",
        f"Ours, 2 workers, `MODEL_POLL_SECONDS={reload['poll_seconds']}`, the S1 workload in"
        f" back-to-back wrk windows of {switch['window_s']:g} s; the model is published again to"
        " its key in a versioned bucket (a new version) after the steady windows. The first new"
        f" worker answered {fmt(switch['switch_s']['first_new_worker'])} s after the upload; the"
        f" last old worker was gone after {fmt(switch['switch_s']['last_old_worker_gone'])} s (the"
        " poll period, the check subprocess, the swap, the old workers' drain).",
        grid(cols, leaves(phases, "phase")),
        "p99 after the switch over steady (median windows):"
        f" {fmt(switch['p99_after_over_steady'])}. New workers start with empty feature caches: the"
        " first requests read DynamoDB again.",
        f"Memory model (as S5), PSS of the whole tree after {memory['requests']} requests, the"
        " check subprocess included while it runs:",
        grid(pss, [memory]),
    )


def s9_lines(s9: dict[str, Any], chart: str) -> list[str]:
    """Render S9: overload, with its chart."""
    servers = s9["servers"]
    steps = columns(
        "server=name | capacity req/s=@capacity | offered={load}x | sent"
        " | goodput req/s=goodput_rps | of capacity=goodput_share:.0% | p99 ok ms=ok_p99_ms"
        " | refused=refused_share:.1% | p99 refused ms=refused_p99_ms | timeouts=timeout_share:.1%"
        " | conn errors=conn_errors | lag p99 ms=@lag | accounting",
        capacity=lambda s: servers[s["name"]]["capacity_rps"],
        lag=lambda s: f"{s['lag_p99_ms']}{' VOID' if s['void'] else ''}",
    )
    counted = columns(
        "load | client: reasons=shed_reasons | server: shed=server.shed"
        " | scored after the client left=server.scored_after_client_left"
        " | queue p99 ≤ ms=server.queue_delay_p99_ms"
    )
    rows = leaves({n: srv["steps"] for n, srv in servers.items()}, "name", "load")
    for s in rows:  # whether the step's counts add up, and whether the server's own agree
        s["accounting"] = "ok" if s["accounted"] else "MISMATCH"
        if "server" in s:
            s["accounting"] += ", server agrees" if s["server"]["agrees"] else ", server DISAGREES"
    ours = servers.get("ours", {})
    cost = ours.get("cost")
    return markdown(
        "## S9: overload, 0.5x to 4x each server's capacity, open loop",
        f"4 ms-CPU model, {S9_STREAMS} warm streams, 2 workers; Poisson arrivals for"
        f" {s9['step_seconds']:g} s per step, each request with a {s9['deadline_ms']:g} ms"
        " deadline, announced in `X-Request-Timeout-Ms`, from `bench/openloop.c`. Latency from the"
        " scheduled start; the generator's lag from the scheduled start to the write, or to"
        f" connect() on a new connection. A step whose generator lagged over {s9['lag_limit_ms']:g}"
        " ms (p99) is void.",
        f"![overload]({chart})",
        grid(steps, rows, raw),
        "Ours: refusals by reason as the client read them and as the server counted them, the"
        " requests the server still scored after their client gave up, and the queue delay's p99"
        " (upper bound of its histogram bucket):",
        grid(counted, leaves(ours.get("steps", {}), "load"), raw),
        cost
        and f"A refusal costs a worker {cost['refused_us']:g} us of CPU, a scored request"
        f" {cost['scored_us']:g} us ({cost['refused_over_scored']:.1%}): medians of"
        f" {len(cost['rounds_us']['scored'])} alternated rounds of sequential requests on one"
        " kept-alive connection, the workers' CPU time from /proc.",
    )


SECTIONS: dict[str, Render] = {
    "s1": compared("S1: warm cache, 30 streams x 3 features"),
    "s2": compared(
        "S2: warm cache, 100 streams x 3 features",
        "The seed sends all 300 keys in one BatchGetItem (limit 100), which is refused;\n"
        "it then scores without features (see 'features seen').",
    ),
    "s3": compared("S3: cold, fresh streams on every request (30 streams)", cold_latency_lines),
    "s11": compared("S11: user, global and history features beside streams only (30 warm streams)"),
    "kafka": compared(
        "Kafka: inference event log on (every user, tansu up) vs off, warm, 30 streams"
    ),
    "s4": lambda s4: markdown(
        "## S4: CPU-heavy model (~2 ms predict), 30 streams warm",
        *([f"### {w} worker(s)", "", *compare(r)] for w, r in s4["by_workers"].items()),
    ),
    "s5": lambda s5: markdown(
        f"## S5: memory model (256 MiB array + 1M-float dict), PSS after {s5['requests']} requests",
        grid(MEMORY, leaves(s5["variants"], "server")),
        "PSS is summed over the master (or supervisor) and all its child processes.",
    ),
    "s6": lambda s6: markdown(
        f"## S6: stampede, {s6['copies']} identical cold requests at once",
        grid(STAMPEDE, leaves(s6["servers"], "server", "streams")),
        "Keys counted by moto's own request recording (`KeyCount` in bench/emulator.py), for both"
        " servers.",
    ),
    "s10": lambda s10: markdown(
        f"## S10: closed loop below capacity, {s10['seconds']:g} s rounds (ours, 2 workers)",
        grid(BELOW_CAPACITY, leaves(s10["models"], "model", "conns")),
        "Never more requests in flight than the connections, at most the workers' 2 x 4 threads"
        " with 8: there is no queue to shed, so any refusal is one a client would see as a failure"
        " (a goal row). With 16, twice the threads, the closed loop keeps a queue by itself: what"
        " is refused there is shown, not judged. `refused` is the change in"
        " `scorer_requests_shed_total` over the round.",
    ),
    "s7": lambda s7: markdown(
        "## S7: CPU-heavy requests beside ordinary ones",
        "The mixed model: a request whose user id starts with `heavy` burns about 30 ms of"
        " pure-Python CPU, others score like the simple model. Two wrk at once against each"
        " server: 2 connections of heavy requests and 6 of ordinary 30-stream ones, warm cache.",
        grid(HEAVY, leaves(s7["summary"], "server")),
        grid(HEAVY_RATIOS, leaves(s7["ratios"], "name")),
        ["```", s7["wrk_commands"]["heavy"], s7["wrk_commands"]["ordinary"], "```", ""],
    ),
    "s8": s8_lines,
    "reload": reload_lines,
}


def hotpath_lines(results: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    """Render the in-process profile of a warm request, and S1's worker CPU per request."""
    if not results.get("hotpath"):
        return []
    cpu = {  # the median over S1's rounds of each server's worker CPU microseconds per request
        label: statistics.median(r["worker_cpu_seconds"] / r["requests"] * 1e6 for r in ok)
        for label, rounds in sc.get("s1", {}).get("rounds", {}).items()
        if (ok := [r for r in rounds if r.get("worker_cpu_seconds") and r.get("requests")])
    }
    per_request = ", ".join(f"{label} {us:.0f} us" for label, us in cpu.items())
    return markdown(
        "## Where a warm request's time goes",
        "In process, no HTTP (`python bench/hotpath.py`; minimum of 7 x 2,000 calls, example"
        " model, 30 streams x 3 features from a warm cache):",
        table(["stage", "us per request"], results["hotpath"].items()),
        cpu
        and "Worker CPU per request under wrk in S1 (median over rounds of the workers' CPU time"
        f" from `/proc/PID/stat` divided by the requests answered): {per_request}. The difference"
        " between ours and the floor is the work above; the rest, the same in both, is gunicorn"
        " gthread's own per-request work: a py-spy profile of a worker under load (`py-spy record"
        " --subprocesses -p MASTER_PID -f raw`) puts it in its pure-Python HTTP parser, the"
        " hand-offs between the poller thread and the pool (a pipe write per request) and two"
        " sends per response. Flask's own per-request machinery is not in it: `POST /score` is"
        " plain WSGI in front of Flask (`scorer/http/fastpath.py`).",
    )


def write_markdown(results: dict[str, Any], path: Path, chart: Path) -> None:
    """Write docs/benchmarks.md, and overload.png beside the chart if S9 ran."""
    m, settings, sc = results["machine"], results["settings"], completed(results)
    models = "; ".join(
        f"{name}: predict {fmt(d['predict_ms_30_streams'])} ms on 30 streams,"
        f" {d['pickle_bytes'] / 2**20:,.1f} MiB"
        for name, d in results.get("models", {}).items()
    )
    lines = markdown(
        "# Benchmarks",
        f"Generated by `make bench` (`{results['command']}`) on {results['date']}.",
        results.get("merged"),
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['platform']}.\n"
        f"Load: wrk, closed loop, `-t2 -c8`, {settings['rounds']} rounds of {settings['seconds']}"
        " s per server, servers alternated; medians reported (S8 and S9: open loop,"
        " `bench/openloop.c`). Emulator: moto server on 127.0.0.1 (S3 + DynamoDB). wrk, the"
        " emulator and the servers share the same cores, so absolute numbers are lower than on a"
        " dedicated box; the ratios are the point.",
        "Models (cloudpickled by the seed venv's cloudpickle 2.2.1, one S3 object each, loaded by"
        f" both services): {models}.",
        "## Goals",
        table(["goal", "measured", "target", "result"], goals(sc)),
        shortfall_lines(results, sc),
        f"![chart]({os.path.relpath(chart, path.parent)})",
    )
    for name, crashed in ((k, v) for k, v in results["scenarios"].items() if v.get("error")):
        lines += markdown(f"## {name.upper()}: FAILED", f"`{crashed['error']}`")
    lines += [line for key, render in SECTIONS.items() if key in sc for line in render(sc[key])]
    if "s9" in sc:
        write_overload_chart(sc["s9"], chart.parent / "overload.png")
        lines += s9_lines(sc["s9"], os.path.relpath(chart.parent / "overload.png", path.parent))
    lines += hotpath_lines(results, sc)
    lines += ["## Commands", "", "```", *(f"{k}: {v}" for k, v in results["commands"].items())]
    lines += ["```", "", f"Raw results: `{results['results_file']}`.", ""]
    # Commands name files relative to the checkout, wherever it lives.
    path.write_text("\n".join(lines).replace(f"{REPO}/", ""))


def write_chart(results: dict[str, Any], path: Path) -> None:
    """Draw throughput (S1-S4) and memory (S5) in one PNG."""
    sc = completed(results)
    fig, (rps, s4, s5) = plt.subplots(1, 3, figsize=(15, 4.5))
    bars = {
        f"{key} {label.split('(')[0]}": s["rps"] or 0
        for key in ("s1", "s2", "s3")
        for label, s in sc.get(key, {}).get("summary", {}).items()
    }
    colors = ["C0" if "ours" in x else "C1" if "seed" in x else "C2" for x in bars]
    rps.bar(list(bars), list(bars.values()), color=colors)
    rps.set(title="Throughput, req/s (median, log scale)", yscale="log")
    rps.tick_params(axis="x", rotation=60)
    by_workers = {w: r["summary"] for w, r in sc.get("s4", {}).get("by_workers", {}).items()}
    for kind, color in (("ours", "C0"), ("seed", "C1")):
        runs = [r for r in leaves(by_workers, "workers", "label") if r["label"].startswith(kind)]
        xs, ys = [int(r["workers"]) for r in runs], [r["rps"] or 0 for r in runs]
        s4.plot(xs, ys, "o-", color=color, label=kind)
    s4.set(title="S4 CPU-heavy model: req/s by workers", xlabel="workers", xticks=[1, 2, 4])
    s4.legend()
    variants = sc.get("s5", {}).get("variants", {})
    for shift, workers, label in ((-0.2, "w1", "1 worker"), (0.2, "w4", "4 workers")):
        mib = [v[workers]["pss"]["total_mib"] for v in variants.values()]
        s5.bar([x + shift for x in range(len(mib))], mib, width=0.4, label=label)
    s5.set_xticks(range(len(variants)), list(variants), rotation=20)
    s5.set_title("S5 total PSS, MiB")
    s5.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_overload_chart(s9: dict[str, Any], path: Path) -> None:
    """Draw S9's goodput, and p99 latency, against offered load (as multiples of capacity)."""
    fig, (good, slow) = plt.subplots(1, 2, figsize=(12, 4.5))
    good.plot([0, 1, max(s9["loads"])], [0, 1, 1], ":", color="grey", label="ideal")
    for n, (name, server) in enumerate(s9["servers"].items()):
        steps = list(server["steps"].values())
        xs = [s["multiple"] for s in steps]
        good.plot(xs, [s["goodput_share"] or 0 for s in steps], "o-", color=f"C{n}", label=name)
        for s in (s for s in steps if s["void"]):
            good.plot(s["multiple"], s["goodput_share"] or 0, "x", color="red", markersize=12)
        for key, style, kind in (("ok_p99_ms", "o-", "2xx"), ("refused_p99_ms", "s--", "503")):
            p99 = [s[key] or float("nan") for s in steps]
            slow.plot(xs, p99, style, color=f"C{n}", label=f"{name}: {kind}")
    good.set(title=f"Goodput (2xx within {s9['deadline_ms']:g} ms) / capacity", ylim=(0, 1.1))
    good.set_xlabel("offered load / capacity (red x: generator lagged, void)")
    good.legend()
    slow.set(title="p99 latency from the scheduled start, ms (log)", yscale="log")
    slow.set_xlabel("offered load / capacity")
    slow.axhline(s9["deadline_ms"], color="grey", linestyle=":")
    slow.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    source = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "docs" / "benchmarks.md"
    chart_path = Path(__file__).resolve().parent / "chart.png"
    write_chart(source, chart_path)
    write_markdown(source, out, chart_path)
