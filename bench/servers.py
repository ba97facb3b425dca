"""Start and stop the three servers under test: ours, the seed, and the floor."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from emulator import TABLE, aws_env
from procs import free_port, start_process, stop_process, wait_http, wait_workers

from config import Settings

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SEED_VENV = BENCH_DIR / ".venv-seed"
# The service's default unless THREADS is set, used for the floor too: same gunicorn settings.
THREADS = int(os.environ.get("THREADS") or Settings.model_fields["threads"].default)


@dataclass
class Server:
    """One running server: its label, master process, base URL and worker pids."""

    label: str
    proc: subprocess.Popen[bytes]
    base: str
    cmd: list[str]
    workers: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ServerSpec:
    """What to run: which server, which model, how many workers, against which endpoint."""

    kind: str  # "ours", "seed" or "floor"
    model_path: str = ""
    workers: int = 2
    endpoint: str = ""
    gc_freeze: bool = True
    extra_env: tuple[tuple[str, str], ...] = ()  # more settings, e.g. MODEL_POLL_SECONDS
    variant: str = ""  # tells apart two specs of one kind in a run, e.g. "parser=fast"

    @property
    def label(self) -> str:
        """Name the server for reports."""
        more = f",{self.variant}" if self.variant else ""
        if self.kind == "ours":
            return f"ours(w={self.workers},freeze={str(self.gc_freeze).lower()}{more})"
        return f"{self.kind}(w={self.workers}{more})"


def command_for(spec: ServerSpec, port: int) -> tuple[list[str], dict[str, str], Path]:
    """Return the command, environment and working directory that run spec on port."""
    env = dict(os.environ)
    env.update(
        {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WEB_CONCURRENCY": str(spec.workers),
            "THREADS": str(THREADS),
            "LOGS_FRACTION": "0",
        }
    )
    if spec.endpoint:
        env.update(aws_env(spec.endpoint))
        env.update({"S3_MODEL_PATH": spec.model_path, "FEATURES_TABLE": TABLE})
    venv_bin = Path(sys.executable).parent
    if spec.kind == "ours":
        env["GC_FREEZE"] = "true" if spec.gc_freeze else "false"
        env.update(spec.extra_env)
        return [str(venv_bin / "gunicorn"), "-c", "gunicorn.conf.py"], env, REPO
    if spec.kind == "floor":
        env.update(spec.extra_env)
        cmd = [
            str(venv_bin / "gunicorn"),
            "-k",
            "gthread",
            "-w",
            str(spec.workers),
            "--threads",
            str(THREADS),
            "-b",
            f"127.0.0.1:{port}",
            "floor:app",
        ]
        return cmd, env, BENCH_DIR
    if spec.kind == "seed":
        cmd = [
            str(SEED_VENV / "bin" / "uvicorn"),
            "--factory",
            "haystack_ml_stack:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(spec.workers),
        ]
        # Run outside the repo so the seed's pydantic-settings cannot pick up a stray .env.
        return cmd, env, BENCH_DIR / "results"
    raise ValueError(f"unknown server kind {spec.kind!r}")


def start_server(spec: ServerSpec, log_dir: Path, ready_timeout: float = 240.0) -> Server:
    """Start spec, wait for /health and for all its workers."""
    port = free_port()
    cmd, env, cwd = command_for(spec, port)
    cwd.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{spec.label}.log"
    proc = start_process(cmd, env=env, log_path=log, cwd=cwd)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health", timeout=ready_timeout, proc=proc)
        workers = wait_workers(proc.pid, spec.workers)
        # Every worker must answer, not just the first one up: poll health a few more times.
        for _ in range(4 * spec.workers):
            wait_http(base + "/health", timeout=ready_timeout, proc=proc)
            time.sleep(0.05)
    except Exception:
        stop_process(proc)
        raise
    return Server(label=spec.label, proc=proc, base=base, cmd=cmd, workers=workers)


@contextmanager
def running(spec: ServerSpec, log_dir: Path) -> Iterator[Server]:
    """Run spec for the duration of a with-block, stopping it (and its workers) after."""
    server = start_server(spec, log_dir)
    try:
        yield server
    finally:
        pids = [server.proc.pid, *server.workers]
        stop_process(server.proc)
        if spec.kind == "seed":
            remove_seed_downloads(pids)


def remove_seed_downloads(pids: list[int]) -> None:
    """Delete the model copies the seed's workers leave in /tmp (one per worker, never removed)."""
    for pid in pids:
        Path(f"/tmp/model_{pid}.pkl").unlink(missing_ok=True)
