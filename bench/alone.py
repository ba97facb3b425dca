"""Run one scenario on its own: a fresh emulator with the models and features, stopped after.

`bench/run.py` sets the same up for the whole harness and must pickle with the seed's
cloudpickle; alone, without the seed's venv, the project's own cloudpickle will do.
"""

import datetime
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emulator import create_features_table, pickle_models, start_emulator, upload_models
from load import POOL
from procs import free_port, stop_process
from scenarios import Bench
from servers import BENCH_DIR, SEED_VENV

RESULTS_DIR = BENCH_DIR / "results"
LOG_DIR = RESULTS_DIR / "logs"


@contextmanager
def fresh_bench(name: str, **options: Any) -> Iterator[Bench]:
    """Yield a Bench on a new emulator holding every benchmark model and the features."""
    port = free_port()
    emulator = start_emulator(port, LOG_DIR / f"moto-{name}.log")
    endpoint = f"http://127.0.0.1:{port}"
    seed_python = SEED_VENV / "bin" / "python"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
            pickler = seed_python if seed_python.exists() else Path(sys.executable)
            pickle_models(pickler, BENCH_DIR / "models.py", Path(tmp))
            create_features_table(endpoint, POOL)
            models = upload_models(endpoint, Path(tmp))
        yield Bench(endpoint, models, LOG_DIR, RESULTS_DIR / "lua", **options)
    finally:
        stop_process(emulator)


def output_path(name: str, short: bool, suffix: str = "json") -> Path:
    """Where a standalone run's results go: a short run checks, it is no figure to keep."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return (LOG_DIR if short else RESULTS_DIR) / f"{name}-{stamp}.{suffix}"
