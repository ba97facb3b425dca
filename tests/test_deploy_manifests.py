"""deploy/: the kustomize base and the example overlay, rendered and checked without a cluster.

Kubernetes' own schemas (kubernetes-validate, strict: an unknown field fails) for the oldest and
newest versions supported, the Prometheus Operator's CRD schemas for its objects, then the
fields that must agree with each other and with the service.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from flask.testing import FlaskClient

from config import Settings
from scorer.metrics import Metrics
from tests.conftest import make_settings, sample
from tests.deploykit import (
    DASHBOARD,
    KUSTOMIZATIONS,
    OPERATOR_KINDS,
    ROOT,
    container,
    gunicorn_setting,
    one,
    rendered,
    run,
    venv_tool,
)

OLDEST, NEWEST = "1.25.0", "1.37.0"
"""Kubernetes versions the manifests are validated for (kubernetes-validate's oldest schemas)."""
CRD_SCHEMAS = ROOT / "tests" / "fixtures" / "prometheus-operator"
GRACE_MARGIN = 5  # seconds for the master to exit once its workers have drained
WRITABLE = ("/tmp",)  # gunicorn's worker heartbeat files and tempfile's default directory

all_kustomizations = pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))


# --- schemas ----------------------------------------------------------------------------------
def validate_with_kubernetes(objects: list[dict[str, Any]], version: str, tmp: Path) -> str:
    """Run kubernetes-validate --strict; return its output, failing on any error or warning."""
    manifest = tmp / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    result = run(
        venv_tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(manifest)
    )
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}".strip()


@all_kustomizations
@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_manifests_pass_strict_kubernetes_validation(
    kustomization: str, version: str, tmp_path: Path
) -> None:
    objects = [o for o in rendered(kustomization) if o["kind"] not in OPERATOR_KINDS]

    assert validate_with_kubernetes(objects, version, tmp_path) == "exit 0"


def test_strict_validation_rejects_a_misspelt_field(tmp_path: Path) -> None:
    objects = [o for o in rendered("example") if o["kind"] == "Deployment"]
    objects[0]["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}

    assert "livenessprobe" in validate_with_kubernetes(objects, NEWEST, tmp_path)


def strict_crd_schema(kind: str) -> dict[str, Any]:
    """Return the CRD's schema, refusing unknown fields as the API server's strict validation does.

    A structural schema prunes unknown fields silently; a test must see a misspelt one.
    """
    schema: dict[str, Any] = json.loads((CRD_SCHEMAS / f"{kind.lower()}-v1.json").read_text())[
        "schema"
    ]

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
                and "additionalProperties" not in node
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    # `metadata` is ObjectMeta, checked by the API server itself, not described by the CRD.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def crd_errors(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(strict_crd_schema(obj["kind"]))
    return [
        f"{obj['kind']} {'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(obj)
    ]


@all_kustomizations
def test_every_object_is_checked_by_one_schema(kustomization: str) -> None:
    kinds = {o["kind"] for o in rendered(kustomization)}
    known = {"Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment"}
    known |= {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}

    assert kinds - known - OPERATOR_KINDS == set(), "a kind neither schema check covers"
    assert kinds >= OPERATOR_KINDS


@all_kustomizations
def test_prometheus_operator_objects_match_their_crd_schemas(kustomization: str) -> None:
    operator_objects = [o for o in rendered(kustomization) if o["kind"] in OPERATOR_KINDS]

    assert [e for o in operator_objects for e in crd_errors(o)] == []
    assert {o["apiVersion"] for o in operator_objects} == {"monitoring.coreos.com/v1"}


def test_crd_check_rejects_a_misspelt_field() -> None:
    monitor = one(rendered("example"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["prot"] = "http"

    assert any("prot" in e for e in crd_errors(monitor))


# --- the Deployment and the service -----------------------------------------------------------
def probes(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    scorer = container(objects)
    return {kind: scorer[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}


def named_port(objects: list[dict[str, Any]], name: str) -> int:
    (port,) = [p["containerPort"] for p in container(objects)["ports"] if p["name"] == name]
    return int(port)


def env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e for e in container(objects)["env"]}


@all_kustomizations
def test_probes_ask_the_port_the_service_listens_on(kustomization: str) -> None:
    objects = rendered(kustomization)
    listening = int(env(objects)["PORT"]["value"])

    for probe in probes(objects).values():
        port = probe["httpGet"]["port"]
        assert (named_port(objects, port) if isinstance(port, str) else port) == listening


@all_kustomizations
def test_probe_paths_answer_200_without_reading_the_feature_store(
    kustomization: str, client: FlaskClient, metrics: Metrics
) -> None:
    # The app of conftest: a model that reads features, DynamoDB in the emulator.
    def reads() -> float:
        return sample(metrics, "scorer_dynamodb_request_duration_seconds_count")

    for kind, probe in probes(rendered(kustomization)).items():
        assert client.get(probe["httpGet"]["path"]).status_code == 200, kind
    assert reads() == 0

    # The same measure sees a request that does read the store.
    client.post("/score", json={"user": {}, "streams": [{"streamUrl": "https://probe/1"}]})
    assert reads() > 0


@all_kustomizations
def test_liveness_only_asks_whether_the_process_answers(kustomization: str) -> None:
    found = probes(rendered(kustomization))

    assert found["livenessProbe"]["httpGet"]["path"] == "/"  # no model, cache or store involved
    assert found["readinessProbe"]["httpGet"]["path"] == "/health"
    # Startup is what waits for the model download: the others only start after it.
    startup = found["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@all_kustomizations
def test_grace_period_covers_the_prestop_sleep_and_gunicorns_drain(kustomization: str) -> None:
    objects = rendered(kustomization)
    command = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    grace = one(objects, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]

    assert grace >= int(command[1]) + gunicorn_setting("graceful_timeout") + GRACE_MARGIN


@all_kustomizations
def test_rollouts_never_take_a_pod_away_before_its_replacement_is_ready(
    kustomization: str,
) -> None:
    deployment = one(rendered(kustomization), "Deployment")

    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] in (0, "0%")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


def pod_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    return dict(one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Tell whether a label selector (matchLabels only, as deploy/ writes them) picks `labels`."""
    assert set(selector) == {"matchLabels"}, "only matchLabels are checked here"
    wanted = selector["matchLabels"]
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


@all_kustomizations
def test_service_pdb_networkpolicy_and_spread_select_the_deployments_pods(
    kustomization: str,
) -> None:
    objects = rendered(kustomization)
    labels = pod_labels(objects)
    deployment = one(objects, "Deployment")["spec"]
    service = one(objects, "Service")["spec"]

    assert selects(deployment["selector"], labels)
    assert selects({"matchLabels": service["selector"]}, labels)
    assert selects(one(objects, "PodDisruptionBudget")["spec"]["selector"], labels)
    policy = one(objects, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"], labels)
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == {"http"}
    for constraint in deployment["template"]["spec"]["topologySpreadConstraints"]:
        assert selects(constraint["labelSelector"], labels)
    # The Service forwards to the container's named port.
    for port in service["ports"]:
        named_port(objects, port["targetPort"])


@all_kustomizations
def test_pods_spread_over_zones_and_nodes(kustomization: str) -> None:
    spec = one(rendered(kustomization), "Deployment")["spec"]["template"]["spec"]

    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


@all_kustomizations
def test_hpa_scales_the_deployment_on_cpu_with_autoscaling_v2(kustomization: str) -> None:
    objects = rendered(kustomization)
    hpa = one(objects, "HorizontalPodAutoscaler")
    deployment = one(objects, "Deployment")

    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert [(m["type"], m["resource"]["name"]) for m in hpa["spec"]["metrics"]] == [
        ("Resource", "cpu")
    ]
    assert hpa["spec"]["minReplicas"] >= 2  # a PDB of maxUnavailable 1 leaves one serving


@all_kustomizations
def test_servicemonitor_scrapes_the_services_metrics_port(kustomization: str) -> None:
    objects = rendered(kustomization)
    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")["spec"]

    assert selects(monitor["selector"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [(e["port"], e["path"]) for e in monitor["endpoints"]] == [("http", "/metrics")]
    assert monitor["endpoints"][0]["port"] in port_names
    # The alerts select job="scorer": the ServiceMonitor takes the job from this label.
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "scorer"
    # The scrape annotations, for Prometheus without the Operator, name the same port.
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == named_port(objects, "http")
    assert annotations["prometheus.io/path"] == "/metrics"


def mounts(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return the volume behind each mount path of the scorer container."""
    volumes = {
        v["name"]: v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    return {m["mountPath"]: volumes[m["name"]] for m in container(objects)["volumeMounts"]}


@all_kustomizations
def test_metrics_dir_and_tmp_are_mounted_emptydirs_on_a_read_only_root(
    kustomization: str,
) -> None:
    objects = rendered(kustomization)
    metrics_dir = env(objects)["PROMETHEUS_MULTIPROC_DIR"]["value"]
    found = mounts(objects)

    assert container(objects)["securityContext"]["readOnlyRootFilesystem"] is True
    for path in (metrics_dir, *WRITABLE):
        assert "emptyDir" in found[path], path


@all_kustomizations
def test_runs_as_numeric_non_root_without_privileges(kustomization: str) -> None:
    objects = rendered(kustomization)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    security = container(objects)["securityContext"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int)
    assert pod["securityContext"]["runAsUser"] > 0
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    assert pod["automountServiceAccountToken"] is False


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@all_kustomizations
def test_memory_limit_equals_request_and_workers_follow_the_cpu_request(
    kustomization: str,
) -> None:
    objects = rendered(kustomization)
    resources = container(objects)["resources"]
    workers = env(objects)["WEB_CONCURRENCY"]["valueFrom"]["resourceFieldRef"]

    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    assert workers["resource"] == "requests.cpu"
    assert workers.get("containerName", "scorer") == "scorer"
    # divisor 1: the downward API rounds up, 1500m gives 2 workers.
    assert str(workers["divisor"]) == "1"
    assert cpus(resources["requests"]["cpu"]) >= 1


@all_kustomizations
def test_configured_settings_are_ones_the_service_accepts(kustomization: str) -> None:
    objects = rendered(kustomization)
    (config,) = [
        o for o in objects if o["kind"] == "ConfigMap" and "scorer-config" in o["metadata"]["name"]
    ]
    from_refs = [r["configMapRef"]["name"] for r in container(objects)["envFrom"]]
    assert from_refs == [config["metadata"]["name"]]
    values = dict(config["data"])
    values.update({k: e["value"] for k, e in env(objects).items() if "value" in e})
    requested = cpus(container(objects)["resources"]["requests"]["cpu"])
    values["WEB_CONCURRENCY"] = str(math.ceil(requested))
    aliases = {f.alias for f in Settings.model_fields.values()}
    # Read by boto3's chain and by gunicorn.conf.py, not by the settings class.
    elsewhere = {"AWS_REGION", "PROMETHEUS_MULTIPROC_DIR"}

    assert set(values) - aliases <= elsewhere, "a setting the service does not read"
    settings = make_settings(**{k: v for k, v in values.items() if k in aliases})
    assert settings.port == named_port(objects, "http")
    assert settings.web_concurrency == math.ceil(requested)


@all_kustomizations
def test_dashboard_configmap_is_the_dashboard_labelled_for_grafanas_sidecar(
    kustomization: str,
) -> None:
    (dashboard,) = [
        o for o in rendered(kustomization) if o["metadata"]["name"].endswith("dashboard")
    ]

    assert dashboard["kind"] == "ConfigMap"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["scorer.json"]) == json.loads(DASHBOARD.read_text())


def test_example_overlay_puts_everything_in_its_namespace_with_its_image() -> None:
    example = rendered("example")

    namespaces = {o["metadata"].get("namespace") for o in example if o["kind"] != "Namespace"}
    assert namespaces == {one(example, "Namespace")["metadata"]["name"]}
    assert container(example)["image"].startswith("registry.example.com/")
    for kind in ("ServiceMonitor", "PrometheusRule"):  # kube-prometheus-stack's selector
        assert one(example, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
