"""Open-loop load: requests start on a schedule (Poisson arrivals), not after earlier answers.

wrk is closed loop: a connection sends its next request only after the last answer, so a slow
server slows the offered load down and its queueing delay never shows. Here every request has a
scheduled start; its latency counts from that start (so the generator's own delay is charged to
the server, as a user would see it), and the generator's lag is reported: a run whose generator
lags is void.

A client deadline (e.g. 250 ms) models a caller that gives up: past it the request counts as a
timeout and its connection is closed, as a real client's would be.

The schedule is kept by bench/openloop.c (one thread, epoll, CLOCK_MONOTONIC, real-time
priority where allowed; compiled into bench/.bin/openloop by bench/setup.sh, or here when the
source is newer): an asyncio generator on these two cores, beside a server using both, fell
40-76 ms behind (lag p99) from about 3,000 req/s. This module builds the request bytes, runs
it and reduces its per-request records. The lag is measured at the write on a kept-alive
connection, or at connect() on a new one (the server's accept counts as latency, not lag; the
asyncio generator measured it when a request's coroutine started, just before both). Idle
connections are reused last in, first out; one idle for 2 s or more is closed instead (servers
close kept-alive ones after about 5 s), and so is one the server closed first.

    python bench/openloop.py --url http://127.0.0.1:8000/score --rate 400 --seconds 10 BODIES.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SOURCE = Path(__file__).resolve().with_suffix(".c")
BINARY = SOURCE.parent / ".bin" / "openloop"
CC = ["cc", "-O2", "-Wall", "-Wextra"]  # as bench/setup.sh


@dataclass
class Tally:
    """What happened to every request sent, and how late the generator sent them."""

    statuses: Counter[int] = field(default_factory=Counter)
    timeouts: int = 0
    conn_errors: int = 0
    ok_latency: list[float] = field(default_factory=list)
    refused_latency: list[float] = field(default_factory=list)
    other_latency: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    shed_reasons: Counter[str] = field(default_factory=Counter)
    by_tag: dict[str, list[float]] = field(default_factory=dict)

    def answered(self, status: int, latency: float, body: bytes, tag: str) -> None:
        """Count an answer: its status, its latency by kind, a refusal's reason."""
        self.statuses[status] += 1
        if 200 <= status < 300:
            self.ok_latency.append(latency)
            self.by_tag.setdefault(tag, []).append(latency)
        elif status == 503:
            self.refused_latency.append(latency)
            self.shed_reasons[_reason(body)] += 1
        else:
            self.other_latency.append(latency)


def binary() -> Path:
    """Return the generator's binary, compiled first if it is missing or older than its source."""
    if not BINARY.exists() or BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        BINARY.parent.mkdir(exist_ok=True)
        building = BINARY.with_name(f"openloop.{os.getpid()}")
        subprocess.run([*CC, "-o", str(building), str(SOURCE), "-lm"], check=True)
        building.replace(BINARY)  # atomic: another run may be starting the old one
    return BINARY


def read_records(lines: list[str], tags: list[str]) -> tuple[Tally, int, int]:
    """Tally the generator's records; return it, the requests sent and connections opened.

    A record: index, outcome (status, "timeout" or "error"), latency and lag in ns, and a
    non-2xx answer's body in hex; the last line: "end", sent, connections opened.
    """
    tally = Tally()
    sent = opened = -1
    for line in lines:
        fields = line.rstrip("\n").split("\t")
        if fields[0] == "end":
            sent, opened = int(fields[1]), int(fields[2])
            continue
        index, outcome, latency_ns, lag_ns, body = fields
        tally.lag.append(int(lag_ns) / 1e9)
        if outcome == "timeout":
            tally.timeouts += 1
        elif outcome == "error":
            tally.conn_errors += 1
        else:
            tag = tags[int(index) % len(tags)]
            tally.answered(int(outcome), int(latency_ns) / 1e9, bytes.fromhex(body), tag)
    if sent < 0:
        raise ValueError("the generator's records lack their end line")
    return tally, sent, opened


def _reason(body: bytes) -> str:
    try:
        detail = str(json.loads(body).get("detail", ""))
    except (ValueError, AttributeError):
        return "unparsed"
    return detail.split(":", 1)[1].strip().split(" ")[0] if ":" in detail else detail


def build_request(host: str, path: str, body: bytes, extra: dict[str, str]) -> bytes:
    """Return the raw bytes of a keep-alive POST with a JSON body."""
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def run(
    url: str,
    bodies: list[tuple[str, bytes]],
    rate: float,
    seconds: float,
    deadline: float,
    headers: dict[str, str] | None = None,
    seed: int = 1,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Offer `rate` requests/s for `seconds` with Poisson arrivals; return the summary."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [
        (tag, build_request(f"{host}:{port}", parts.path or "/", body, headers or {}))
        for tag, body in bodies
    ]
    with tempfile.TemporaryDirectory(prefix="openloop-") as tmp:
        raw = Path(tmp, "requests")
        raw.write_bytes(b"".join(b"%d\n%s" % (len(req), req) for _, req in requests))
        out = Path(tmp, "records")
        args = [host, str(port), repr(rate), repr(seconds), repr(deadline), str(seed), raw, out]
        subprocess.run(
            [str(binary()), *map(str, args)], check=True, timeout=seconds + deadline + 60
        )
        with out.open(encoding="ascii") as f:
            tally, sent, opened = read_records(list(f), [tag for tag, _ in requests])
    summary = summarize(tally, sent, rate, seconds, deadline, opened)
    if keep_samples:
        summary["ok_samples"] = tally.ok_latency
    return summary


def pct(values: list[float], q: float) -> float | None:
    """Return the q-quantile of values in milliseconds (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index] * 1000, 2)


def summarize(
    tally: Tally, sent: int, rate: float, seconds: float, deadline: float, opened: int
) -> dict[str, Any]:
    """Reduce the tally to the figures the report shows."""
    ok = len(tally.ok_latency)
    in_time = sum(1 for v in tally.ok_latency if v <= deadline)
    answered = sum(tally.statuses.values())
    return {
        "offered_rps": rate,
        "seconds": seconds,
        "deadline_ms": deadline * 1000,
        "sent": sent,
        "ok": ok,
        "goodput_rps": round(in_time / seconds, 1),
        "refused": len(tally.refused_latency),
        "other_status": {str(k): v for k, v in tally.statuses.items() if not 200 <= k < 300},
        "timeouts": tally.timeouts,
        "conn_errors": tally.conn_errors,
        "accounted": answered + tally.timeouts + tally.conn_errors == sent,
        "ok_ms": {q: pct(tally.ok_latency, v) for q, v in _QUANTILES.items()},
        "refused_ms": {q: pct(tally.refused_latency, v) for q, v in _QUANTILES.items()},
        "by_tag_ms": {
            tag: {q: pct(vals, v) for q, v in _QUANTILES.items()} | {"count": len(vals)}
            for tag, vals in tally.by_tag.items()
        },
        "shed_reasons": dict(tally.shed_reasons),
        "lag_ms": {
            "p50": pct(tally.lag, 0.5),
            "p99": pct(tally.lag, 0.99),
            "max": pct(tally.lag, 1.0),
            "mean": round(statistics.fmean(tally.lag) * 1000, 2) if tally.lag else None,
        },
        "connections_opened": opened,
    }


_QUANTILES = {"p50": 0.5, "p99": 0.99, "p999": 0.999}


def main() -> int:
    """Run once from the command line; print the summary as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second offered")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--deadline-ms", type=float, default=1000.0)
    parser.add_argument("--header", action="append", default=[], help="NAME:VALUE")
    parser.add_argument("bodies", help="JSON file: a list of [tag, body-object] pairs")
    args = parser.parse_args()
    with open(args.bodies, encoding="utf-8") as f:
        bodies = [(tag, json.dumps(body).encode()) for tag, body in json.load(f)]
    headers = dict(h.split(":", 1) for h in args.header)
    result = run(args.url, bodies, args.rate, args.seconds, args.deadline_ms / 1000, headers)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
