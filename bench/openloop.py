"""Open-loop load: requests start on a schedule (Poisson arrivals), not after earlier answers.

wrk is closed loop (a connection sends its next request only after the last answer), so a slow
server slows the offered load down and its queueing delay never shows. Here latency counts from
each request's scheduled start (the generator's delay is charged to the server, as a user would see
it) and the generator's lag is reported: a run whose generator lags is void. Past a client deadline
(e.g. 250 ms) a request is a timeout and its connection is closed, as a real client's would be.

The schedule is kept by bench/openloop.c (one thread, epoll, CLOCK_MONOTONIC, real-time priority
where allowed; built into bench/.bin/openloop by bench/setup.sh, or here when the source is newer):
an asyncio generator on these two cores, beside a server using both, fell 40-76 ms behind (lag p99)
from about 3,000 req/s. Lag is taken at the write on a kept-alive connection, or at connect() on a
new one (accept counts as latency; asyncio took it at a coroutine's start, before both). Idle
connections are reused last in, first out; one idle 2 s or more (servers close them at about 5 s)
or closed by the server is dropped.
"""

import json
import os
import statistics
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SOURCE = Path(__file__).resolve().with_suffix(".c")
BINARY = SOURCE.parent / ".bin" / "openloop"
CC = ["cc", "-O2", "-Wall", "-Wextra"]  # as bench/setup.sh
_QUANTILES = {"p50": 0.5, "p99": 0.99, "p999": 0.999}


@dataclass
class Tally:
    """What happened to every request sent, and how late the generator sent them."""

    statuses: Counter[int] = field(default_factory=Counter)
    timeouts: int = 0
    conn_errors: int = 0
    ok_latency: list[float] = field(default_factory=list)
    refused_latency: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    shed_reasons: Counter[str] = field(default_factory=Counter)
    by_tag: dict[str, list[float]] = field(default_factory=dict)


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
        else:  # an answer: count its status, its latency by kind, a refusal's reason
            status, latency = int(outcome), int(latency_ns) / 1e9
            tally.statuses[status] += 1
            if 200 <= status < 300:
                tally.ok_latency.append(latency)
                tally.by_tag.setdefault(tags[int(index) % len(tags)], []).append(latency)
            elif status == 503:
                tally.refused_latency.append(latency)
                tally.shed_reasons[_reason(bytes.fromhex(body))] += 1
    if sent < 0:
        raise ValueError("the generator's records lack their end line")
    return tally, sent, opened


def _reason(body: bytes) -> str:
    try:
        detail = str(json.loads(body).get("detail", ""))
    except (ValueError, AttributeError):
        return "unparsed"
    return detail.split(":", 1)[1].strip().split(" ")[0] if ":" in detail else detail


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
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json"
    extra = "".join(f"\r\n{k}: {v}" for k, v in (headers or {}).items())
    requests = [  # keep-alive POSTs with a JSON body
        (tag, f"{head}\r\nContent-Length: {len(body)}{extra}\r\n\r\n".encode() + body)
        for tag, body in bodies
    ]
    with tempfile.TemporaryDirectory(prefix="openloop-") as tmp:
        raw, out = Path(tmp, "requests"), Path(tmp, "records")
        raw.write_bytes(b"".join(b"%d\n%s" % (len(req), req) for _, req in requests))
        args = [host, port, repr(rate), repr(seconds), repr(deadline), seed, raw, out]
        timeout = seconds + deadline + 60
        subprocess.run([str(binary()), *map(str, args)], check=True, timeout=timeout)
        with out.open(encoding="ascii") as f:
            tally, sent, opened = read_records(list(f), [tag for tag, _ in requests])
    samples = {"ok_samples": tally.ok_latency} if keep_samples else {}
    return summarize(tally, sent, rate, seconds, deadline, opened) | samples


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
    return {
        "offered_rps": rate,
        "seconds": seconds,
        "deadline_ms": deadline * 1000,
        "sent": sent,
        "ok": len(tally.ok_latency),
        "goodput_rps": round(sum(1 for v in tally.ok_latency if v <= deadline) / seconds, 1),
        "refused": len(tally.refused_latency),
        "other_status": {str(k): v for k, v in tally.statuses.items() if not 200 <= k < 300},
        "timeouts": tally.timeouts,
        "conn_errors": tally.conn_errors,
        "accounted": sum(tally.statuses.values()) + tally.timeouts + tally.conn_errors == sent,
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
