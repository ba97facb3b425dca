"""Start, wait for, inspect and stop the processes the benchmark runs."""

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
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        log.close()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Stop the process group gracefully, then forcibly."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    # Workers that outlived their master would hold the port and skew the next scenario.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, status: int = 200
) -> None:
    """Poll url until it answers with status; fail early if proc exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartupError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == status:
                    return
                last = f"status {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise StartupError(f"{url} not ready after {timeout:.0f}s ({last})")


def parent_of(pid: int) -> int:
    """Return the parent pid of pid (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name may hold spaces or parentheses: the fields start after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    """Return the direct children of pid (scanning /proc: this kernel has no task/*/children)."""
    return sorted(
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and parent_of(int(p.name)) == pid
    )


def descendants(pid: int) -> list[int]:
    """Return every process below pid, depth first."""
    out = []
    for child in children(pid):
        out.append(child)
        out.extend(descendants(child))
    return out


def cmdline(pid: int) -> str:
    """Return the command line of pid, or '' if it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def worker_pids(master: int) -> list[int]:
    """Return the serving workers of a pre-fork master (not helper processes)."""
    return [p for p in children(master) if "resource_tracker" not in cmdline(p)]


def cpu_seconds(pid: int) -> float:
    """Return user+system CPU time of pid (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    # After the command name, utime and stime are fields 12 and 13 (0-based).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_workers(master: int, count: int, timeout: float = 60.0) -> list[int]:
    """Wait until master has count workers; return their pids."""
    deadline = time.monotonic() + timeout
    pids = worker_pids(master)
    while len(pids) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = worker_pids(master)
    return pids
