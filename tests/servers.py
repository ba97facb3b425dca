"""Real gunicorn processes for the tests: start, reach, stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    """A running gunicorn master, its port, log and metrics directory."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    metrics_dir: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url(path),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Connection": "close"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=10) as response:
            return str(response.read().decode())


def gunicorn_env(emulator_port: int, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        {
            "HOST": "127.0.0.1",
            "WEB_CONCURRENCY": "2",
            "THREADS": "4",
            "LOGS_FRACTION": "0",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{emulator_port}",
            **values,
        }
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_gunicorn(env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start `gunicorn -c gunicorn.conf.py`, in `cwd` (where `.env` is read), importing ROOT."""
    if cwd != ROOT:
        env = {**env, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def worker_pids(master: int) -> set[int]:
    """Return the pids of the master's child processes (its workers)."""
    pids: set[int] = set()
    try:
        for task in Path(f"/proc/{master}/task").iterdir():
            pids.update(int(p) for p in (task / "children").read_text().split())
    except OSError:
        pass
    return pids


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll `condition` every 0.1 s for at most `seconds`; return whether it came true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def start_service(env: dict[str, str], tmp: Path, workers: int = 2, cwd: Path = ROOT) -> Server:
    """Start gunicorn and wait until it answers /health and all its workers run."""
    log = tmp / "gunicorn.log"
    process = run_gunicorn(env, log, cwd)
    server = Server(process, int(env["PORT"]), log, Path(env["PROMETHEUS_MULTIPROC_DIR"]))

    wait_ready(
        process,
        log,
        server.url("/health"),
        "gunicorn",
        also=lambda: len(worker_pids(process.pid)) == workers,
    )
    return server


def wait_ready(
    process: subprocess.Popen[bytes],
    log: Path,
    url: str,
    name: str,
    also: Callable[[], bool] = lambda: True,
) -> None:
    """Wait until `url` answers 2xx (and `also` holds); fail with the log if the process dies."""

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n" + log.read_text())
        try:
            with urllib.request.urlopen(url, timeout=1):
                return also()
        except OSError:
            return False

    if not wait_until(ready, 30):
        process.kill()
        raise RuntimeError(f"{name} did not start:\n" + log.read_text())


def stop_service(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)
