"""Watch the published model for a new version from one worker, and ask the master to reload.

Every worker runs a poll thread, but only the one holding an flock on the run directory's lock
file checks (one HEAD, or one stat, per period for the whole server); if it dies, the kernel drops
its lock and another worker takes over at its next period. On a new version it sends SIGHUP to
the master, the same path as a reload by hand. A version the master refused (the state file says
so) is not asked for again until the object changes; errors are logged, counted and retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from scorer.metrics import Metrics
from scorer.models.reload import POLL_LOCK, read_state
from scorer.models.source import ModelSource

logger = logging.getLogger(__name__)


class ModelPoller:
    """Check the model's version every `period` seconds while this worker holds the poll lock."""

    def __init__(
        self,
        source: ModelSource,
        period: float,
        run_dir: Path,
        serving: str,
        metrics: Metrics,
        *,
        master_pid: int,
        is_alive: Callable[[], bool] = lambda: True,
        signal_master: Callable[[int], None] = lambda pid: os.kill(pid, signal.SIGHUP),
    ) -> None:
        self._source = source
        self._period = period
        self._run_dir = run_dir
        self._serving = serving
        self._metrics = metrics
        self._master_pid = master_pid
        self._is_alive = is_alive
        self._signal_master = signal_master
        self._signalled: str | None = None
        self._lock_fd: int | None = None
        self._stop = threading.Event()

    def start(self) -> threading.Thread:
        """Poll in a daemon thread until the worker stops."""
        thread = threading.Thread(target=self._run, name="model-poll", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """End the poll thread at its next wake-up."""
        self._stop.set()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._period):
                # A stopping worker or an orphan must not ask anyone for a reload.
                if not self._is_alive() or os.getppid() != self._master_pid:
                    break
                if self.hold_lock():
                    self.poll_once()
        except Exception:  # never take the worker down; the next worker polls instead
            logger.exception("model poll stopped")
        finally:
            self.release_lock()

    def hold_lock(self) -> bool:
        """Take the poll lock if no other process holds it; keep it once taken."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self._run_dir / POLL_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        logger.info("worker %d polls the model every %g s", os.getpid(), self._period)
        return True

    def release_lock(self) -> None:
        """Let another worker poll (closing the file drops the flock)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def poll_once(self) -> bool:
        """Check the version once; return whether the master was asked to reload."""
        try:
            seen = self._source.head().label
        except Exception as exc:  # S3 down, no credentials, file gone: all retried
            self._metrics.model_poll_errors.inc()
            logger.warning("model poll failed (retried in %g s): %s", self._period, exc)
            return False
        state = read_state(self._run_dir)
        tried = state.version if state is not None else None  # refused, if not served
        if seen in (self._serving, self._signalled, tried):
            return False
        self._signalled = seen
        logger.info(
            "model version %s published (serving %s): asking the master to reload",
            seen,
            self._serving,
        )
        self._signal_master(self._master_pid)
        return True
