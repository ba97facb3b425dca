"""Run the benchmark: set up, start the emulator, run the scenarios, write the report.

.venv/bin/python bench/run.py                  # every `make bench` scenario; docs/benchmarks.md
.venv/bin/python bench/run.py --only s1,s9     # some (bench/scenarios.py names them all)
.venv/bin/python bench/run.py --only s9 --short  # a quick check that one works: no figure

A run of some scenarios keeps its results but writes its report to bench/results/logs/, not over
docs/benchmarks.md; only a full run measures the in-process hot path.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hotpath
from emulator import emulated
from load import POOL
from report import write_chart, write_markdown
from scenarios import BY_NAME, SCENARIOS, Scenario
from servers import BENCH_DIR, REPO, SEED_VENV, THREADS, Bench

DEFAULT = [s.name for s in SCENARIOS if s.in_make_bench]
RESULTS = BENCH_DIR / "results"
OURS_ENV = (
    "HOST=127.0.0.1 PORT=PORT WEB_CONCURRENCY=N THREADS={threads} GC_FREEZE=true|false"
    " S3_MODEL_PATH=s3://bench-models/models/MODEL.pkl FEATURES_TABLE=features"
    " AWS_ENDPOINT_URL=http://127.0.0.1:MOTO_PORT AWS_ACCESS_KEY_ID=testing"
    " AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 LOGS_FRACTION=0"
)


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    names = ", ".join(
        f"{s.name}{'' if s.in_make_bench else ' (not in make bench)'}" for s in SCENARIOS
    )
    parser.add_argument("--only", default=",".join(DEFAULT), help=f"comma-separated: {names}")
    parser.add_argument("--rounds", type=int, default=5, help="wrk rounds per server and scenario")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one wrk round")
    parser.add_argument("--warmup", type=float, default=4.0, help="wrk warm-up per server, seconds")
    parser.add_argument("--short", action="store_true", help="2 rounds of 2 s, 1 s warm-ups")
    parser.add_argument("--skip-setup", action="store_true", help="do not run bench/setup.sh")
    parser.add_argument("--report", help="Markdown report path (default: see above)")
    return parser.parse_args()


def run(bench: Bench, scenario: Scenario) -> dict[str, Any]:
    """Run one scenario; one that crashes is recorded as failed, so the rest still run."""
    started = time.monotonic()
    print(f"[bench] {scenario.name}: {scenario.title}", flush=True)
    try:
        result = scenario.shape(bench, *scenario.servers, **scenario.options)
    except Exception as exc:  # a broken scenario must not hide the others' numbers
        result = {"failed": True, "error": f"{type(exc).__name__}: {exc}"}
        print(f"[bench] {scenario.name} FAILED: {exc}", flush=True)
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def main() -> int:
    """Set up, run, report; exit non-zero if any scenario failed."""
    args = parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := [n for n in names if n not in BY_NAME]:
        sys.exit(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    if not args.skip_setup:
        env = {**os.environ, "PYTHON": sys.executable}
        subprocess.run(["bash", str(BENCH_DIR / "setup.sh")], check=True, env=env)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = RESULTS / "logs"
    timing = (2, 2.0, 1.0) if args.short else (args.rounds, args.seconds, args.warmup)
    with emulated(log_dir, POOL, SEED_VENV / "bin" / "python") as (endpoint, models):
        bench = Bench(endpoint, models["paths"], log_dir, *timing, args.short)
        scenarios = {name: run(bench, BY_NAME[name]) for name in names}
    published = names == DEFAULT and not args.short
    results_file = (RESULTS if not args.short else log_dir) / f"bench-{stamp}.json"
    results = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join([Path(sys.executable).name, "bench/run.py", *sys.argv[1:]]),
        "machine": describe_machine(),
        "settings": dict(zip(("rounds", "seconds", "warmup"), timing, strict=True)),
        "models": models["described"],
        "commands": collect_commands(scenarios),
        "results_file": str(results_file.relative_to(REPO)),
        "scenarios": scenarios,
    }
    if published:
        print("[bench] hot path, in process", flush=True)
        results["hotpath"] = hotpath.measure()
    results_file.write_text(json.dumps(results, indent=1).replace(f"{REPO}/", ""))
    default_report = REPO / "docs" / "benchmarks.md" if published else log_dir / f"{stamp}.md"
    report = Path(args.report) if args.report else default_report
    chart = BENCH_DIR / "chart.png" if published else report.with_suffix(".png")
    write_chart(results, chart)
    write_markdown(results, report, chart)
    print(f"[bench] wrote {report}, {chart}, {results_file}", flush=True)
    return 1 if any(failed(s) for s in scenarios.values()) else 0


def describe_machine() -> dict[str, Any]:
    """Return nproc, CPU model and Python version."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def collect_commands(scenarios: dict[str, Any]) -> dict[str, str]:
    """Gather the server and load commands used, once each, ports and paths made generic."""
    commands = {
        "setup": "bash bench/setup.sh",
        "emulator": "python -m moto.server -H 127.0.0.1 -p MOTO_PORT",
        "ours env": OURS_ENV.format(threads=THREADS),
    }
    for result in scenarios.values():
        for part in [result, *result.get("by_workers", {}).values()]:
            for label, cmd in part.get("server_commands", {}).items():
                commands.setdefault(label.split("(")[0], generic(cmd))
            if part.get("wrk_command"):
                commands.setdefault("wrk", generic(part["wrk_command"]))
    return commands


def generic(cmd: str) -> str:
    """Strip this checkout's path and this run's ports from a command line."""
    cmd = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", cmd.replace(str(REPO) + "/", ""))
    return re.sub(r"--port \d+", "--port PORT", cmd)


def failed(scenario: dict[str, Any]) -> bool:
    """Tell whether a scenario crashed or saw errors or non-2xx answers."""
    parts = [scenario, *scenario.get("by_workers", {}).values()]
    inner = [s for p in parts for s in p.get("summary", {}).values()]
    inner += scenario.get("variants", {}).values()
    return bool(scenario.get("failed")) or any(s.get("failed") for s in inner)


if __name__ == "__main__":
    sys.exit(main())
