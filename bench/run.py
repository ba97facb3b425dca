"""Run the benchmark end to end: set up, start the emulator, run the scenarios, write the report.

.venv/bin/python bench/run.py                 # everything (what `make bench` runs)
.venv/bin/python bench/run.py --only s1,s6    # a subset, e.g. while iterating
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
import tempfile
import time
from pathlib import Path
from typing import Any

import hotpath
from emulator import create_features_table, pickle_models, start_emulator, upload_models
from latency import SCENARIOS as LATENCY_SCENARIOS
from load import POOL
from overload import SCENARIOS as OVERLOAD_SCENARIOS
from procs import free_port, stop_process
from reloading import reload_scenario
from report import write_chart, write_markdown
from scenarios import SCENARIOS as BASE_SCENARIOS
from scenarios import Bench
from servers import BENCH_DIR, REPO, SEED_VENV, THREADS

SCENARIOS = {
    **BASE_SCENARIOS,
    **LATENCY_SCENARIOS,
    **OVERLOAD_SCENARIOS,
    "reload": reload_scenario,
}

OURS_ENV = {
    "HOST": "127.0.0.1",
    "PORT": "PORT",
    "WEB_CONCURRENCY": "N",
    "THREADS": str(THREADS),
    "GC_FREEZE": "true|false",
    "S3_MODEL_PATH": "s3://bench-models/models/MODEL.pkl",
    "FEATURES_TABLE": "features",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:MOTO_PORT",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "LOGS_FRACTION": "0",
}


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help="comma-separated scenarios (s1..s9, reload)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="wrk rounds per server and scenario")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one wrk round")
    parser.add_argument("--warmup", type=float, default=4.0, help="wrk warm-up per server, seconds")
    parser.add_argument("--skip-setup", action="store_true", help="do not run bench/setup.sh")
    parser.add_argument(
        "--report", default=str(REPO / "docs" / "benchmarks.md"), help="Markdown report path"
    )
    return parser.parse_args()


def describe_machine() -> dict[str, Any]:
    """Return nproc, CPU model and Python version."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_scenarios(bench: Bench, names: list[str]) -> dict[str, Any]:
    """Run each named scenario; one that crashes is recorded as failed and the rest still run."""
    out: dict[str, Any] = {}
    for name in names:
        started = time.monotonic()
        print(f"[bench] {name}: {SCENARIOS[name].__doc__}", flush=True)
        try:
            out[name] = SCENARIOS[name](bench)
        except Exception as exc:  # a broken scenario must not hide the others' numbers
            out[name] = {"failed": True, "error": f"{type(exc).__name__}: {exc}"}
            print(f"[bench] {name} FAILED: {exc}", flush=True)
        out[name]["elapsed_s"] = round(time.monotonic() - started, 1)
    return out


def main() -> int:
    """Set up, run, report; exit non-zero if any scenario failed."""
    args = parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if not args.skip_setup:
        subprocess.run(
            ["bash", str(BENCH_DIR / "setup.sh")],
            check=True,
            env={**os.environ, "PYTHON": sys.executable},
        )
    results_dir = BENCH_DIR / "results"
    log_dir = results_dir / "logs"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    port = free_port()
    emulator = start_emulator(port, log_dir / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
            described = pickle_models(
                SEED_VENV / "bin" / "python", BENCH_DIR / "models.py", Path(tmp)
            )
            create_features_table(endpoint, POOL)
            models = upload_models(endpoint, Path(tmp))
        bench = Bench(
            endpoint=endpoint,
            models=models,
            log_dir=log_dir,
            lua_dir=results_dir / "lua",
            rounds=args.rounds,
            seconds=args.seconds,
            warmup=args.warmup,
        )
        scenarios = run_scenarios(bench, names)
    finally:
        stop_process(emulator)
    print("[bench] hot path, in process", flush=True)
    hot = hotpath.measure()
    results_file = results_dir / f"bench-{stamp}.json"
    results = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join([Path(sys.executable).name, "bench/run.py", *sys.argv[1:]]),
        "machine": describe_machine(),
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup},
        "models": described,
        "commands": collect_commands(scenarios),
        "results_file": str(results_file.relative_to(REPO)),
        "scenarios": scenarios,
        "hotpath": hot,
    }
    results_file.write_text(json.dumps(results, indent=1).replace(f"{REPO}/", ""))
    chart = BENCH_DIR / "chart.png"
    write_chart(results, chart)
    write_markdown(results, Path(args.report), chart)
    print(f"[bench] wrote {args.report}, {chart}, {results_file}", flush=True)
    return 1 if any(failed(s) for s in scenarios.values()) else 0


def collect_commands(scenarios: dict[str, Any]) -> dict[str, str]:
    """Gather the server and load commands used, once each, ports and paths made generic."""
    commands = {
        "setup": "bash bench/setup.sh",
        "emulator": "python -m moto.server -H 127.0.0.1 -p MOTO_PORT",
        "ours env": " ".join(f"{k}={v}" for k, v in OURS_ENV.items()),
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
    cmd = cmd.replace(str(REPO) + "/", "")
    cmd = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", cmd)
    return re.sub(r"--port \d+", "--port PORT", cmd)


def failed(scenario: dict[str, Any]) -> bool:
    """Tell whether a scenario crashed or saw errors or non-2xx answers."""
    if scenario.get("failed"):
        return True
    parts = [scenario, *scenario.get("by_workers", {}).values()]
    if any(s.get("failed") for p in parts for s in p.get("summary", {}).values()):
        return True
    return any(v.get("failed") for v in scenario.get("variants", {}).values())


if __name__ == "__main__":
    sys.exit(main())
