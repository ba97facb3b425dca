"""Write docs/benchmarks.md and bench/chart.png from a results dict."""

import os
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import overload
from latency_report import latency_goals, latency_lines
from tables import fmt, goal, table

REPO = Path(__file__).resolve().parent.parent


def compare_section(result: dict[str, Any]) -> list[str]:
    """Render one side-by-side comparison: medians per server, then ratios of ours to each."""
    rows = []
    for label, s in result["summary"].items():
        sample = result["samples"].get(label, {})
        seen = sample.get("features_seen")
        expected = sample.get("features_expected")
        status = "FAILED" if s["failed"] else "ok"
        balance = fmt(s["min_worker_share"])
        if s["unbalanced"]:
            balance += (
                f" UNBALANCED in {s.get('unbalanced_rounds', '?')}/{len(s['rounds_rps'])} rounds"
            )
        if s.get("workers_replaced"):
            balance += " (a worker was replaced)"
        degraded = None if s.get("degraded") is None else int(s["degraded"])
        shed = None if s.get("shed") is None else int(s["shed"])
        features = f"{fmt(seen)}/{fmt(expected)}" if expected else fmt(seen)
        rows.append(
            [
                label,
                s["rps"],
                s["p50_ms"],
                s["p90_ms"],
                s["p99_ms"],
                s["requests"],
                s["errors"],
                shed,
                status,
                balance,
                features,
                degraded,
            ]
        )
    lines = table(
        [
            "server",
            "req/s (median)",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "requests",
            "errors+non-2xx",
            "of which refused (503 overloaded)",
            "run",
            "min worker CPU share",
            "features seen (sample)",
            "scored without some features",
        ],
        rows,
    )
    ratio_rows = [
        [
            f"ours / {other}",
            r["rps"]["median"],
            ", ".join(fmt(x) for x in r["rps"]["per_round"]),
            r["p99"]["median"],
            ", ".join(fmt(x) for x in r["p99"]["per_round"]),
        ]
        for other, r in result["ratios"].items()
    ]
    lines += table(
        ["ratio", "throughput (median)", "per round", "p99 (median)", "per round"], ratio_rows
    )
    lines += ["```", result["wrk_command"], "```", ""]
    return lines


def completed(results: dict[str, Any]) -> dict[str, Any]:
    """Return the scenarios that ran to the end (crashed ones carry only an error)."""
    return {k: v for k, v in results["scenarios"].items() if not v.get("error")}


def goals(results: dict[str, Any]) -> list[list[Any]]:
    """Evaluate the issue's goals from whatever scenarios ran."""
    sc = completed(results)
    rows = []
    if "s1" in sc:
        r = sc["s1"]["ratios"]
        seed = next((v for k, v in r.items() if k.startswith("seed")), None)
        floor = next((v for k, v in r.items() if k.startswith("floor")), None)
        rows.append(goal("S1 throughput ours/seed", seed and seed["rps"]["median"], 3.0, True))
        rows.append(goal("S1 p99 ours/seed", seed and seed["p99"]["median"], 0.5, False))
        rows.append(goal("S1 throughput ours/floor", floor and floor["rps"]["median"], 0.6, True))
        rows.append(goal("S1 p99 ours/seed (no worse)", seed and seed["p99"]["median"], 1.0, False))
        if any(s["failed"] for s in sc["s1"]["summary"].values()):
            rows.append(["S1 run", "FAILED (errors or non-2xx)", "0 errors", "NOT met"])
    if "s3" in sc:
        rows.append(
            goal(
                "S3 cold 300-key / 30-key latency (ours)",
                sc["s3"]["cold_latency"]["ratio"],
                1.5,
                False,
            )
        )
    if "s5" in sc:
        ours = sc["s5"]["variants"].get("ours(freeze=true)")
        rows.append(
            goal(
                "S5 PSS 4 workers / 1 worker (ours, GC_FREEZE=true)",
                ours and ours["ratio"],
                1.2,
                False,
            )
        )
    if "s6" in sc:
        s6_ours: dict[str, Any] = next(
            (v for k, v in sc["s6"]["servers"].items() if k.startswith("ours")), {}
        )
        value = s6_ours.get("100", {}).get("reads_per_unique_key")
        rows.append(goal("S6 DynamoDB reads per unique key (ours, 100 streams)", value, 2.0, False))
    if "s9" in sc:
        rows += [goal(*row) for row in overload.goal_rows(sc["s9"])]
    if "s10" in sc:
        for model, by_conns in sc["s10"]["models"].items():
            for conns, c in by_conns.items():
                if int(conns) > 8:
                    continue  # past the threads the closed loop keeps a queue itself: shown only
                bad = sum((r["errors"] or 0) + (r["shed"] or 0) for r in c["rounds"])
                rows.append(goal(f"S10 {model}, {conns} connections: non-2xx", bad, 0, False))
    if "reload" in sc:
        reload = sc["reload"]
        errors = reload["switch"]["all"]["errors"] + reload["switch"]["all"]["failed_windows"]
        rows.append(goal("Reload: errors and non-2xx under load", errors, 0, False))
        rows.append(
            goal(
                "Reload: PSS 4 workers after a reload / 1 worker",
                reload["memory"]["ratio_after_over_w1"],
                1.2,
                False,
            )
        )
    return rows + latency_goals(sc)


def _by_prefix(summary: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    return next((v for k, v in summary.items() if k.startswith(prefix)), None)


def bound_sentence(floor_rps_ratio: float, floor_p99_ratio: float) -> str:
    """Say which S1 goals the floor itself misses, so no app on that server can meet them."""
    missed = []
    if floor_rps_ratio < 3.0:
        missed.append("the throughput goal")
    if floor_p99_ratio > 0.5:
        missed.append("the p99 goal")
    if not missed:
        return "The floor meets both goals: the distance is the service's own cost."
    return (
        "Doing no work at all, the design's server (synchronous WSGI on gunicorn gthread) misses "
        + " and ".join(missed)
        + " on this machine, so no app served by it can meet "
        + ("it" if len(missed) == 1 else "them")
        + " here: gunicorn's own per-request work is past the bound."
    )


def shortfall_lines(results: dict[str, Any]) -> list[str]:
    """Say, for each goal not met, by how much and what stands in the way, from the figures."""
    sc = completed(results)
    lines: list[str] = []
    s1 = sc.get("s1")
    if s1:
        seed, floor = (_by_prefix(s1["summary"], p) for p in ("seed", "floor"))
        vs_seed = _by_prefix(s1["ratios"], "seed")
        vs_floor = _by_prefix(s1["ratios"], "floor")
        if seed and floor and vs_seed and vs_floor:
            lines += [
                "**S1, throughput ≥ 3.0x and p99 ≤ 0.5x the seed's.** Ours: "
                f"{vs_seed['rps']['median']:.2f}x the seed's throughput and "
                f"{vs_seed['p99']['median']:.2f}x its p99 (medians of the per-round ratios). "
                "The floor, gunicorn gthread with the same workers and threads answering a fixed "
                "JSON after parsing the body (no features, no model), reaches "
                f"{floor['rps'] / seed['rps']:.2f}x the seed's throughput with "
                f"{floor['p99_ms'] / seed['p99_ms']:.2f}x its p99 (ratios of the medians). "
                + bound_sentence(floor["rps"] / seed["rps"], floor["p99_ms"] / seed["p99_ms"])
                + f" Ours reaches {vs_floor['rps']['median']:.0%} of the floor's throughput"
                " (goal 60%).",
                "",
            ]
            ours = _by_prefix(s1["summary"], "ours")
            if ours and vs_seed["p99"]["median"] > 0.5:
                lines += [
                    f"The tail: ours {ours['p99_ms']:.1f} ms at p99, the floor "
                    f"{floor['p99_ms']:.1f} ms, the seed {seed['p99_ms']:.1f} ms. A worker's"
                    " threads share one GIL, so a request waits behind the others in its worker;"
                    " fewer threads shorten the tail at the same throughput. A side run,"
                    " `THREADS=2 python bench/run.py --only s1 --rounds 3 --report REPORT.md`"
                    " (results `bench/results/bench-20261127T020048Z.json`), gave 1.23x the seed's"
                    " throughput and 0.88x its p99, against"
                    f" {vs_seed['p99']['median']:.2f}x in this run at {threads_used(results)}"
                    " threads, the default,"
                    " which keeps more requests going while DynamoDB is slow (README,"
                    " `THREADS`).",
                    "",
                ]
    s3 = sc.get("s3")
    alone = (s3 or {}).get("emulator_alone", [])
    if s3 and s3.get("cold_latency") and len(alone) == 2:
        emulator = alone[1]["parallel_ms"] / alone[0]["parallel_ms"]
        lines += [
            "**S3, a 300-key cold request ≤ 1.5x a 30-key one.** Ours: "
            f"{s3['cold_latency']['ratio']:.2f}x. The emulator alone, chunks read in parallel "
            f"exactly as the service does, takes {emulator:.2f}x as long for 300 keys as for "
            "30: moto answers from one Python process, so three concurrent chunks cost it about "
            "three times one chunk. The service adds no serial cost on top (its ratio is below "
            "the emulator's); against DynamoDB, where chunks are served in parallel, the goal "
            "depends on DynamoDB's latency, which this machine cannot measure.",
            "",
        ]
    return lines


def hotpath_lines(results: dict[str, Any]) -> list[str]:
    """Render the in-process profile of a warm 30-stream request."""
    hot = results.get("hotpath")
    if not hot:
        return []
    lines = [
        "## Where a warm request's time goes",
        "",
        "In process, no HTTP (`python bench/hotpath.py`; minimum of 7 x 2,000 calls, example"
        " model, 30 streams x 3 features from a warm cache):",
        "",
    ]
    lines += table(["stage", "us per request"], [[k, v] for k, v in hot.items()])
    cpu = cpu_per_request(results)
    if cpu:
        lines += [
            "Worker CPU per request under wrk in S1 (median over rounds of the workers' CPU"
            " time from `/proc/PID/stat` divided by the requests answered): "
            + ", ".join(f"{label} {us:.0f} us" for label, us in cpu.items())
            + ". The difference between ours and the floor is the work above; the rest,"
            " the same in both, is gunicorn gthread's own per-request work: a py-spy profile of"
            " a worker under load (`py-spy record --subprocesses -p MASTER_PID -f raw`) puts it"
            " in its pure-Python HTTP parser, the hand-offs between the poller thread and the"
            " pool (a pipe write per request) and two sends per response. Flask's own"
            " per-request machinery is not in it: `POST /score` is plain WSGI in front of Flask"
            " (`scorer/http/fastpath.py`).",
            "",
        ]
    return lines


def threads_used(results: dict[str, Any]) -> str:
    """Return the THREADS value this run gave the servers."""
    env = results.get("commands", {}).get("ours env", "")
    return next((part.split("=", 1)[1] for part in env.split() if part.startswith("THREADS=")), "?")


def cpu_per_request(results: dict[str, Any]) -> dict[str, float]:
    """Return the median worker CPU microseconds per request of each S1 server."""
    s1 = completed(results).get("s1")
    if not s1:
        return {}
    out = {}
    for label, rounds in s1.get("rounds", {}).items():
        per = [
            r["worker_cpu_seconds"] / r["requests"] * 1e6
            for r in rounds
            if r.get("worker_cpu_seconds") and r.get("requests")
        ]
        if per:
            out[label] = statistics.median(per)
    return out


def cold_latency_lines(s3: dict[str, Any]) -> list[str]:
    """Render the 100-stream vs 10-stream cold latency of ours, and the emulator's own share."""
    c = s3.get("cold_latency")
    if not c:
        return []
    lines = ["Cold latency on ours, sequential requests with fresh URLs:", ""]
    lines += table(
        ["streams", "keys", "median ms", "requests"],
        [
            [c["few_streams"], 3 * c["few_streams"], c["few_median_ms"], c["requests_each"]],
            [c["many_streams"], 3 * c["many_streams"], c["many_median_ms"], c["requests_each"]],
        ],
    )
    lines += [
        f"Ratio {c['many_streams']}/{c['few_streams']} streams: **{c['ratio']}**"
        f" (statuses {c['statuses']}).",
        "",
        "The emulator alone (boto3 BatchGetItem of fresh keys, chunks of 100, median):",
        "",
    ]
    alone = s3.get("emulator_alone", [])
    lines += table(
        ["keys", "sequential chunks ms", "parallel chunks ms"],
        [[e["keys"], e["sequential_ms"], e["parallel_ms"]] for e in alone],
    )
    if len(alone) == 2:
        lines += [
            f"The emulator alone takes {alone[1]['parallel_ms'] / alone[0]['parallel_ms']:.2f}x"
            f" as long for {alone[1]['keys']} keys as for {alone[0]['keys']} (chunks in parallel):"
            " its per-key cost dominates both figures, so read the service's ratio against this"
            " one rather than against 1.0.",
            "",
        ]
    return lines


def scenario_sections(results: dict[str, Any]) -> list[str]:
    """Render every scenario that ran; a crashed one shows its error."""
    sc = completed(results)
    lines: list[str] = []
    for name, crashed in results["scenarios"].items():
        if crashed.get("error"):
            lines += [f"## {name.upper()}: FAILED", "", f"`{crashed['error']}`", ""]
    titles = {
        "s1": "S1: warm cache, 30 streams x 3 features",
        "s2": "S2: warm cache, 100 streams x 3 features",
        "s3": "S3: cold, fresh streams on every request (30 streams)",
        "s11": "S11: user, global and history features beside streams only (30 warm streams)",
        "kafka": "Kafka: inference event log on (every user, tansu up) vs off, warm, 30 streams",
    }
    notes = {
        "s2": [
            "The seed sends all 300 keys in one BatchGetItem (limit 100), which is refused;",
            "it then scores without features (see 'features seen').",
            "",
        ],
        "s3": cold_latency_lines(sc.get("s3", {})),
    }
    for key, title in titles.items():
        if key in sc:
            lines += [f"## {title}", "", *compare_section(sc[key]), *notes.get(key, [])]
    if "s4" in sc:
        lines += ["## S4: CPU-heavy model (~2 ms predict), 30 streams warm", ""]
        for workers, result in sc["s4"]["by_workers"].items():
            lines += [f"### {workers} worker(s)", "", *compare_section(result)]
    if "s5" in sc:
        lines += [
            "## S5: memory model (256 MiB array + 1M-float dict),"
            f" PSS after {sc['s5']['requests']} requests",
            "",
        ]
        rows = [
            [
                name,
                v["w1"]["pss"]["total_mib"],
                v["w4"]["pss"]["total_mib"],
                v["ratio"],
                "FAILED" if v["failed"] else "ok",
            ]
            for name, v in sc["s5"]["variants"].items()
        ]
        lines += table(["server", "PSS 1 worker MiB", "PSS 4 workers MiB", "4w / 1w", "run"], rows)
        lines += ["PSS is summed over the master (or supervisor) and all its child processes.", ""]
    if "s6" in sc:
        s6 = sc["s6"]
        lines += [f"## S6: stampede, {s6['copies']} identical cold requests at once", ""]
        rows = []
        for label, by_streams in s6["servers"].items():
            for streams, c in by_streams.items():
                rows.append(
                    [
                        label,
                        streams,
                        3 * int(streams),
                        c["calls"],
                        c["keys_requested"],
                        c["reads_per_unique_key"],
                        c.get("metric_keys_requested"),
                        c["statuses"],
                    ]
                )
        lines += table(
            [
                "server",
                "streams",
                "unique keys",
                "BatchGetItem calls",
                "keys requested (proxy)",
                "reads per unique key",
                f"{'scorer_dynamodb_keys_requested_total'} delta",
                "statuses",
            ],
            rows,
        )
        lines += [
            "Keys counted by a proxy in front of the emulator (bench/proxy.py), for both servers.",
            "",
        ]
    if "s10" in sc:
        lines += s10_lines(sc["s10"])
    return lines


def s10_lines(s10: dict[str, Any]) -> list[str]:
    """Render the below-capacity scenario: every round's answers, refusals and tail."""
    lines = [
        f"## S10: closed loop below capacity, {s10['seconds']:g} s rounds (ours, 2 workers)",
        "",
    ]
    rows = []
    for model, by_conns in s10["models"].items():
        for conns, c in by_conns.items():
            rounds = c["rounds"]
            rows.append(
                [
                    model,
                    conns,
                    ", ".join(fmt(r["rps"]) for r in rounds),
                    ", ".join(fmt(r["p99_ms"]) for r in rounds),
                    ", ".join(str(r["non_2xx"]) for r in rounds),
                    ", ".join(fmt(r["shed"]) for r in rounds),
                ]
            )
    lines += table(
        ["model", "connections", "req/s per round", "p99 ms per round", "non-2xx", "refused"],
        rows,
    )
    lines += [
        "Never more requests in flight than the connections, at most the workers' 2 x 4 threads"
        " with 8: there is no queue to shed, so any refusal is one a client would see as a"
        " failure (a goal row). With 16, twice the threads, the closed loop keeps a queue by"
        " itself: what is refused there is shown, not judged. `refused` is the change in"
        " `scorer_requests_shed_total` over the round.",
        "",
    ]
    return lines


def reload_lines(reload: dict[str, Any]) -> list[str]:
    """Render the reload scenario: a new model version published under the S1 load."""
    switch, memory = reload["switch"], reload["memory"]
    first_new = fmt(switch["switch_s"]["first_new_worker"])
    last_old = fmt(switch["switch_s"]["last_old_worker_gone"])
    lines = [
        "## Reload: a new model version published under the S1 load",
        "",
        f"Ours, 2 workers, `MODEL_POLL_SECONDS={reload['poll_seconds']}`, the S1 workload in"
        f" back-to-back wrk windows of {switch['window_s']:g} s; the model is published again"
        " to its key in a versioned bucket (a new version) after the steady windows. The first"
        f" new worker answered {first_new} s after the upload; the last old worker was gone"
        f" after {last_old} s"
        " (the poll period, the check subprocess, the swap, the old workers' drain).",
        "",
    ]
    phases = [
        ("steady, before the upload", switch["steady"]),
        ("from the upload to the first new worker", switch["switching"]),
        (f"{switch['after']['seconds']:g} s after the switch (cold caches)", switch["after"]),
        ("every window", switch["all"]),
    ]
    rows = [
        [
            name,
            f["windows"],
            f["requests"],
            f["errors"],
            f["p99_ms_median"],
            f["p99_ms_max"],
            f["rps_median"],
        ]
        for name, f in phases
    ]
    lines += table(
        [
            "phase",
            "windows",
            "requests",
            "errors + non-2xx",
            "p99 ms (median window)",
            "p99 ms (worst window)",
            "req/s (median window)",
        ],
        rows,
    )
    pss = memory["pss_mib"]
    lines += [
        "p99 after the switch over steady (median windows): "
        f"{fmt(switch['p99_after_over_steady'])}."
        " New workers start with empty feature caches: the first requests read DynamoDB again.",
        "",
        f"Memory model (as S5), PSS of the whole tree after {memory['requests']} requests,"
        " the check subprocess included while it runs:",
        "",
    ]
    lines += table(
        [
            "1 worker, fresh",
            "4 workers before the reload",
            "4 workers, peak during the switch",
            "4 workers after the reload",
            "after / 1 worker",
            "peak / before",
        ],
        [
            [
                pss["w1_fresh"],
                pss["w4_before_reload"],
                pss["w4_peak_during_switch"],
                pss["w4_after_reload"],
                memory["ratio_after_over_w1"],
                memory["peak_over_before"],
            ]
        ],
    )
    return lines


def write_markdown(results: dict[str, Any], path: Path, chart: Path) -> None:
    """Write docs/benchmarks.md."""
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`{results['command']}`) on {results['date']}.",
        "",
        *([results["merged"], ""] if results.get("merged") else []),
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['platform']}.",
        f"Load: wrk, closed loop, `-t2 -c8`, {results['settings']['rounds']} rounds of "
        f"{results['settings']['seconds']} s per server, servers alternated; medians reported"
        " (S8 and S9: open loop, `bench/openloop.c`). "
        "Emulator: moto server on 127.0.0.1 (S3 + DynamoDB). wrk, the emulator and the servers"
        " share the same cores, so absolute numbers are lower than on a dedicated box;"
        " the ratios are the point.",
        "",
        "Models (cloudpickled by the seed venv's cloudpickle 2.2.1, one S3 object each, loaded by"
        " both services): "
        + "; ".join(
            f"{name}: predict {fmt(d['predict_ms_30_streams'])} ms on 30 streams,"
            f" {d['pickle_bytes'] / 2**20:,.1f} MiB"
            for name, d in results.get("models", {}).items()
        )
        + ".",
        "",
        "## Goals",
        "",
    ]
    lines += table(["goal", "measured", "target", "result"], goals(results))
    lines += shortfall_lines(results)
    lines += [
        f"![chart]({os.path.relpath(chart, path.parent)})",
        "",
    ]
    lines += scenario_sections(results)
    lines += latency_lines(completed(results))
    if "reload" in completed(results):
        lines += reload_lines(completed(results)["reload"])
    if "s9" in completed(results):
        s9_chart = chart.parent / "overload.png"
        overload.write_chart(completed(results)["s9"], s9_chart)
        lines += overload.report_lines(
            completed(results)["s9"], os.path.relpath(s9_chart, path.parent)
        )
    lines += hotpath_lines(results)
    lines += ["## Commands", "", "```"]
    lines += [f"{label}: {cmd}" for label, cmd in results["commands"].items()]
    lines += ["```", "", f"Raw results: `{results['results_file']}`.", ""]
    # Commands name files relative to the checkout, wherever it lives.
    path.write_text("\n".join(lines).replace(f"{REPO}/", ""))


def write_chart(results: dict[str, Any], path: Path) -> None:
    """Draw throughput (S1-S4) and memory (S5) in one PNG."""
    sc = completed(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    labels, values = [], []
    for key in ("s1", "s2", "s3"):
        for label, s in sc.get(key, {}).get("summary", {}).items():
            labels.append(f"{key} {label.split('(')[0]}")
            values.append(s["rps"] or 0)
    axes[0].bar(
        labels,
        values,
        color=["C0" if "ours" in x else "C1" if "seed" in x else "C2" for x in labels],
    )
    axes[0].set_title("Throughput, req/s (median, log scale)")
    axes[0].set_yscale("log")
    axes[0].tick_params(axis="x", rotation=60)
    for kind, color in (("ours", "C0"), ("seed", "C1")):
        xs, ys = [], []
        for workers, result in sc.get("s4", {}).get("by_workers", {}).items():
            for label, s in result["summary"].items():
                if label.startswith(kind):
                    xs.append(int(workers))
                    ys.append(s["rps"] or 0)
        axes[1].plot(xs, ys, "o-", color=color, label=kind)
    axes[1].set_title("S4 CPU-heavy model: req/s by workers")
    axes[1].set_xlabel("workers")
    axes[1].set_xticks([1, 2, 4])
    axes[1].legend()
    names, w1, w4 = [], [], []
    for name, v in sc.get("s5", {}).get("variants", {}).items():
        names.append(name)
        w1.append(v["w1"]["pss"]["total_mib"])
        w4.append(v["w4"]["pss"]["total_mib"])
    xs = list(range(len(names)))
    axes[2].bar([x - 0.2 for x in xs], w1, width=0.4, label="1 worker")
    axes[2].bar([x + 0.2 for x in xs], w4, width=0.4, label="4 workers")
    axes[2].set_xticks(xs, names, rotation=20)
    axes[2].set_title("S5 total PSS, MiB")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    # Re-render docs/benchmarks.md and the chart from a results file:
    # report.py RESULTS.json [OUT.md]
    import json
    import sys

    source = json.loads(Path(sys.argv[1]).read_text())
    out = (
        Path(sys.argv[2])
        if len(sys.argv) > 2
        else Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    )
    chart_path = Path(__file__).resolve().parent / "chart.png"
    write_chart(source, chart_path)
    write_markdown(source, out, chart_path)
