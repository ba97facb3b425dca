"""Gunicorn configuration: `gunicorn -c gunicorn.conf.py` runs the service.

Values come from the service's settings (env and `.env`); gunicorn's own command-line flags and
GUNICORN_CMD_ARGS still override anything set here.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from config import SettingsError, running_settings

try:
    # At a reload (SIGHUP) a bad value keeps the running settings, with one error line.
    settings = running_settings.load()
except SettingsError as exc:
    sys.exit(f"scorer: cannot start: {exc}")

# --- app --------------------------------------------------------------------------------
wsgi_app = "wsgi:app"

# --- socket -----------------------------------------------------------------------------
bind = [settings.bind]
backlog = 2048
control_socket_disable = True  # no runtime control socket: operators signal the master instead
# HTTP/1.1 only: TLS and HTTP/2 end in the proxy in front. The head deadline and the refusal on
# arrival (scorer/serving/) read HTTP/1.1; gunicorn's default, said here so nobody turns it on.
http_protocols = "h1"

# --- workers ----------------------------------------------------------------------------
# gthread (a thread pool per worker) with its collaborators (scorer/serving/): each request's
# wait for a thread handed to the app, refusal on arrival while a line stands, new connections
# left to a less busy worker, a deadline for each request's head (HEAD_TIMEOUT_SECONDS), and a
# stop that refuses new connections at once.
worker_class = "scorer.serving.worker.ScorerWorker"
workers = settings.web_concurrency
threads = settings.threads
timeout = settings.timeout
graceful_timeout = 30
keepalive = 5
max_requests = settings.max_requests
max_requests_jitter = settings.max_requests // 10

# --- preload ----------------------------------------------------------------------------
# The master loads and validates the model once; workers share its pages copy-on-write.
preload_app = True

# --- metrics ----------------------------------------------------------------------------
# prometheus_client reads this when first imported, which preloading the app does next:
# set it now, and start every run from an empty directory so dead workers' files do not linger.
_metrics_dir = Path(
    os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="scorer-metrics-")
)
_metrics_dir.mkdir(parents=True, exist_ok=True)
# Once per master: a reload (SIGHUP) reads this file again and must not reset the counters.
if os.environ.get("SCORER_METRICS_MASTER") != str(os.getpid()):
    for _stale in _metrics_dir.glob("*.db"):
        _stale.unlink()
    os.environ["SCORER_METRICS_MASTER"] = str(os.getpid())
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)

# --- logging ----------------------------------------------------------------------------
loglevel = settings.log_level
errorlog = "-"
accesslog = None  # per-request access lines cost throughput; the metrics count requests


# --- hooks ------------------------------------------------------------------------------
def when_ready(server: Any) -> None:
    """Freeze the preloaded objects so the collector in workers never writes their pages."""
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()
    server.log.info("scorer ready on %s with %d workers", ", ".join(bind), workers)


def post_fork(server: Any, worker: Any) -> None:
    """Create the worker's DynamoDB client, fetch pool, feature cache and model poll after fork."""
    from scorer.worker import init_worker

    worker.head_timeout = settings.head_timeout_seconds
    app = worker.app.wsgi()
    if hasattr(worker, "admit_with"):  # ScorerWorker; not a worker class given with -k
        worker.admit_with(app.extensions.get("scorer.shedder"), app.extensions["scorer"].metrics)
    # ScorerWorker.retire; a worker class given with -k has none (see scorer/serving/watchdog.py).
    init_worker(
        app,
        getattr(worker, "retire", None),
        master_pid=worker.ppid,
        is_alive=lambda: bool(worker.alive),
    )


def worker_exit(server: Any, worker: Any) -> None:
    """Flush the worker's queued inference events before it exits (stop, reload, recycling).

    Within KAFKA_FLUSH_SECONDS (10 s, at most 20): it starts once the worker's requests are done,
    and graceful_timeout (30 s) bounds the drain and this together; the Kubernetes kit's grace
    period (45 s) covers its preStop sleep (10 s) and graceful_timeout.
    """
    from scorer.worker import exit_worker

    exit_worker(worker.app.wsgi())


def on_reload(server: Any) -> None:
    """Swap in a new model version (SIGHUP, by hand or from the poll) before new workers fork."""
    if not server.cfg.preload_app:
        return  # each new worker imports wsgi.py, and so loads the model, itself
    try:
        from scorer.models.reload import reload_model

        reload_model(server.app.wsgi())
    except BaseException as exc:  # anything escaping a hook stops the master: keep serving
        server.log.error("model reload failed, keeping the current model: %r", exc)


def on_exit(server: Any) -> None:
    """Remove the run directory the model reloads and the poll share."""
    reloader = (
        server.app.wsgi().extensions.get("scorer.reloader") if server.cfg.preload_app else None
    )
    if reloader is not None:
        reloader.close()


def child_exit(server: Any, worker: Any) -> None:
    """Fold the exited worker's metrics into the archive and drop its live gauges."""
    from scorer.metrics import archive_dead_worker

    try:
        archive_dead_worker(worker.pid, _metrics_dir)
    except Exception:  # metrics must never take the master down
        server.log.exception("could not archive the metrics of worker %s", worker.pid)
