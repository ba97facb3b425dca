"""Measure the proportional set size (PSS) of a server's process tree."""

from pathlib import Path

from procs import descendants


def pss_kib(pid: int) -> int:
    """Return the PSS of one process in KiB, from /proc/PID/smaps_rollup (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def tree_pss_mib(master: int) -> dict[str, float]:
    """Return the PSS of master plus all its descendants, in MiB, total and per process."""
    pids = [master, *descendants(master)]
    per_pid = {str(pid): pss_kib(pid) / 1024 for pid in pids}
    return {
        "total_mib": round(sum(per_pid.values()), 1),
        **{k: round(v, 1) for k, v in per_pid.items()},
    }
