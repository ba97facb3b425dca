"""The Dockerfile and .dockerignore: linted, and checked against the repository and deploy/.

No image is built here (no Docker daemon, no base images): what can be known without one is
checked instead. hadolint and checkov lint; the rest reads the Dockerfile's instructions.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploykit import (
    ROOT,
    container,
    gunicorn_setting,
    one,
    rendered,
    rendered_text,
    run,
    venv_tool,
)

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Instruction:
    keyword: str
    arguments: str


def instructions() -> list[Instruction]:
    """Return the Dockerfile's instructions, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return found


def final_stage() -> list[Instruction]:
    found = instructions()
    last_from = max(i for i, instruction in enumerate(found) if instruction.keyword == "FROM")
    return found[last_from:]


def the(keyword: str, stage: list[Instruction]) -> list[str]:
    return [i.arguments for i in stage if i.keyword == keyword]


def test_hadolint_passes() -> None:
    result = run(venv_tool("hadolint"), str(DOCKERFILE))

    assert result.returncode == 0, result.stdout + result.stderr


def test_cmd_is_exec_form_gunicorn_with_the_repositorys_config() -> None:
    stage = final_stage()
    (cmd,) = the("CMD", stage)

    # Exec form (JSON): gunicorn is PID 1 and gets the kubelet's SIGTERM, no shell between.
    assert json.loads(cmd) == ["gunicorn", "-c", "gunicorn.conf.py"]
    assert the("ENTRYPOINT", stage) == []
    # gunicorn.conf.py and the module it names are copied into the working directory.
    (workdir,) = the("WORKDIR", stage)
    module = gunicorn_setting("wsgi_app").partition(":")[0]
    copied = [c.split() for c in the("COPY", stage) if not c.startswith("--from")]
    assert [(sources, dest) for *sources, dest in copied] == [
        (["gunicorn.conf.py", f"{module}.py"], "./")
    ]
    assert workdir.startswith("/")


def test_user_is_numeric_and_the_one_the_deployment_runs_as() -> None:
    (user,) = the("USER", final_stage())
    uid, _, gid = user.partition(":")
    pod = one(rendered("base"), "Deployment")["spec"]["template"]["spec"]["securityContext"]

    assert uid.isdigit() and gid.isdigit(), "runAsNonRoot can only check a numeric USER"
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"])
    assert int(uid) != 0


def test_exposes_the_port_the_deployment_declares() -> None:
    (exposed,) = the("EXPOSE", final_stage())
    (port,) = container(rendered("base"))["ports"]

    assert int(exposed) == port["containerPort"]


def test_base_images_are_slim_debian_python_311() -> None:
    bases = [f.split()[0] for f in the("FROM", instructions())]

    assert bases == ["python:3.11-slim-bookworm"] * 2


def ignored(path: str, patterns: list[str]) -> bool:
    """Tell whether Docker's .dockerignore rules leave `path` out of the build context."""
    parts = path.split("/")
    verdict = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        # A pattern matching a directory matches everything in it.
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            verdict = not keep
    return verdict


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def tracked_files() -> list[str]:
    result = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return result.stdout.split()


def test_every_copied_file_is_in_the_build_context() -> None:
    patterns = dockerignore()
    sources = [
        source
        for copy in the("COPY", instructions())
        if not copy.startswith("--from")
        for source in copy.split()[:-1]
    ]

    for source in sources:
        assert (ROOT / source).exists(), source
        under = [
            f for f in tracked_files() if f == source or f.startswith(source.rstrip("/") + "/")
        ]
        assert under, source
        assert [f for f in under if ignored(f, patterns)] == [], source


def test_build_stage_copies_every_package_pyproject_installs() -> None:
    copied = {
        Path(c.split()[0]).name for c in the("COPY", instructions()) if not c.startswith("--from")
    }
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    installed = {p for p in packages if p in ("scorer", "config")}  # pyproject's `find` include

    assert installed == {"scorer", "config"}
    assert installed <= copied
    assert {"pyproject.toml", "README.md"} <= {
        s for c in the("COPY", instructions()) for s in c.split()[:-1]
    }


@pytest.mark.parametrize(
    "path", [".venv/bin/python", ".git/config", ".env", "tests/conftest.py", "bench/run.py"]
)
def test_dockerignore_keeps_local_state_and_tests_out(path: str) -> None:
    assert ignored(path, dockerignore())


def test_dockerignore_matcher_keeps_what_the_image_needs() -> None:
    patterns = dockerignore()

    assert not ignored("scorer/app.py", patterns)
    assert ignored("scorer/__pycache__/app.cpython-311.pyc", patterns)


def checkov_report(tmp_path: Path) -> list[dict[str, Any]]:
    manifests = tmp_path / "rendered.yaml"
    manifests.write_text(rendered_text("example"))
    result = run(
        venv_tool("checkov"),
        "--compact",
        "--skip-download",
        "--output",
        "json",
        "--file",
        str(DOCKERFILE),
        "--file",
        str(manifests),
        timeout=300,
    )
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


def test_checkov_passes_on_the_dockerfile_and_manifests_with_every_skip_explained(
    tmp_path: Path,
) -> None:
    reports = checkov_report(tmp_path)

    assert {r["check_type"] for r in reports} == {"dockerfile", "kubernetes"}
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['resource']})"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    assert failed == []
    for report in reports:
        assert report["summary"]["passed"] > 20
        for check in report["results"]["skipped_checks"]:
            reason = check["check_result"].get("suppress_comment", "")
            assert reason not in ("", "No comment provided"), check["check_id"]
