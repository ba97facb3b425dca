"""Metrics in multiprocess mode: exited workers fold into an archive, totals stay exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Forked "workers" each count and exit; the "master" folds two of them into the archive, then a
# scrape sums everything. Run in a subprocess: the directory must be set before prometheus_client
# is imported, as gunicorn.conf.py does it.
SCRIPT = """
import json, os, sys
from pathlib import Path
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from scorer.metrics import Metrics, archive_dead_worker
directory = Path(sys.argv[1])
pids = []
for hits in (3, 4, 5):
    pid = os.fork()
    if pid == 0:
        metrics = Metrics()
        metrics.hits_value.inc(hits)
        metrics.request_duration.observe(0.01)
        os._exit(0)
    os.waitpid(pid, 0)
    pids.append(pid)
for pid in pids[:2]:
    archive_dead_worker(pid, directory)
text = Metrics().render()[0].decode()
print(json.dumps({"pids": pids, "files": sorted(p.name for p in directory.glob("*.db")),
                  "lines": text.splitlines()}))
"""


def test_exited_workers_fold_into_one_archive_and_totals_stay_exact(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, check=True
    )
    out = json.loads(result.stdout)
    folded, alive = out["pids"][:2], out["pids"][2]

    assert {"counter_archive.db", "histogram_archive.db", f"counter_{alive}.db"} <= set(
        out["files"]
    )
    assert not any(str(pid) in name for pid in folded for name in out["files"])
    assert 'scorer_feature_cache_hits_total{kind="stream",result="value"} 12.0' in out["lines"]
    assert "scorer_request_duration_seconds_count 3.0" in out["lines"]
