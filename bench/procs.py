"""Start, wait for, inspect and stop the processes the benchmark runs; read their CPU and memory."""

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StartupError(RuntimeError):
    """A process died or never became ready."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_process(
    cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start cmd in its own process group, so stop_process reaches its children; log to a file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Stop the process group gracefully, then forcibly."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    # Kill what is left: a master deaf to SIGTERM, and workers that outlived their master (they
    # would hold the port and skew the next scenario).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll url until it answers 200; fail early if proc exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartupError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"status {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise StartupError(f"{url} not ready after {timeout:.0f}s ({last})")


def stat_fields(pid: int) -> list[str]:
    """Return /proc/PID/stat's fields after the command name ([] if the process is gone)."""
    try:
        # The command name may hold spaces or parentheses: the fields start after the last ')'.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """Return the direct children of pid (scanning /proc: this kernel has no task/*/children)."""
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return sorted(p for p in pids if stat_fields(p)[1:2] == [str(pid)])


def descendants(pid: int) -> list[int]:
    """Return every process below pid, depth first."""
    return [p for child in children(pid) for p in (child, *descendants(child))]


def cmdline(pid: int) -> str:
    """Return the command line of pid, or '' if it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def worker_pids(master: int) -> list[int]:
    """Return the serving workers of a pre-fork master (not helper processes)."""
    return [p for p in children(master) if "resource_tracker" not in cmdline(p)]


def wait_workers(master: int, count: int, timeout: float = 60.0) -> list[int]:
    """Wait until master has count workers; return their pids."""
    deadline = time.monotonic() + timeout
    while len(pids := worker_pids(master)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


def cpu_seconds(pid: int) -> float:
    """Return pid's user+system CPU time: utime and stime, stat_fields [11] and [12] (0 if gone)."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS if fields else 0.0


def memory_kib(pid: int) -> dict[str, int]:
    """Return the Rss and Pss of one process in KiB, from /proc/PID/smaps_rollup (0 if gone)."""
    out = {"Rss": 0, "Pss": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in out:
                out[key] = int(rest.split()[0])
    return out


def tree_pss_mib(master: int) -> dict[str, float]:
    """Return the PSS of master plus all its descendants, in MiB, total and per process."""
    per_pid = {str(p): memory_kib(p)["Pss"] / 1024 for p in [master, *descendants(master)]}
    rounded = {k: round(v, 1) for k, v in per_pid.items()}
    return {"total_mib": round(sum(per_pid.values()), 1), **rounded}
