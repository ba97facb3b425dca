"""End to end: Debian's Prometheus scrapes a real gunicorn, and every query the kit ships has data.

A misspelt metric or label gives an empty result, not an error, so each dashboard expression and
each recording rule must return at least one series once the service has seen some traffic of
every kind: scores, cache hits and misses, a bad request, a model error, a request stuck past
TIMEOUT, DynamoDB throttling and unprocessed keys (through tests/faultproxy.py). Everything
listens on 127.0.0.1; the load is a few dozen requests; Prometheus runs with a temporary config
and data directory and is stopped at the end.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from examples.local_stack import aws_client, create_features_table, free_port, upload_model
from tests import fakes
from tests.conftest import seed_features
from tests.deploykit import DASHBOARD, debian_tool, recording_rules, rules_spec
from tests.faultproxy import PASS, THROTTLE, UNPROCESSED, FaultProxy
from tests.servers import (
    Server,
    gunicorn_env,
    start_service,
    stop_service,
    wait_ready,
    wait_until,
    worker_pids,
)

TABLE = "prometheus-features"
FEATURES = fakes.FEATURES
TIMEOUT = 2  # the service's TIMEOUT: a stuck request gets its 504 after this many seconds
LABELS = {"namespace": "e2e", "pod": "scorer-e2e", "service": "scorer", "container": "scorer"}
"""What a ServiceMonitor adds to every series; the rules and panels group by them."""
SUBSTITUTIONS = {"$namespace": ".*", "$__rate_interval": "1m"}
"""Grafana's variables, as Grafana would fill them in."""
DATA_WAIT = 60  # seconds to wait for every expression to have data, after the traffic


# --- Prometheus ----------------------------------------------------------------------------
@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[Any]:
        return list(self.api("query", query=expr)["result"])


def start_prometheus(tmp: Path, target_port: int) -> Prometheus:
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules_spec(), sort_keys=False))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {
                "job_name": "scorer",  # the ServiceMonitor's jobLabel gives the same
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"], "labels": LABELS}],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                debian_tool("prometheus"),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_ready(process, log, f"http://127.0.0.1:{port}/-/ready", "prometheus")
    return Prometheus(process, port, log)


# --- the stack and its traffic -------------------------------------------------------------
@dataclass
class Stack:
    server: Server
    proxy: FaultProxy
    prometheus: Prometheus
    emulator: int


@pytest.fixture(scope="module")
def stack(emulator: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    debian_tool("prometheus")  # skip (or fail under CI) before starting anything
    tmp = tmp_path_factory.mktemp("prometheus")
    create_features_table(aws_client("dynamodb", emulator), TABLE)
    model = fakes.pickle_by_value(fakes.echo_model(FEATURES, predict=fakes.troubled_predict))
    model_path = upload_model(aws_client("s3", emulator), "prometheus-models", "m.pkl", model)
    proxy = FaultProxy(emulator)
    env = gunicorn_env(
        emulator,
        PORT=str(free_port()),
        S3_MODEL_PATH=model_path,
        FEATURES_TABLE=TABLE,
        TIMEOUT=str(TIMEOUT),
        FEATURE_TIMEOUT_SECONDS="0.5",
        AWS_ENDPOINT_URL_DYNAMODB=proxy.url,
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
    )
    server = start_service(env, tmp)
    prometheus = start_prometheus(tmp, server.port)
    try:
        send_traffic(Stack(server, proxy, prometheus, emulator))
        yield Stack(server, proxy, prometheus, emulator)
    finally:
        prometheus.process.terminate()
        try:
            prometheus.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prometheus.process.kill()
        stop_service(server)
        proxy.close()


def score(server: Server, *urls: str, user: str = "u") -> int:
    status, _ = server.post(
        "/score", {"user": {"userid": user}, "streams": [{"streamUrl": u} for u in urls]}
    )
    return status


def send_traffic(stack: Stack) -> None:
    """A few requests of every kind the dashboard and rules count; bounded, on 127.0.0.1."""
    server, proxy = stack.server, stack.proxy
    urls = [f"https://e2e/{n}" for n in range(20)]
    seed_features(aws_client("dynamodb", stack.emulator), TABLE, urls, FEATURES)
    wait_for_a_scrape(stack.prometheus)  # so counters are seen before and after they move

    # A request stuck past TIMEOUT: a 504, and the worker replaced.
    master = server.process.pid
    before = worker_pids(master)
    assert score(server, urls[0], user="hang") == 504
    assert wait_until(lambda: len(worker_pids(master) - before) == 1, 30), "worker not replaced"
    assert wait_until(lambda: len(worker_pids(master)) == 2, 30)

    for n in range(12):  # misses, then hits
        assert score(server, *urls[n % 4 * 5 : n % 4 * 5 + 5]) == 200
    assert server.post("/score", {"streams": "not a list"})[0] == 422
    assert score(server, "boom") == 500
    for path in ("/", "/health"):
        with urllib.request.urlopen(server.url(path), timeout=10) as response:
            assert response.status == 200

    # DynamoDB throttling (errors, degraded requests) and unprocessed keys, on new streams.
    for mode, count in ((THROTTLE, 2), (UNPROCESSED, 2)):
        proxy.set_mode(mode)
        for n in range(count):
            assert score(server, *(f"https://e2e/{mode}/{n}/{k}" for k in range(3))) == 200
    proxy.set_mode(PASS)


def wait_for_a_scrape(prometheus: Prometheus) -> None:
    assert wait_until(lambda: bool(prometheus.query('up{job="scorer"} == 1')), 30), (
        "the service was never scraped:\n" + prometheus.log.read_text()
    )


# --- what the kit queries ------------------------------------------------------------------
def dashboard_expressions() -> dict[str, str]:
    """Return each panel target's expression with Grafana's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: dict[str, str] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in SUBSTITUTIONS.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"an unknown variable in {panel['title']!r}: {expr}"
            found[f"panel {panel['title']!r} {target['refId']}"] = expr
    return found


def expressions() -> dict[str, str]:
    found = dashboard_expressions()
    found.update({f"recording rule {name}": name for name in recording_rules()})
    return found


def test_every_dashboard_query_and_recording_rule_returns_data(stack: Stack) -> None:
    pending = expressions()

    def all_have_data() -> bool:
        for name, expr in list(pending.items()):
            if stack.prometheus.query(expr):
                del pending[name]
        return not pending

    wait_until(all_have_data, DATA_WAIT)

    assert pending == {}, "expressions with no data:\n" + "\n".join(
        f"  {name}: {expr}" for name, expr in sorted(pending.items())
    )


def test_dashboard_namespace_variable_finds_the_namespace(stack: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "namespace"]
    metric, label = variable["query"]["query"].removeprefix("label_values(")[:-1].split(", ")

    values = stack.prometheus.api(f"label/{label}/values", **{"match[]": metric})

    assert values == [LABELS["namespace"]]


def test_every_rule_evaluates_without_error(stack: Stack) -> None:
    # Some errors (many-to-many matching, say) only show with real series.
    def evaluated() -> list[dict[str, Any]]:
        groups = stack.prometheus.api("rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    never = "0001-01-01T00:00:00Z"  # Prometheus' lastEvaluation before the first one
    assert wait_until(lambda: all(r["lastEvaluation"] != never for r in evaluated()), 30)
    rules = evaluated()
    assert len(rules) == sum(len(g["rules"]) for g in rules_spec()["groups"])
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
