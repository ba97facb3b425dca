"""The overload shape (S9): each server's capacity, then multiples of it offered, open loop.

Each request carries a client deadline it also announces (`X-Request-Timeout-Ms`, as a proxy
such as Envoy would; the seed ignores it). Per step, the client's counts (goodput, latency of
successes and refusals, timeouts, the generator's lag) are checked against the server's own
(`scorer_requests_total`, refusals by reason); docs/benchmarks.md says what each figure means.
"""

import http.client
import re
import statistics
import time
from collections import Counter
from typing import Any

import openloop
from client import connect, post_score, scrape
from load import BODIES, Workload, make_body, run_wrk, warm_urls, write_lua
from procs import cpu_seconds
from servers import Bench, Server, ServerSpec, running
from shapes import warm

LAG_LIMIT_MS = 10.0
STREAMS = 30
SETTLE_TIMEOUT = 60.0  # seconds a server may take to work off a step's backlog
COST_ROUNDS = 5
COST_SCORED, COST_REFUSED = 200, 2000  # requests per round: /proc counts CPU in 10 ms ticks


def overload(
    bench: Bench, *specs: ServerSpec, loads: tuple[float, ...], deadline_ms: float
) -> dict[str, Any]:
    """Offer each multiple of each server's capacity, open loop, with an announced deadline."""
    step_seconds = 3.0 if bench.short else 2 * bench.seconds
    workload = Workload(STREAMS)
    lua = write_lua(workload)
    bodies = [("warm", make_body(f"u{k}", warm_urls(k, STREAMS))) for k in range(BODIES)]
    servers: dict[str, Any] = {}
    commands: dict[str, str] = {}
    for spec in specs:
        ours = spec.kind == "ours"
        with running(spec, bench, log_dir=bench.log_dir / re.sub(r"\W+", "-", spec.name)) as s:
            commands[s.label] = " ".join(s.cmd)  # SHEDDING=false is in the env
            primed = prime(s)
            warmup = warm(s, workload, lua, bench.warmup)
            settle(s, ours)
            wrk = run_wrk(s.base, lua, bench.seconds)
            capacity = scored_rps(wrk)
            result: dict[str, Any] = {
                "capacity_rps": capacity,
                "capacity_wrk": {k: wrk.get(k) for k in ("rps", "requests", "errors")},
                "primed": primed,
                "warmup_rps": warmup["wrk_rps"],
                "steps": {},
            }
            settle(s, ours)
            if spec.name == "ours":
                result["cost"] = refusal_cost(s)
            for multiple in loads:
                print(f"[s9] {spec.name}: {multiple:g}x {capacity} req/s", flush=True)
                result["steps"][f"{multiple:g}"] = step(
                    s, ours, bodies, multiple, capacity, step_seconds, deadline_ms
                )
        servers[spec.name] = result
    return {
        "loads": list(loads),
        "step_seconds": step_seconds,
        "deadline_ms": deadline_ms,
        "lag_limit_ms": LAG_LIMIT_MS,
        "servers": servers,
        "server_commands": commands,
        "wrk_command": wrk.get("cmd", ""),
    }


def prime(server: Server, tries: int = 20) -> dict[str, int]:
    """Score every body on every worker until it comes back with all its features.

    On a loaded machine the emulator can answer after the feature budget: such a request is
    scored without features, which are then not cached, and a slow request queues and may be
    shed. Each body is sent again until its features are in, 3 x workers times on new
    connections, as `warm` does in bulk.
    """
    statuses: Counter[str] = Counter()
    for k in range(BODIES):
        body = make_body(f"u{k}", warm_urls(k, STREAMS))
        for _ in range(3 * max(1, len(server.workers))):
            for _ in range(tries):
                status, data, _ = post_score(server.base, body)
                statuses[str(status)] += 1
                if status == 200 and data.get("features_seen") == 3 * STREAMS:
                    break
                time.sleep(0.05)
    return dict(statuses)


def scored_rps(wrk: dict[str, Any]) -> float:
    """Return wrk's 2xx answers per second (a shedding server's refusals are no capacity)."""
    if not wrk.get("requests"):
        return 0.0
    return round((wrk["requests"] - wrk["errors"]["status"]) / (wrk["duration_us"] / 1e6), 1)


def step(
    server: Server,
    ours: bool,
    bodies: list[tuple[str, bytes]],
    multiple: float,
    capacity: float,
    seconds: float,
    deadline_ms: float,
) -> dict[str, Any]:
    """Offer `multiple` x capacity for `seconds`; summarise the client's and server's counts."""
    before = counts(server) if ours else None
    rate = round(multiple * capacity, 1)
    headers = {"X-Request-Timeout-Ms": f"{deadline_ms:g}"}
    client = openloop.run(
        f"{server.base}/score", bodies, rate, seconds, deadline_ms / 1000, headers
    )
    after = settle(server, ours)
    sent = client["sent"] or 1
    lag_p99 = client["lag_ms"]["p99"]
    out: dict[str, Any] = {"multiple": multiple, "offered_rps": round(multiple * capacity, 1)}
    out |= {k: client[k] for k in ("sent", "goodput_rps")}
    out["goodput_share"] = round(client["goodput_rps"] / capacity, 3) if capacity else None
    out |= {"ok_p50_ms": client["ok_ms"]["p50"], "ok_p99_ms": client["ok_ms"]["p99"]}
    out |= {"refused": client["refused"], "refused_share": round(client["refused"] / sent, 4)}
    out |= {"refused_p99_ms": client["refused_ms"]["p99"], "timeouts": client["timeouts"]}
    out["timeout_share"] = round(client["timeouts"] / sent, 4)
    out |= {k: client[k] for k in ("conn_errors", "other_status", "shed_reasons")}
    out |= {"lag_p99_ms": lag_p99, "void": lag_p99 is None or lag_p99 > LAG_LIMIT_MS}
    out |= {"accounted": client["accounted"], "client": client}
    if before is not None and after is not None:
        out["server"] = agreement(client, before, after)
    return out


def counts(server: Server) -> dict[str, Any] | None:
    """Return ours' /score counts by status, refusals by reason, queue delay buckets, in flight."""
    samples = scrape(server.base)
    if not samples:
        return None
    out: dict[str, Any] = {"status": {}, "shed": {}, "queue_le": {}, "inflight": 0.0}
    for name, labels, value in samples:
        if name == "scorer_requests_total" and labels.get("endpoint") == "/score":
            out["status"][labels["status"]] = value
        elif name == "scorer_requests_shed_total":
            out["shed"][labels["reason"]] = value
        elif name == "scorer_queue_delay_seconds_bucket":
            out["queue_le"][labels["le"]] = value
        elif name == "scorer_inflight_requests":
            out["inflight"] = value
    return out


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
        now = counts(server)
        if now is None:
            continue
        if last is not None and now["inflight"] <= 1 and now["status"] == last["status"]:
            return now  # the scrape itself is in flight
        last = now
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
        code: int(after["status"][code] - before["status"].get(code, 0))
        for code in after["status"]
        if after["status"][code] - before["status"].get(code, 0)
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
    bounds = sorted((float(le), after[le] - before.get(le, 0.0)) for le in after)
    if not bounds or bounds[-1][1] <= 0:
        return None
    le = next(le for le, cumulative in bounds if cumulative >= q * bounds[-1][1])
    return le * 1000 if le != float("inf") else None


def refusal_cost(server: Server) -> dict[str, Any]:
    """Worker CPU per refused request against per scored one: medians of alternated rounds."""
    body = make_body("cost", warm_urls(1, STREAMS))
    late = {"X-Request-Timeout-Ms": "250", "X-Request-Start": f"t={time.time() - 10:.3f}"}
    per: dict[str, list[float]] = {"scored": [], "refused": []}
    statuses: dict[str, set[int]] = {"scored": set(), "refused": set()}
    for _ in range(COST_ROUNDS):
        for kind, count, headers in (("scored", COST_SCORED, {}), ("refused", COST_REFUSED, late)):
            conn = connect(server.base, 30)
            try:
                cpu_before = sum(cpu_seconds(pid) for pid in server.workers)
                for _ in range(count):
                    head = {"Content-Type": "application/json", **headers}
                    conn.request("POST", "/score", body, head)
                    response = conn.getresponse()
                    response.read()
                    statuses[kind].add(response.status)
                cpu = sum(cpu_seconds(pid) for pid in server.workers) - cpu_before
            finally:
                conn.close()
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
