"""Swap the master's model for a new, verified version before gunicorn forks the new workers.

With `preload_app`, SIGHUP re-reads gunicorn.conf.py and replaces the workers but never re-imports
wsgi.py: the master keeps the model it preloaded, so the swap happens here, in its `on_reload`
hook, before the new workers are forked (the old ones finish their requests). Downloading and
every check that runs the team's code happen in a short-lived subprocess
(`scorer.models.staging`): no thread and no network call in the master, whose forks must not
inherit a lock held mid-call.
Nothing raised here may escape: an exception out of a hook stops the whole server.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scorer.models.model import Model, build_model
from scorer.scoring import Scorer

logger = logging.getLogger(__name__)

STATE_FILE = "model-state.json"
"""The last version the master tried and how it went; the poller reads it."""
POLL_LOCK = "poll.lock"
"""Held (flock) by the one worker that polls."""
STAGED_FILE = "staged.pkl"


@dataclass(frozen=True, slots=True)
class ReloadState:
    """The outcome of the master's last reload attempt."""

    version: str | None  # None: the check could not even see which version is there
    result: str  # "success" or "failure"
    cause: str = ""


def read_state(run_dir: Path) -> ReloadState | None:
    """Return the last attempt's outcome, or None if there was none (or it cannot be read)."""
    try:
        raw = json.loads((run_dir / STATE_FILE).read_text())
        return ReloadState(raw.get("version"), str(raw["result"]), str(raw.get("cause", "")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_state(run_dir: Path, state: ReloadState) -> None:
    """Replace the state file in one step, so a reader never sees half of it."""
    partial = run_dir / (STATE_FILE + ".part")
    partial.write_text(
        json.dumps({"version": state.version, "result": state.result, "cause": state.cause})
    )
    os.replace(partial, run_dir / STATE_FILE)


class Refused(Exception):
    """The new version did not pass; the current model keeps serving."""

    def __init__(self, version: str | None, cause: str) -> None:
        super().__init__(cause)
        self.version = version


class ModelReloader:
    """The master's side of a reload: stage, unpickle the verified file, swap, re-freeze."""

    def __init__(self, scorer: Scorer, run_dir: Path | None = None) -> None:
        self.scorer = scorer
        self.settings = scorer.settings
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="scorer-run-"))
        if scorer.model is not None:
            scorer.metrics.model_loaded.set(scorer.model.loaded_at)

    def reload(self) -> bool:
        """Swap in the version published now if it passes every check; never raise."""
        started = time.monotonic()
        current = self.scorer.model
        if current is None:
            logger.error("model reload skipped: no model was loaded at start")
            return False
        try:
            outcome = self._stage(current.version)
            if outcome.get("result") == "unchanged":
                logger.info("model %s unchanged (version %s): kept", current.name, current.version)
                return False
            model = self._load_verified(outcome)
        except Refused as exc:
            self._refuse(current, exc.version, str(exc))
            return False
        except (Exception, SystemExit) as exc:  # unpickling runs the team's code
            self._refuse(current, None, f"{type(exc).__name__}: {exc}")
            return False
        finally:
            with contextlib.suppress(OSError):
                (self.run_dir / STAGED_FILE).unlink()
        previous = current.version
        del current  # the last reference but the Scorer's: the swap must free the old model
        self._swap(model)
        logger.info(
            "model %s reloaded: version %s -> %s, sha256 %s, in %.1f s",
            model.name,
            previous,
            model.version,
            model.sha256[:12],
            time.monotonic() - started,
        )
        return True

    def _stage(self, current_version: str) -> dict[str, Any]:
        """Run `scorer.models.staging` and return its answer; raise Refused if it gave none."""
        timeout = self.settings.model_reload_timeout_seconds
        command = [
            sys.executable,
            "-m",
            "scorer.models.staging",
            "--out",
            str(self.run_dir / STAGED_FILE),
            "--current",
            current_version,
            "--settings-on-stdin",
        ]
        # The settings the service started with, not what the environment or .env say now.
        settings = self.settings.model_dump_json(by_alias=True, round_trip=True).encode()
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        try:
            done = subprocess.run(
                command, input=settings, stdout=subprocess.PIPE, env=env, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            seen = _answers(exc.stdout)
            version = seen[-1].get("version") if seen else None
            raise Refused(version, f"not downloaded and checked within {timeout:g} s") from None
        answers = _answers(done.stdout)
        if not answers or answers[-1].get("result") == "seen":
            version = answers[-1].get("version") if answers else None
            raise Refused(version, f"the check exited with status {done.returncode}")
        outcome = answers[-1]
        if outcome.get("result") == "refused":
            raise Refused(outcome.get("version"), str(outcome.get("cause")))
        return outcome

    def _load_verified(self, outcome: dict[str, Any]) -> Model:
        if outcome.get("result") != "verified":
            raise Refused(outcome.get("version"), f"unexpected answer from the check: {outcome}")
        data = (self.run_dir / STAGED_FILE).read_bytes()
        # The file the subprocess checked, byte for byte, or nothing.
        model = build_model(data, self.settings.model_name, str(outcome["sha256"]))
        return replace(model, version=str(outcome["version"]))

    def _swap(self, model: Model) -> None:
        self.scorer.model = model
        # The old model was frozen with everything else: thaw so the collector can free its
        # cycles (functions, classes: frozen again they would stay in the master for good),
        # then freeze again so the new workers leave the new model's pages shared.
        if self.settings.gc_freeze:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        else:
            gc.collect()
        trim_heap()
        metrics = self.scorer.metrics
        metrics.reloads_succeeded.inc()
        metrics.model_loaded.set(model.loaded_at)
        with contextlib.suppress(OSError):
            write_state(self.run_dir, ReloadState(model.version, "success"))

    def _refuse(self, current: Model, version: str | None, cause: str) -> None:
        self.scorer.metrics.reloads_failed.inc()
        with contextlib.suppress(OSError):
            write_state(self.run_dir, ReloadState(version, "failure", cause))
        logger.error(
            "model %s%s refused, still serving version %s: %s",
            current.name,
            f" version {version}" if version else "",
            current.version,
            cause,
        )

    def close(self) -> None:
        """Remove the run directory (the master calls this once, at exit)."""
        shutil.rmtree(self.run_dir, ignore_errors=True)


def trim_heap() -> None:
    """Return the C heap's free pages to the system before the new workers fork.

    Unpickling leaves freed memory in glibc's heap (dicts grown by resizing, the file read):
    kept, it stays resident in the master and in every fork (about 30 MB for the benchmark's
    memory model).
    """
    with contextlib.suppress(OSError, AttributeError):  # no malloc_trim: not glibc
        ctypes.CDLL(None).malloc_trim(0)


def _answers(stdout: bytes | None) -> list[dict[str, Any]]:
    """Return the JSON lines the check printed, in order."""
    answers = []
    for line in (stdout or b"").decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            answer = json.loads(line)
            if isinstance(answer, dict):
                answers.append(answer)
    return answers


def reload_model(app: Any) -> bool:
    """Reload the model of the preloaded Flask app, if it has a reloader; never raise."""
    reloader: ModelReloader | None = app.extensions.get("scorer.reloader")
    if reloader is None:
        logger.warning("SIGHUP: this app has no model reloader; the workers were replaced")
        return False
    return reloader.reload()
