"""Drive closed-loop load with wrk and bench/score.lua; parse the JSON summary it prints."""

import json
import secrets
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BODIES = 64
POOL = 1000
BODY_STRIDE = 15
MARK = "BENCH_JSON "
SCRIPT = Path(__file__).with_name("score.lua")
Args = tuple[str, ...]  # the script's arguments: what a workload's requests carry


@dataclass(frozen=True)
class Workload:
    """What each request carries: how many streams, and whether their features are cached."""

    streams: int
    cold: bool = False
    user: str = "u"  # prefix of the warm bodies' user ids (the mixed model reads it)

    @property
    def name(self) -> str:
        """Name the workload for file names and reports."""
        suffix = "" if self.user == "u" else f"-{self.user}"
        return f"{'cold' if self.cold else 'warm'}-{self.streams}{suffix}"


def write_lua(workload: Workload) -> Args:
    """Return the wrk script's arguments for workload; a fresh token keeps cold URLs unique."""
    numbers = (workload.streams, BODIES, POOL, BODY_STRIDE, int(workload.cold))
    return (*map(str, numbers), secrets.token_hex(4), workload.user)


def wrk_command(url: str, lua: Args, seconds: float, threads: int = 2, conns: int = 8) -> list[str]:
    """Build the wrk command line (closed loop, latency histogram)."""
    options = [f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "10s", "--latency"]
    return ["wrk", *options, "-s", str(SCRIPT), url, "--", *lua]


def run_wrk(url: str, lua: Args, seconds: float, conns: int = 8) -> dict[str, Any]:
    """Run wrk once; return its summary with throughput and an ok flag (no errors, no non-2xx)."""
    cmd = wrk_command(url, lua, seconds, conns=conns)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    return parse_wrk(cmd, done.stdout + done.stderr)


def parse_wrk(cmd: list[str], output: str) -> dict[str, Any]:
    """Return wrk's JSON summary from its output, with throughput and an ok flag."""
    line = next((ln for ln in output.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        return {"ok": False, "cmd": shlex.join(cmd), "failure": output}
    result: dict[str, Any] = json.loads(line[len(MARK) :])
    result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    result["errors_total"] = sum(result["errors"].values())
    result["ok"] = result["errors_total"] == 0 and result["requests"] > 0
    result["cmd"] = shlex.join(cmd)
    return result


def warm_urls(k: int, streams: int) -> list[str]:
    """Return the stream URLs of warm body k, exactly as the Lua script builds them."""
    return [f"https://example.com/s/{(k * BODY_STRIDE + i) % POOL}" for i in range(streams)]


def make_body(userid: str, urls: list[str]) -> bytes:
    """Build a /score request body for these stream URLs."""
    streams = [{"streamUrl": u} for u in urls]
    body = {"user": {"userid": userid}, "streams": streams, "playlist": {"name": "home"}}
    return json.dumps(body).encode()


def cold_urls(tag: str, streams: int) -> list[str]:
    """Return stream URLs no server has seen, under tag."""
    return [f"https://example.com/c/{tag}/{i}" for i in range(streams)]
