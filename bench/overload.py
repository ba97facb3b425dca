"""Scenario s9: overload. Each server's capacity, then 0.5x to 4x of it offered, open loop.

    .venv/bin/python bench/run.py --only s9          # inside the harness (and in `make bench`)
    .venv/bin/python bench/overload.py [--short]     # alone: emulator, models, this scenario

The 4 ms-CPU model, 30 warm streams a request, 2 workers. For each server: its capacity,
closed loop (wrk -t2 -c8, as S1, after the same warm-up); then Poisson arrivals at 0.5x, 0.8x,
1x, 2x and 4x of it (bench/openloop.py, its schedule kept by bench/openloop.c), each request
with a 250 ms client deadline that it also announces (`X-Request-Timeout-Ms: 250`, as a proxy
such as Envoy would; the seed ignores it). Servers: ours, ours with `SHEDDING=false` (the
service before load shedding), the seed.

Per step: goodput (2xx within the deadline per second, and as a share of capacity), p99 of
successes and of refusals (latency from the scheduled start), share refused, timeouts,
connection errors, the generator's lag (a step whose p99 lag is over LAG_LIMIT_MS is void), and
the accounting: sent = 2xx + 503 + other statuses + timeouts + connection errors on the client;
for ours, every request sent counted once by the server (`scorer_requests_total`), the
refusals by reason agreeing with the reasons the client read, and the requests the server
scored after their client had given up. Ours also gets a refusal's worker CPU against a scored
request's (sequential requests on one kept-alive connection, /proc CPU time of the workers).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import openloop
from alone import fresh_bench, output_path
from client import connect, post_score
from load import BODIES, Workload, make_body, run_wrk, warm_urls, write_lua
from procs import cpu_seconds
from scenarios import Bench, warm
from servers import Server, ServerSpec, running

LOADS = (0.5, 0.8, 1.0, 2.0, 4.0)
DEADLINE_MS = 250.0
LAG_LIMIT_MS = 10.0
STREAMS = 30
SETTLE_TIMEOUT = 60.0  # seconds a server may take to work off a step's backlog
COST_ROUNDS = 5
COST_SCORED, COST_REFUSED = 200, 2000  # requests per round: /proc counts CPU in 10 ms ticks


@dataclass(frozen=True)
class Contender:
    """A server under test: a name for the report, what to run, whether it has our metrics."""

    name: str
    spec: ServerSpec
    ours: bool


def contenders(bench: Bench) -> list[Contender]:
    model = bench.models["cpu4"]
    return [
        Contender("ours", ServerSpec("ours", model, 2, bench.endpoint), True),
        Contender(
            "ours, no shedding",
            ServerSpec("ours", model, 2, bench.endpoint, extra_env=(("SHEDDING", "false"),)),
            True,
        ),
        Contender("seed", ServerSpec("seed", model, 2, bench.endpoint), False),
    ]


def s9_overload(
    bench: Bench,
    loads: tuple[float, ...] = LOADS,
    seconds: float | None = None,
    names: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Overload: 0.5x to 4x each server's capacity, open loop, 250 ms deadline (4 ms-CPU model)."""
    step_seconds = seconds or 2 * bench.seconds
    workload = Workload(STREAMS)
    lua = write_lua(workload, bench.lua_dir)
    bodies = [("warm", make_body(f"u{k}", warm_urls(k, STREAMS))) for k in range(BODIES)]
    servers: dict[str, Any] = {}
    commands: dict[str, str] = {}
    wrk_command = ""
    for contender in contenders(bench):
        if names and contender.name not in names:
            continue
        log_dir = bench.log_dir / re.sub(r"\W+", "-", contender.name)
        with running(contender.spec, log_dir) as server:
            commands[server.label] = " ".join(server.cmd)  # SHEDDING=false is in the env
            primed = prime(server)
            warmup = warm(server, workload, lua, bench.warmup)
            settle(server, contender.ours)
            wrk = run_wrk(server.base, lua, bench.seconds)
            wrk_command = wrk.get("cmd", "")
            capacity = scored_rps(wrk)
            result: dict[str, Any] = {
                "capacity_rps": capacity,
                "capacity_wrk": {k: wrk.get(k) for k in ("rps", "requests", "errors")},
                "primed": primed,
                "warmup_rps": warmup["wrk_rps"],
                "steps": {},
            }
            settle(server, contender.ours)
            if contender.name == "ours":
                result["cost"] = refusal_cost(server)
            for multiple in loads:
                print(f"[s9] {contender.name}: {multiple:g}x {capacity} req/s", flush=True)
                result["steps"][f"{multiple:g}"] = step(
                    server, contender, bodies, multiple, capacity, step_seconds
                )
        servers[contender.name] = result
    return {
        "loads": list(loads),
        "step_seconds": step_seconds,
        "deadline_ms": DEADLINE_MS,
        "lag_limit_ms": LAG_LIMIT_MS,
        "servers": servers,
        "server_commands": commands,
        "wrk_command": wrk_command,
    }


def prime(server: Server, tries: int = 20) -> dict[str, int]:
    """Score every body on every worker until it comes back with all its features.

    On a loaded machine the emulator can answer after the feature budget: such a request is
    scored without features, which are then not cached, and a slow request queues and may be
    shed. Each body is sent again until its features are in, 3 x workers times on new
    connections, as `warm` does in bulk.
    """
    expected = 3 * STREAMS
    statuses: Counter[str] = Counter()
    for k in range(BODIES):
        body = make_body(f"u{k}", warm_urls(k, STREAMS))
        for _ in range(3 * max(1, len(server.workers))):
            for _ in range(tries):
                status, data, _ = post_score(server.base, body)
                statuses[str(status)] += 1
                if status == 200 and data.get("features_seen") == expected:
                    break
                time.sleep(0.05)
    return dict(statuses)


def scored_rps(wrk: dict[str, Any]) -> float:
    """Return wrk's 2xx answers per second (a shedding server's refusals are no capacity)."""
    if not wrk.get("requests"):
        return 0.0
    scored = wrk["requests"] - wrk["errors"]["status"]
    return round(scored / (wrk["duration_us"] / 1e6), 1)


def step(
    server: Server,
    contender: Contender,
    bodies: list[tuple[str, bytes]],
    multiple: float,
    capacity: float,
    seconds: float,
) -> dict[str, Any]:
    """Offer `multiple` x capacity for `seconds`; summarise the client's and server's counts."""
    before = scrape(server) if contender.ours else None
    client = offer(server.base, bodies, multiple * capacity, seconds)
    after = settle(server, contender.ours)
    sent = client["sent"] or 1
    lag_p99 = client["lag_ms"]["p99"]
    out: dict[str, Any] = {
        "multiple": multiple,
        "offered_rps": round(multiple * capacity, 1),
        "sent": client["sent"],
        "goodput_rps": client["goodput_rps"],
        "goodput_share": round(client["goodput_rps"] / capacity, 3) if capacity else None,
        "ok_p50_ms": client["ok_ms"]["p50"],
        "ok_p99_ms": client["ok_ms"]["p99"],
        "refused": client["refused"],
        "refused_share": round(client["refused"] / sent, 4),
        "refused_p99_ms": client["refused_ms"]["p99"],
        "timeouts": client["timeouts"],
        "timeout_share": round(client["timeouts"] / sent, 4),
        "conn_errors": client["conn_errors"],
        "other_status": client["other_status"],
        "shed_reasons": client["shed_reasons"],
        "lag_p99_ms": lag_p99,
        "void": lag_p99 is None or lag_p99 > LAG_LIMIT_MS,
        "accounted": client["accounted"],
        "client": client,
    }
    if before is not None and after is not None:
        out["server"] = agreement(client, before, after)
    return out


def offer(
    base: str, bodies: list[tuple[str, bytes]], rate: float, seconds: float
) -> dict[str, Any]:
    """Run the open-loop generator with the deadline announced; return its summary."""
    headers = {"X-Request-Timeout-Ms": f"{DEADLINE_MS:g}"}
    return openloop.run(
        f"{base}/score", bodies, round(rate, 1), seconds, DEADLINE_MS / 1000, headers
    )


# --- the server's own counts ---------------------------------------------------------------
_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(server: Server) -> dict[str, Any]:
    """Return ours' /score counts by status, refusals by reason, queue delay buckets, in flight."""
    conn = connect(server.base, 10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    counts: dict[str, Any] = {"status": {}, "shed": {}, "queue_le": {}, "inflight": 0.0}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = (
            match.group(1),
            dict(_LABEL.findall(match.group(2) or "")),
            float(match.group(3)),
        )
        if name == "scorer_requests_total" and labels.get("endpoint") == "/score":
            counts["status"][labels["status"]] = value
        elif name == "scorer_requests_shed_total":
            counts["shed"][labels["reason"]] = value
        elif name == "scorer_queue_delay_seconds_bucket":
            counts["queue_le"][labels["le"]] = value
        elif name == "scorer_inflight_requests":
            counts["inflight"] = value
    return counts


def settle(server: Server, ours: bool) -> dict[str, Any] | None:
    """Wait until the server has worked off the step's backlog; return ours' counts then."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if not ours:
            if quick_answer(server.base):
                return None
            continue
        try:
            counts = scrape(server)
        except (OSError, http.client.HTTPException):
            continue
        if last is not None and counts["inflight"] <= 1 and counts["status"] == last["status"]:
            return counts  # the scrape itself is in flight
        last = counts
    return last


def quick_answer(base: str) -> bool:
    """Tell whether the server answers `/` within 50 ms (its queue is empty)."""
    conn = connect(base, 10)
    try:
        started = time.perf_counter()
        conn.request("GET", "/")
        conn.getresponse().read()
        return time.perf_counter() - started < 0.05
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def agreement(
    client: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
) -> dict[str, Any]:
    """Compare the server's counts over a step with what the client saw."""
    status = {
        code: int(after["status"].get(code, 0) - before["status"].get(code, 0))
        for code in after["status"]
        if after["status"].get(code, 0) - before["status"].get(code, 0)
    }
    shed = {r: int(after["shed"][r] - before["shed"].get(r, 0)) for r in after["shed"]}
    answered = sum(status.values())
    client_answered = client["ok"] + sum(client["other_status"].values())
    exact = answered == client["sent"]
    agrees = (
        client_answered + client["timeouts"] <= answered <= client["sent"]
        and status.get("200", 0) >= client["ok"]
        and status.get("503", 0) >= client["refused"]
        and all(shed.get(r, 0) >= n for r, n in client["shed_reasons"].items())
        and (exact or client["conn_errors"] > 0)
    )
    return {
        "by_status": status,
        "shed": shed,
        "answered": answered,
        "every_request_counted_once": exact,
        "agrees": agrees,
        "scored_after_client_left": status.get("200", 0) - client["ok"],
        "refused_after_client_left": status.get("503", 0) - client["refused"],
        "queue_delay_p50_ms": quantile_le(before["queue_le"], after["queue_le"], 0.5),
        "queue_delay_p99_ms": quantile_le(before["queue_le"], after["queue_le"], 0.99),
    }


def quantile_le(before: dict[str, float], after: dict[str, float], q: float) -> float | None:
    """Return the upper bound (ms) of the histogram bucket holding the q-quantile of a step."""
    bounds = sorted(
        ((float(le), after[le] - before.get(le, 0.0)) for le in after), key=lambda b: b[0]
    )
    if not bounds or bounds[-1][1] <= 0:
        return None
    total = bounds[-1][1]
    for le, cumulative in bounds:
        if cumulative >= q * total:
            return le * 1000 if le != float("inf") else None
    return None


# --- what a refusal costs a worker ---------------------------------------------------------
def refusal_cost(server: Server) -> dict[str, Any]:
    """Worker CPU per refused request against per scored one: medians of alternated rounds."""
    body = make_body("cost", warm_urls(1, STREAMS))
    late = {"X-Request-Timeout-Ms": "250", "X-Request-Start": f"t={time.time() - 10:.3f}"}
    per: dict[str, list[float]] = {"scored": [], "refused": []}
    statuses: dict[str, set[int]] = {"scored": set(), "refused": set()}
    for _ in range(COST_ROUNDS):
        for kind, count, headers in (
            ("scored", COST_SCORED, {}),
            ("refused", COST_REFUSED, late),
        ):
            with kept_alive(server.base) as conn:
                cpu_before = sum(cpu_seconds(pid) for pid in server.workers)
                for _ in range(count):
                    conn.request(
                        "POST", "/score", body, {"Content-Type": "application/json", **headers}
                    )
                    response = conn.getresponse()
                    response.read()
                    statuses[kind].add(response.status)
                cpu = sum(cpu_seconds(pid) for pid in server.workers) - cpu_before
            per[kind].append(cpu / count * 1e6)
    scored, refused = statistics.median(per["scored"]), statistics.median(per["refused"])
    return {
        "scored_us": round(scored, 1),
        "refused_us": round(refused, 1),
        "refused_over_scored": round(refused / scored, 4),
        "rounds_us": {k: [round(v, 1) for v in vals] for k, vals in per.items()},
        "statuses": {k: sorted(v) for k, v in statuses.items()},
        "requests_per_round": {"scored": COST_SCORED, "refused": COST_REFUSED},
    }


@contextmanager
def kept_alive(base: str) -> Iterator[http.client.HTTPConnection]:
    conn = connect(base, 30)
    try:
        yield conn
    finally:
        conn.close()


# --- report --------------------------------------------------------------------------------
def goal_rows(s9: dict[str, Any]) -> list[tuple[str, float | None, float, bool]]:
    """The issue's goals: (name, measured, limit, higher is better), for ours."""
    ours = s9["servers"].get("ours", {}).get("steps", {})
    plain = s9["servers"].get("ours, no shedding", {}).get("steps", {})
    rows: list[tuple[str, float | None, float, bool]] = []
    for load in ("2", "4"):
        s = ours.get(load)
        if s is None:
            continue
        at = f"S9 {load}x{' (VOID: the generator lagged)' if s['void'] else ''}"
        rows += [
            (f"{at}: goodput / capacity", s["goodput_share"], 0.8, True),
            (f"{at}: p99 of successes, ms", s["ok_p99_ms"], 100, False),
            (f"{at}: p99 of refusals, ms", s["refused_p99_ms"], 10, False),
            (f"{at}: timeouts / sent", s["timeout_share"], 0.01, False),
        ]
    for load in ("0.5", "0.8"):
        s, base = ours.get(load), plain.get(load)
        if s is None:
            continue
        at = f"S9 {load}x{' (VOID: the generator lagged)' if s['void'] else ''}"
        rows.append((f"{at}: refused / sent", s["refused_share"], 0.001, False))
        if base and s["ok_p99_ms"] and base["ok_p99_ms"]:
            ratio = round(s["ok_p99_ms"] / base["ok_p99_ms"], 2)
            rows.append((f"{at}: p99 over p99 without shedding", ratio, 1.0, False))
    cost = s9["servers"].get("ours", {}).get("cost")
    if cost:
        rows.append(
            (
                "S9 a refusal's worker CPU / a scored request's",
                cost["refused_over_scored"],
                0.1,
                False,
            )
        )
    return rows


def report_lines(s9: dict[str, Any], chart: str) -> list[str]:
    """Render s9 for docs/benchmarks.md."""
    lines = [
        "## S9: overload, 0.5x to 4x each server's capacity, open loop",
        "",
        f"4 ms-CPU model, {STREAMS} warm streams, 2 workers; Poisson arrivals for"
        f" {s9['step_seconds']:g} s per step, each request with a {s9['deadline_ms']:g} ms"
        " deadline, announced in `X-Request-Timeout-Ms`, from `bench/openloop.c`. Latency from"
        " the scheduled start; the generator's lag from the scheduled start to the write, or to"
        " connect() on a new connection. A step whose generator lagged over"
        f" {s9['lag_limit_ms']:g} ms (p99) is void.",
        "",
        f"![overload]({chart})",
        "",
    ]
    header = [
        "server",
        "capacity req/s",
        "offered",
        "sent",
        "goodput req/s",
        "of capacity",
        "p99 ok ms",
        "refused",
        "p99 refused ms",
        "timeouts",
        "conn errors",
        "lag p99 ms",
        "accounting",
    ]
    rows = []
    for name, server in s9["servers"].items():
        for load, s in server["steps"].items():
            check = "ok" if s["accounted"] else "MISMATCH"
            if "server" in s:
                check += ", server agrees" if s["server"]["agrees"] else ", server DISAGREES"
            rows.append(
                [
                    name,
                    server["capacity_rps"],
                    f"{load}x",
                    s["sent"],
                    s["goodput_rps"],
                    f"{s['goodput_share']:.0%}" if s["goodput_share"] is not None else "n/a",
                    s["ok_p99_ms"],
                    f"{s['refused_share']:.1%}",
                    s["refused_p99_ms"],
                    f"{s['timeout_share']:.1%}",
                    s["conn_errors"],
                    f"{s['lag_p99_ms']}{' VOID' if s['void'] else ''}",
                    check,
                ]
            )
    lines += _table(header, rows)
    ours = s9["servers"].get("ours", {})
    detail = [
        [
            load,
            s.get("shed_reasons"),
            s["server"]["shed"] if "server" in s else None,
            s["server"]["scored_after_client_left"] if "server" in s else None,
            s["server"]["queue_delay_p99_ms"] if "server" in s else None,
        ]
        for load, s in ours.get("steps", {}).items()
    ]
    lines += [
        "Ours: refusals by reason as the client read them and as the server counted them, the"
        " requests the server still scored after their client gave up, and the queue delay's"
        " p99 (upper bound of its histogram bucket):",
        "",
    ]
    lines += _table(
        [
            "load",
            "client: reasons",
            "server: shed",
            "scored after the client left",
            "queue p99 ≤ ms",
        ],
        detail,
    )
    cost = ours.get("cost")
    if cost:
        lines += [
            f"A refusal costs a worker {cost['refused_us']:g} us of CPU, a scored request"
            f" {cost['scored_us']:g} us ({cost['refused_over_scored']:.1%}): medians of"
            f" {COST_ROUNDS} alternated rounds of sequential requests on one kept-alive"
            " connection, the workers' CPU time from /proc.",
            "",
        ]
    return lines


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("n/a" if c is None else str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def write_chart(s9: dict[str, Any], path: Path) -> None:
    """Draw goodput, and p99 latency, against offered load (as multiples of capacity)."""
    fig, (good, slow) = plt.subplots(1, 2, figsize=(12, 4.5))
    top = max(s9["loads"])
    good.plot([0, 1, top], [0, 1, 1], ":", color="grey", label="ideal")
    for n, (name, server) in enumerate(s9["servers"].items()):
        steps = list(server["steps"].values())
        xs = [s["multiple"] for s in steps]
        color = f"C{n}"
        good.plot(xs, [s["goodput_share"] or 0 for s in steps], "o-", color=color, label=name)
        for s in steps:
            if s["void"]:
                good.plot(s["multiple"], s["goodput_share"] or 0, "x", color="red", markersize=12)
        for key, style, kind in (("ok_p99_ms", "o-", "2xx"), ("refused_p99_ms", "s--", "503")):
            p99 = [s[key] or float("nan") for s in steps]
            slow.plot(xs, p99, style, color=color, label=f"{name}: {kind}")
    good.set_title(f"Goodput (2xx within {s9['deadline_ms']:g} ms) / capacity")
    good.set_xlabel("offered load / capacity (red x: generator lagged, void)")
    good.set_ylim(0, 1.1)
    good.legend()
    slow.set_title("p99 latency from the scheduled start, ms (log)")
    slow.set_xlabel("offered load / capacity")
    slow.set_yscale("log")
    slow.axhline(s9["deadline_ms"], color="grey", linestyle=":")
    slow.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


SCENARIOS = {"s9": s9_overload}


# --- alone ---------------------------------------------------------------------------------
def main() -> int:
    """Run s9 alone against a fresh emulator; print and save its results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="3 s steps, 2 s capacity, 1 s warm-up")
    parser.add_argument("--loads", default=",".join(f"{m:g}" for m in LOADS))
    parser.add_argument(
        "--only", default="", help="servers to run: ours, 'ours, no shedding', seed (;-separated)"
    )
    args = parser.parse_args()
    seconds, warmup = (2.0, 1.0) if args.short else (5.0, 4.0)
    loads = tuple(float(m) for m in args.loads.split(","))
    names = tuple(n.strip() for n in args.only.split(";") if n.strip())
    with fresh_bench("overload", seconds=seconds, warmup=warmup) as bench:
        result = s9_overload(bench, loads, seconds=3.0 if args.short else None, names=names)
    out = output_path("overload", args.short)
    out.write_text(json.dumps(result, indent=1))
    chart = out.with_suffix(".png")
    write_chart(result, chart)
    print("\n".join(report_lines(result, chart.name)))
    print(f"[s9] wrote {out} and {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
