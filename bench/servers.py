"""Start and stop the servers under test: ours, the seed and the floor, against the emulator."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from emulator import TABLE, aws_env
from procs import free_port, start_process, stop_process, wait_http, wait_workers

from config import Settings

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SEED_VENV = BENCH_DIR / ".venv-seed"
# The service's default unless THREADS is set, used for the floor too: same gunicorn settings.
THREADS = int(os.environ.get("THREADS") or Settings.model_fields["threads"].default)


@dataclass(frozen=True)
class Bench:
    """What every scenario shares: the emulator, the models, where to write, how long to run."""

    endpoint: str
    models: dict[str, str]  # name -> s3:// path
    log_dir: Path
    rounds: int = 5
    seconds: float = 5.0
    warmup: float = 4.0
    short: bool = False  # a quick check that a scenario works, no figure to keep


@dataclass(frozen=True)
class ServerSpec:
    """What to run: which server, which model (a name or an s3:// path), workers, settings."""

    kind: str  # "ours", "seed" or "floor"
    model: str = ""
    workers: int = 2
    gc_freeze: bool = True
    env: tuple[tuple[str, str], ...] = ()  # more settings, e.g. MODEL_POLL_SECONDS
    variant: str = ""  # tells apart two specs of one kind in a run, e.g. "parser=fast"
    name: str = ""  # what S9 calls it, e.g. "ours, no shedding"

    @property
    def label(self) -> str:
        """Name the server for reports."""
        more = f",{self.variant}" if self.variant else ""
        if self.kind == "ours":
            return f"ours(w={self.workers},freeze={str(self.gc_freeze).lower()}{more})"
        return f"{self.kind}(w={self.workers}{more})"

    def using(self, **changes: object) -> "ServerSpec":
        """Return this spec with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass
class Server:
    """One running server: its label, master process, base URL and worker pids."""

    label: str
    proc: subprocess.Popen[bytes]
    base: str
    cmd: list[str]
    workers: list[int] = field(default_factory=list)


def command_for(
    spec: ServerSpec, port: int, bench: Bench, endpoint: str
) -> tuple[list[str], dict[str, str], Path]:
    """Return the command, environment and working directory that run spec on port."""
    env = dict(os.environ)
    env.update(HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY=str(spec.workers))
    env.update(THREADS=str(THREADS), LOGS_FRACTION="0")
    if spec.model:
        path = spec.model if spec.model.startswith("s3://") else bench.models[spec.model]
        env.update(aws_env(endpoint), S3_MODEL_PATH=path, FEATURES_TABLE=TABLE)
    env.update(spec.env)
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    if spec.kind == "ours":
        env["GC_FREEZE"] = "true" if spec.gc_freeze else "false"
        return [gunicorn, "-c", "gunicorn.conf.py"], env, REPO
    if spec.kind == "floor":
        bind = f"127.0.0.1:{port}"
        cmd = [gunicorn, "-k", "gthread", "-w", str(spec.workers), "--threads", str(THREADS)]
        return [*cmd, "-b", bind, "floor:app"], env, BENCH_DIR
    if spec.kind == "seed":
        cmd = [str(SEED_VENV / "bin" / "uvicorn"), "--factory", "haystack_ml_stack:create_app"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(spec.workers)]
        # Run outside the repo so the seed's pydantic-settings cannot pick up a stray .env.
        return cmd, env, BENCH_DIR / "results"
    raise ValueError(f"unknown server kind {spec.kind!r}")


@contextmanager
def running(
    spec: ServerSpec, bench: Bench, endpoint: str = "", log_dir: Path | None = None
) -> Iterator[Server]:
    """Run spec for a with-block once /health answers on every worker; stop it (and them) after."""
    port = free_port()
    cmd, env, cwd = command_for(spec, port, bench, endpoint or bench.endpoint)
    cwd.mkdir(parents=True, exist_ok=True)
    proc = start_process(cmd, env, (log_dir or bench.log_dir) / f"{spec.label}.log", cwd)
    base = f"http://127.0.0.1:{port}"
    server = Server(spec.label, proc, base, cmd)
    try:
        wait_http(base + "/health", timeout=240, proc=proc)
        server.workers = wait_workers(proc.pid, spec.workers)
        # Every worker must answer, not just the first one up: poll health a few more times.
        for _ in range(4 * spec.workers):
            wait_http(base + "/health", timeout=240, proc=proc)
            time.sleep(0.05)
        yield server
    finally:
        pids = [proc.pid, *server.workers]
        stop_process(proc)
        # The seed's workers leave their model copy in /tmp (one per worker, never removed).
        for pid in pids if spec.kind == "seed" else ():
            Path(f"/tmp/model_{pid}.pkl").unlink(missing_ok=True)
