"""Open-loop load: requests start on a schedule (Poisson arrivals), not after earlier answers.

wrk is closed loop: a connection sends its next request only after the last answer, so a slow
server slows the offered load down and its queueing delay never shows. Here every request has a
scheduled start; its latency counts from that start (so the generator's own delay is charged to
the server, as a user would see it), and the generator's lag (actual send - scheduled start) is
reported: a run whose generator lags is void.

A client deadline (e.g. 250 ms) models a caller that gives up: past it the request counts as a
timeout and its connection is closed, as a real client's would be.

    python bench/openloop.py --url http://127.0.0.1:8000/score --rate 400 --seconds 10 BODIES.json
"""

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MARK = "OPENLOOP_JSON "


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


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
MAX_IDLE_SECONDS = 2.0
"""Connections idle longer are not reused: servers close kept-alive ones after about 5 s, and a
request written into one the server is closing would count as a connection error."""


class Pool:
    """Idle keep-alive connections to one server; a request takes one or opens a new one."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[tuple[Conn, float]] = []
        self.opened = 0

    async def take(self) -> Conn:
        now = time.monotonic()
        while self.idle:
            conn, since = self.idle.pop()
            if now - since < MAX_IDLE_SECONDS:
                return conn
            conn[1].close()
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    def give_back(self, conn: Conn) -> None:
        self.idle.append((conn, time.monotonic()))

    def close_all(self) -> None:
        for (_, writer), _ in self.idle:
            writer.close()
        self.idle.clear()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length body."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before the status line")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def one_request(
    pool: Pool,
    request: bytes,
    scheduled: float,
    deadline: float,
    tally: Tally,
    tag: str,
) -> None:
    """Send one request at its scheduled time and record how it ended."""
    loop = asyncio.get_running_loop()
    tally.lag.append(loop.time() - scheduled)
    conn = None
    try:
        async with asyncio.timeout_at(scheduled + deadline):
            conn = await pool.take()
            conn[1].write(request)
            status, headers, body = await read_response(conn[0])
    except TimeoutError:
        tally.timeouts += 1
        if conn is not None:
            conn[1].close()  # the client gives up and hangs up, as a real one would
        return
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
        tally.conn_errors += 1
        if conn is not None:
            conn[1].close()
        return
    latency = loop.time() - scheduled
    tally.statuses[status] += 1
    if 200 <= status < 300:
        tally.ok_latency.append(latency)
        tally.by_tag.setdefault(tag, []).append(latency)
    elif status == 503:
        tally.refused_latency.append(latency)
        tally.shed_reasons[_reason(body)] += 1
    else:
        tally.other_latency.append(latency)
    if headers.get("connection", "").lower() == "close":
        conn[1].close()
    else:
        pool.give_back(conn)


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


async def run(
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
    pool = Pool(host, port)
    tally = Tally()
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    scheduled = start
    tasks: list[asyncio.Task[None]] = []
    sent = 0
    while True:
        scheduled += rng.expovariate(rate)
        if scheduled - start > seconds:
            break
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tag, raw = requests[sent % len(requests)]
        tasks.append(loop.create_task(one_request(pool, raw, scheduled, deadline, tally, tag)))
        sent += 1
    await asyncio.gather(*tasks)
    pool.close_all()
    summary = summarize(tally, sent, rate, seconds, deadline, pool.opened)
    if keep_samples:
        summary["ok_samples"] = tally.ok_latency
    return summary


def run_sync(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run the generator on uvloop where it is installed: it halves the generator's own CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


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
    result = run_sync(
        run(args.url, bodies, args.rate, args.seconds, args.deadline_ms / 1000, headers)
    )
    print(MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
