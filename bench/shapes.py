"""The load shapes scenarios are made of: each drives some servers one way and returns a dict.

A shape takes the bench, the servers (specs) the scenario names and the scenario's options;
its dict is what `bench/results/*.json` keeps and `report.py` renders.
"""

import statistics
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import openloop
from client import post_score, read_metric, send_all, send_at_once
from emulator import KeyCount, time_batch_gets
from load import (
    BODIES,
    Args,
    Workload,
    cold_urls,
    make_body,
    parse_wrk,
    run_wrk,
    warm_urls,
    write_lua,
    wrk_command,
)
from procs import free_port, tree_pss_mib
from rounds import alternate, balance, median_of, ms, round_ratios, summarize
from servers import THREADS, Bench, Server, ServerSpec, running

from examples.local_kafka import count_events, create_topic, start_tansu

# Requests our service scored without some features (timeout, errors): a silent quality loss.
DEGRADED_METRIC = "scorer_degraded_requests_total"
# Requests our service refused to stay within capacity (503 overloaded), all reasons.
SHED_METRIC = "scorer_requests_shed_total"
KEYS_METRIC = "scorer_dynamodb_keys_requested_total"
WARM = Workload(30)


def delta(before: float | None, after: float | None) -> float | None:
    """Return after - before, or None when the server has no such metric."""
    return None if after is None else after - (before or 0.0)


def warm(server: Server, workload: Workload, lua: Args, seconds: float) -> dict[str, Any]:
    """Fill every worker's cache, then run wrk until throughput settles, before measuring.

    Each body goes to the server on fresh connections several times per worker, so every worker
    sees it whatever the kernel's accept order; then short wrk runs repeat until two in a row
    agree within 15% (at most four), which also warms allocators and code paths.
    """
    primed: dict[str, int] = {}
    if not workload.cold:
        bodies = [make_body(f"u{k}", warm_urls(k, workload.streams)) for k in range(BODIES)]
        primed = send_all(server.base, bodies * 3 * max(1, len(server.workers)), keepalive=False)
    runs: list[dict[str, Any]] = []
    while len(runs) < 4:
        runs.append(run_wrk(server.base, lua, seconds))
        rps = [r.get("rps") or 0 for r in runs]
        if len(rps) >= 2 and abs(rps[-1] - rps[-2]) <= 0.15 * max(rps[-1], 1):
            break
    return {"primed": primed, "wrk_rps": rps, "ok": all(r.get("ok") for r in runs)}


@contextmanager
def warmed(
    bench: Bench, specs: Iterable[ServerSpec], workload: Workload, lua: Args
) -> Iterator[tuple[list[Server], dict[str, Any]]]:
    """Start specs together and warm each; yield them and how their warm-ups went."""
    with ExitStack() as stack:
        servers = [stack.enter_context(running(spec, bench)) for spec in specs]
        yield servers, {s.label: warm(s, workload, lua, bench.warmup) for s in servers}


def closed(bench: Bench, *specs: ServerSpec, workload: Workload = WARM) -> dict[str, Any]:
    """Start specs together, warm each, alternate wrk rounds, and compare ours with the rest."""
    lua = write_lua(workload)
    metrics = (DEGRADED_METRIC, SHED_METRIC)
    with warmed(bench, specs, workload, lua) as (servers, warmups):
        before = {s.label: [read_metric(s.base, m) for m in metrics] for s in servers}
        raw = alternate(servers, bench.rounds, lambda s: run_wrk(s.base, lua, bench.seconds))
        after = {s.label: [read_metric(s.base, m) for m in metrics] for s in servers}
        samples = {s.label: sample(s, workload) for s in servers}
        commands = {s.label: " ".join(s.cmd) for s in servers}
    summary = {label: summarize(rounds) for label, rounds in raw.items()}
    for label, s in summary.items():
        s["degraded"], s["shed"] = map(delta, before[label], after[label])
    ours = next(label for label in raw if label.startswith("ours"))
    ratios = {
        other: {
            "rps": round_ratios(raw[ours], raw[other], "rps"),
            "p99": round_ratios(raw[ours], raw[other], "latency_us", "p99"),
        }
        for other in raw
        if other != ours
    }
    return {
        "workload": workload.name,
        "summary": summary,
        "ratios": ratios,
        "samples": samples,
        "warmup": warmups,
        "server_commands": commands,
        "wrk_command": next(iter(raw.values()))[0].get("cmd", ""),
        "rounds": raw,
    }


def sample(server: Server, workload: Workload) -> dict[str, Any]:
    """Post one body and keep what a reader needs: status and features seen."""
    tag = uuid.uuid4().hex[:8]
    urls = cold_urls(tag, workload.streams) if workload.cold else warm_urls(1, workload.streams)
    status, data, elapsed = post_score(server.base, make_body("sample", urls))
    if isinstance(data, list):  # one dict per stream (the ranked model)
        seen = sum(item.get("features_seen", 0) for item in data if isinstance(item, dict))
    else:
        seen = data.get("features_seen") if isinstance(data, dict) else None
    return {
        "status": status,
        "features_seen": seen,
        "features_expected": None if workload.cold or seen is None else 3 * workload.streams,
        "ms": round(elapsed * 1000, 2),
    }


def cold(bench: Bench, *specs: ServerSpec, many: int = 100, few: int = 10) -> dict[str, Any]:
    """Compare on fresh streams; then ours' cold latency, many streams over few, and moto's."""
    result = closed(bench, *specs, workload=Workload(30, cold=True))
    with running(specs[0], bench) as ours:
        times: dict[int, list[float]] = {few: [], many: []}
        statuses: dict[int, int] = {}
        for streams in (few, many, few, many):
            for _ in range(25):
                body = make_body("cold", cold_urls(uuid.uuid4().hex[:12], streams))
                status, _, elapsed = post_score(ours.base, body)
                statuses[status] = statuses.get(status, 0) + 1
                times[streams].append(elapsed * 1000)
    few_ms, many_ms = statistics.median(times[few]), statistics.median(times[many])
    result["cold_latency"] = {
        "few_streams": few,
        "many_streams": many,
        "requests_each": len(times[few]),
        "few_median_ms": round(few_ms, 2),
        "many_median_ms": round(many_ms, 2),
        "ratio": round(many_ms / few_ms, 3),
        "statuses": statuses,
    }
    result["emulator_alone"] = [time_batch_gets(bench.endpoint, keys) for keys in (30, 300)]
    return result


def by_workers(bench: Bench, *specs: ServerSpec, workers: tuple[int, ...]) -> dict[str, Any]:
    """The closed-loop comparison once per worker count."""
    return {
        "by_workers": {str(n): closed(bench, *(s.using(workers=n) for s in specs)) for n in workers}
    }


def memory(bench: Bench, *specs: ServerSpec, requests: int = 2000) -> dict[str, Any]:
    """Serve N requests on 1 and on 4 workers: total PSS after them, and 4w/1w."""
    bodies = [make_body(f"u{k}", warm_urls(k % BODIES, 30)) for k in range(requests)]
    out: dict[str, Any] = {}
    for spec in specs:
        row: dict[str, Any] = {}
        for workers in (1, 4):
            with running(spec.using(workers=workers), bench) as server:
                statuses = send_all(server.base, bodies)
                row[f"w{workers}"] = {"pss": tree_pss_mib(server.proc.pid), "statuses": statuses}
        row["ratio"] = round(row["w4"]["pss"]["total_mib"] / row["w1"]["pss"]["total_mib"], 3)
        row["failed"] = any(code != "200" for w in ("w1", "w4") for code in row[w]["statuses"])
        freeze = f"(freeze={str(spec.gc_freeze).lower()})" if spec.kind == "ours" else ""
        out[spec.kind + freeze] = row
    return {"requests": requests, "variants": out}


def stampede(bench: Bench, *specs: ServerSpec, copies: int = 16) -> dict[str, Any]:
    """Identical cold requests at once: DynamoDB keys read per unique key, counted by moto."""
    counter = KeyCount(bench.endpoint)
    out: dict[str, Any] = {"copies": copies, "servers": {}}
    try:
        for spec in specs:
            with running(spec, bench) as target:
                for streams in (100, 30):
                    counter.reset()
                    before = read_metric(target.base, KEYS_METRIC)
                    body = make_body("stampede", cold_urls(uuid.uuid4().hex[:12], streams))
                    statuses = send_at_once(target.base, body, copies)
                    after = read_metric(target.base, KEYS_METRIC)
                    counts: dict[str, Any] = counter.snapshot()
                    unique = 3 * streams
                    counts["reads_per_unique_key"] = round(counts["keys_requested"] / unique, 2)
                    if before is not None and after is not None:
                        counts["metric_keys_requested"] = after - before
                        counts["metric_reads_per_unique_key"] = round((after - before) / unique, 2)
                    counts["statuses"] = {str(s): statuses.count(s) for s in set(statuses)}
                    out["servers"].setdefault(target.label, {})[str(streams)] = counts
    finally:
        counter.stop()
    return out


def mixed(
    bench: Bench, *specs: ServerSpec, heavy_conns: int = 2, ordinary_conns: int = 6
) -> dict[str, Any]:
    """Two wrk at once on each server: heavy users' requests beside ordinary ones."""
    luas = {"heavy": write_lua(Workload(30, user="heavy"))}
    luas["ordinary"] = lua = write_lua(WARM)
    conns = {"heavy": heavy_conns, "ordinary": ordinary_conns}

    def wrk(url: str, part: str) -> list[str]:
        n = conns[part]
        return wrk_command(url, luas[part], bench.seconds, threads=min(2, n), conns=n)

    def both(server: Server) -> dict[str, Any]:
        cmds = {part: wrk(server.base, part) for part in luas}
        procs = {
            part: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for part, cmd in cmds.items()
        }
        out = {
            p: parse_wrk(cmds[p], proc.communicate(timeout=bench.seconds + 60)[0])
            for p, proc in procs.items()
        }
        return {**out, "ok": all(out[p].get("ok") for p in cmds)}

    with warmed(bench, specs, WARM, lua) as (servers, warmups):
        raw = alternate(servers, bench.rounds, both)
        commands = {s.label: " ".join(s.cmd) for s in servers}
    ours, seed = (next(label for label in raw if label.startswith(k)) for k in ("ours", "seed"))
    return {
        "summary": {label: summarize_mixed(rounds) for label, rounds in raw.items()},
        "ratios": {
            f"{part}_{field}": round_ratios(raw[ours], raw[seed], part, *path)
            for part, field, path in (
                ("ordinary", "p99", ("latency_us", "p99")),
                ("ordinary", "p50", ("latency_us", "p50")),
                ("heavy", "rps", ("rps",)),
                ("ordinary", "rps", ("rps",)),
            )
        },
        "wrk_commands": {part: " ".join(wrk("URL", part)) for part in luas},
        "warmup": warmups,
        "server_commands": commands,
        "rounds": raw,
    }


PARTS = ("ordinary", "heavy")


def summarize_mixed(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of both parts' latency and throughput."""
    out: dict[str, Any] = {}
    for part in PARTS:
        for q in ("p50", "p99"):
            out[f"{part}_{q}_ms"] = ms(median_of(rounds, part, "latency_us", q, digits=2))
        out[f"{part}_rps"] = median_of(rounds, part, "rps", digits=2)
    out["errors"] = sum(r.get(p, {}).get("errors_total", 0) for r in rounds for p in PARTS)
    out["failed"] = not all(r.get("ok") for r in rounds)
    shares = balance(rounds)
    return out | {k: shares[k] for k in ("unbalanced_rounds", "min_worker_share")}


def fixed_load(
    bench: Bench, *specs: ServerSpec, models: tuple[str, ...], loads: tuple[float, ...]
) -> dict[str, Any]:
    """Open-loop Poisson arrivals at fractions of each server's closed-loop capacity."""
    lua = write_lua(WARM)
    seconds, rounds = max(bench.seconds, 8.0), min(bench.rounds, 3)
    bodies = [(f"u{k}", make_body(f"u{k}", warm_urls(k, 30))) for k in range(BODIES)]
    out: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "models": {}}
    for model in models:
        with warmed(bench, (s.using(model=model) for s in specs), WARM, lua) as (servers, _):
            caps = {s.label: capacity(s, lua, bench.seconds) for s in servers}
            by_load: dict[str, Any] = {}
            for load in loads:
                raw: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers}
                for _ in range(rounds):
                    for s in servers:
                        rate = load * (caps[s.label]["rps"] or 1.0)
                        url = s.base + "/score"
                        run = openloop.run(url, bodies, rate, seconds, 10.0, keep_samples=True)
                        raw[s.label].append(run)
                by_load[str(load)] = {label: pooled(r) for label, r in raw.items()}
        out["models"][model] = {"capacity": caps, "loads": by_load}
    return out


def capacity(server: Server, lua: Args, seconds: float) -> dict[str, Any]:
    """Measure a server's throughput with closed-loop wrk: the median of three short runs."""
    runs = [{"rps": run_wrk(server.base, lua, seconds).get("rps")} for _ in range(3)]
    return {"rps": median_of(runs, "rps", digits=2), "runs": [r["rps"] for r in runs]}


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


def below_capacity(
    bench: Bench, spec: ServerSpec, models: tuple[str, ...], conns: tuple[int, ...], seconds: float
) -> dict[str, Any]:
    """Closed loop at connection counts up to twice the threads: refusals and errors per round."""
    threads = spec.workers * THREADS
    lua = write_lua(WARM)
    out: dict[str, Any] = {"seconds": seconds, "models": {}}
    for model in models:
        with running(spec.using(model=model), bench) as server:
            warm(server, WARM, lua, bench.warmup)
            by_conns: dict[str, Any] = {}
            for n in conns:
                rounds = []
                for _ in range(bench.rounds):
                    shed_before = read_metric(server.base, SHED_METRIC)
                    result = run_wrk(server.base, lua, seconds, conns=n)
                    rounds.append(
                        {
                            "rps": result.get("rps"),
                            "p99_ms": ms(result.get("latency_us", {}).get("p99")),
                            "non_2xx": result.get("errors", {}).get("status"),
                            "errors": result.get("errors_total"),
                            "shed": delta(shed_before, read_metric(server.base, SHED_METRIC)),
                        }
                    )
                # Up to the threads nothing ever waits for one: a refusal there fails the run.
                # Past them the closed loop itself keeps a queue.
                bad = any(r["errors"] != 0 or r["shed"] for r in rounds) and n <= threads
                by_conns[str(n)] = {"rounds": rounds, "failed": bad, "wrk_command": result["cmd"]}
            out["models"][model] = by_conns
    out["failed"] = any(c["failed"] for m in out["models"].values() for c in m.values())
    return out


def kafka(bench: Bench, on: ServerSpec, off: ServerSpec) -> dict[str, Any]:
    """Ours with the event log on (every request, a local tansu broker) against it off."""
    port = free_port()
    with (bench.log_dir / "tansu.log").open("wb") as log:
        broker = start_tansu(port, log)
    try:
        bootstrap, topic = f"127.0.0.1:{port}", "bench-events"
        create_topic(bootstrap, topic)
        env = (("KAFKA_BOOTSTRAP_SERVERS", bootstrap), ("KAFKA_TOPIC", topic), *on.env)
        result = closed(bench, on.using(env=env), off)  # the first is the one ratios are of
        result["events_in_topic"] = count_events(bootstrap, topic)  # the servers have flushed
        return result
    finally:
        broker.terminate()
        broker.wait(timeout=10)
