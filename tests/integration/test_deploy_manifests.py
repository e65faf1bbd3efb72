"""Offline checks of the deployment files: the Kubernetes manifests under deploy/, the
kustomization, docker-compose.yml, the Dockerfile and the example static node list.

Nothing here needs a cluster, a Docker daemon or the network: manifests are validated against
the JSON schemas that kubernetes-validate ships, in strict mode, so unknown fields fail.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from gateway.settings import SETTINGS

# The Kubernetes version the manifests are validated against: the oldest one they are meant to
# run on. It is also the newest that the oldest allowed kubernetes-validate (>=1.30, see
# pyproject.toml) ships schemas for, so the check means the same with every allowed release.
KUBERNETES_VERSION = "1.30.0"
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding"})

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
NODES_EXAMPLE = DEPLOY / "nodes.example.yaml"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"

NAMESPACE = "muster-system"

# YAML files under deploy/ that are not Kubernetes objects.
NOT_KUBERNETES_OBJECTS = frozenset({KUSTOMIZATION.name, NODES_EXAMPLE.name})

# The settings table of DESIGN.md ("Settings"), plus the node list of the static backend and the
# logging settings. Deploy files may only use these names: they are part of the interface.
# Every MUSTER_* setting (the README documents each; tests/unit/test_project.py checks it), and
# the client commands' two.
DOCUMENTED_SETTINGS = frozenset({s.env for s in SETTINGS} | {"MUSTER_URL", "MUSTER_TOKEN"})
MUSTER_VARIABLE = re.compile(r"\bMUSTER_[A-Z0-9_]*[A-Z0-9]\b")

GPU_MODES = frozenset({"device-plugin", "shared", "none"})
TAINT_EFFECTS = frozenset({"NoSchedule", "PreferNoSchedule", "NoExecute"})


# --- helpers ----------------------------------------------------------------------------------


def _load_all(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def _load_one(path: Path) -> dict[str, Any]:
    docs = _load_all(path)
    assert len(docs) == 1, f"{path.name} should hold exactly one YAML document"
    return docs[0]


def _manifest_files() -> list[Path]:
    return sorted(
        path
        for path in DEPLOY.iterdir()
        if path.suffix in {".yaml", ".yml"} and path.name not in NOT_KUBERNETES_OBJECTS
    )


def _objects() -> list[dict[str, Any]]:
    return [doc for path in _manifest_files() for doc in _load_all(path)]


def _find(kind: str, name: str) -> dict[str, Any]:
    matches = [obj for obj in _objects() if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected exactly one {kind}/{name} under deploy/"
    return matches[0]


def _gateway_deployment() -> dict[str, Any]:
    return _find("Deployment", "muster")


def _gateway_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    matches = [c for c in containers if c["name"] == "muster"]
    assert len(matches) == 1
    return matches[0]


def _compose() -> dict[str, Any]:
    return _load_one(COMPOSE_FILE)


def _compose_environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(str(part) for part in test)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    instructions = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


# --- kustomization ----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_nothing_missing() -> None:
    kustomization = _load_one(KUSTOMIZATION)
    listed = kustomization["resources"]

    assert len(listed) == len(set(listed)), "a resource is listed twice"
    missing = [name for name in listed if not (DEPLOY / name).is_file()]
    assert not missing, f"kustomization.yaml lists files that do not exist: {missing}"
    unlisted = sorted({p.name for p in _manifest_files()} - set(listed))
    assert not unlisted, f"manifests not listed in kustomization.yaml: {unlisted}"
    assert kustomization["namespace"] == NAMESPACE


# --- schema validation ------------------------------------------------------------------------


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda path: path.name)
def test_manifest_is_valid_kubernetes_with_no_unknown_fields(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        where = f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            location = ".".join(str(part) for part in error.path)
            pytest.fail(f"{where} is invalid at {location}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{where}: {error.message}")


def test_strict_validation_rejects_an_unknown_field() -> None:
    deployment = copy.deepcopy(_gateway_deployment())
    _gateway_container(deployment)["readinesProbe"] = {"httpGet": {"path": "/readyz"}}

    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_namespaced_object_lives_in_muster_system() -> None:
    namespace = _find("Namespace", NAMESPACE)
    assert namespace["metadata"]["name"] == NAMESPACE

    misplaced = [
        f"{obj['kind']}/{obj['metadata']['name']}: {obj['metadata'].get('namespace')}"
        for obj in _objects()
        if obj["kind"] not in CLUSTER_SCOPED and obj["metadata"].get("namespace") != NAMESPACE
    ]
    assert not misplaced
    cluster_scoped = [o for o in _objects() if o["kind"] in CLUSTER_SCOPED]
    assert all("namespace" not in o["metadata"] for o in cluster_scoped)


# --- the gateway Deployment -------------------------------------------------------------------


def test_deployment_runs_two_replicas_serving_muster() -> None:
    deployment = _gateway_deployment()
    container = _gateway_container(deployment)

    assert deployment["spec"]["replicas"] == 2
    assert container["args"] == ["serve"]
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30


def test_deployment_probes_health_for_liveness_and_readiness_for_traffic() -> None:
    container = _gateway_container(_gateway_deployment())

    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_gateway_container_runs_as_non_root_with_a_read_only_root() -> None:
    pod = _gateway_deployment()["spec"]["template"]["spec"]
    container = _gateway_container(_gateway_deployment())
    pod_security = pod["securityContext"]
    security = container["securityContext"]

    assert pod_security["runAsNonRoot"] is True
    assert security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "requests" in container["resources"]
    assert "limits" in container["resources"]


def test_gateway_writes_only_to_emptydir_volumes_at_tmp_and_the_data_dir() -> None:
    pod = _gateway_deployment()["spec"]["template"]["spec"]
    container = _gateway_container(_gateway_deployment())
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    emptydirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}

    assert env["MUSTER_DATA_DIR"] == "/var/lib/muster"
    assert mounts["/var/lib/muster"] in emptydirs
    assert mounts["/tmp"] in emptydirs


def test_deployment_refers_only_to_objects_defined_in_deploy() -> None:
    pod = _gateway_deployment()["spec"]["template"]["spec"]
    container = _gateway_container(_gateway_deployment())
    sources = container["envFrom"]

    _find("ServiceAccount", pod["serviceAccountName"])
    config_maps = [s["configMapRef"]["name"] for s in sources if "configMapRef" in s]
    secrets = [s["secretRef"]["name"] for s in sources if "secretRef" in s]
    assert config_maps == ["muster"]
    assert secrets == ["muster"]
    _find("ConfigMap", "muster")
    _find("Secret", "muster")


@pytest.mark.parametrize(
    ("kind", "name"), [("Deployment", "muster"), ("StatefulSet", "muster-postgres")]
)
def test_workload_meets_the_restricted_pod_security_standard(kind: str, name: str) -> None:
    namespace = _find("Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    pod = _find(kind, name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "add" not in security["capabilities"], container["name"]
        assert not security.get("privileged", False), container["name"]
    allowed_volume_types = {"emptyDir", "configMap", "secret", "persistentVolumeClaim", "projected"}
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= allowed_volume_types, volume["name"]


# --- Service and PodDisruptionBudget ----------------------------------------------------------


def test_service_sends_port_80_to_the_gateway_http_port() -> None:
    service = _find("Service", "muster")
    pod_labels = _gateway_deployment()["spec"]["template"]["metadata"]["labels"]

    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_disruption_budget_keeps_one_gateway_replica() -> None:
    pdb = _find("PodDisruptionBudget", "muster")
    deployment = _gateway_deployment()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_gateway_selectors_do_not_match_the_postgres_pods() -> None:
    postgres_labels = _find("StatefulSet", "muster-postgres")["spec"]["template"]["metadata"][
        "labels"
    ]
    for selector in (
        _find("Service", "muster")["spec"]["selector"],
        _find("PodDisruptionBudget", "muster")["spec"]["selector"]["matchLabels"],
        _gateway_deployment()["spec"]["selector"]["matchLabels"],
    ):
        assert not selector.items() <= postgres_labels.items()


# --- settings ---------------------------------------------------------------------------------


def test_configmap_and_secret_hold_only_documented_settings() -> None:
    config = _find("ConfigMap", "muster")["data"]
    secret = _find("Secret", "muster")["stringData"]

    assert set(config) <= DOCUMENTED_SETTINGS
    assert set(secret) <= DOCUMENTED_SETTINGS
    assert all(isinstance(value, str) for value in config.values())
    assert config["MUSTER_BACKEND"] == "kubernetes"
    assert config["MUSTER_HOST"] == "0.0.0.0"
    assert config["MUSTER_PORT"] == "8080"
    assert "MUSTER_DATABASE_URL" not in config, "the database URL is a secret"


@pytest.mark.parametrize(
    "path",
    [COMPOSE_FILE, DOCKERFILE, *sorted(DEPLOY.glob("*.yaml"))],
    ids=lambda path: path.relative_to(REPO).as_posix(),
)
def test_deploy_file_uses_only_documented_muster_settings(path: Path) -> None:
    used = set(MUSTER_VARIABLE.findall(path.read_text(encoding="utf-8")))

    assert used - DOCUMENTED_SETTINGS == set()


def test_demo_secret_points_at_the_demo_postgres_service() -> None:
    secret = _find("Secret", "muster")
    url = urlsplit(secret["stringData"]["MUSTER_DATABASE_URL"])
    postgres_service = _find("Service", "muster-postgres")
    credentials = _find("Secret", "muster-postgres")["stringData"]
    ports = [port["port"] for port in postgres_service["spec"]["ports"]]

    assert secret["metadata"]["annotations"]["muster.dev/demo"] == "true"
    assert url.scheme == "postgresql"
    assert url.hostname == f"muster-postgres.{NAMESPACE}.svc"
    assert url.port in ports
    assert url.username == credentials["POSTGRES_USER"]
    assert url.password == credentials["POSTGRES_PASSWORD"]
    assert url.path == "/" + credentials["POSTGRES_DB"]
    assert _find("StatefulSet", "muster-postgres")["spec"]["serviceName"] == "muster-postgres"


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_defines_postgres_and_muster_each_with_a_healthcheck() -> None:
    services = _compose()["services"]

    assert set(services) == {"postgres", "muster"}
    assert services["postgres"]["image"] == "postgres:17"
    assert "pg_isready" in _healthcheck_command(services["postgres"])
    assert "/readyz" in _healthcheck_command(services["muster"])
    assert services["muster"]["build"] == "."
    assert "8080:8080" in services["muster"]["ports"]


def test_compose_starts_muster_only_once_postgres_is_healthy() -> None:
    muster = _compose()["services"]["muster"]

    assert muster["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_database_url_matches_the_postgres_service() -> None:
    services = _compose()["services"]
    postgres = _compose_environment(services["postgres"])
    url = urlsplit(_compose_environment(services["muster"])["MUSTER_DATABASE_URL"])

    assert url.scheme == "postgresql"
    assert url.hostname == "postgres"
    assert url.port == 5432
    assert url.username == postgres["POSTGRES_USER"] == "muster"
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.path == "/" + postgres["POSTGRES_DB"]


def test_compose_muster_reads_the_mounted_example_node_list() -> None:
    compose = _compose()
    muster = compose["services"]["muster"]
    environment = _compose_environment(muster)
    mounts = {}
    for volume in muster["volumes"]:
        source, target, *options = volume.split(":")
        mounts[target] = (source, options)

    assert environment["MUSTER_BACKEND"] == "static"
    assert environment["MUSTER_HOST"] == "0.0.0.0"
    assert environment["MUSTER_PORT"] == "8080"
    source, options = mounts[environment["MUSTER_NODES_FILE"]]
    assert (REPO / source).resolve() == NODES_EXAMPLE
    assert options == ["ro"]
    postgres_volume = compose["services"]["postgres"]["volumes"][0].split(":")[0]
    assert postgres_volume in compose["volumes"], "postgres data should be a named volume"


# --- the example node list --------------------------------------------------------------------


def test_example_node_list_is_well_formed() -> None:
    nodes = _load_one(NODES_EXAMPLE)["nodes"]
    names = [node["name"] for node in nodes]

    assert 3 <= len(nodes) <= 4
    assert len(names) == len(set(names))
    assert {node["gpu_mode"] for node in nodes} == GPU_MODES
    for node in nodes:
        keys = {"name", "cpu", "memory", "gpus", "gpu_mode", "labels", "taints", "extended"}
        assert set(node) <= keys
        assert isinstance(node["cpu"], str), node["name"]
        assert isinstance(node["memory"], str), node["name"]
        assert isinstance(node["gpus"], int), node["name"]
        assert (node["gpus"] == 0) == (node["gpu_mode"] == "none"), node["name"]
        sharing = node["labels"].get("muster.dev/gpu-sharing") == "true"
        assert sharing == (node["gpu_mode"] == "shared"), node["name"]
        assert all(isinstance(value, str) for value in node["labels"].values()), node["name"]
        for taint in node["taints"]:
            assert set(taint) == {"key", "value", "effect"}, node["name"]
            assert taint["effect"] in TAINT_EFFECTS, node["name"]


# --- the image --------------------------------------------------------------------------------


def test_image_runs_muster_serve_as_the_non_root_user_the_deployment_expects() -> None:
    instructions = _dockerfile_instructions()
    final = _final_stage(instructions)
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    pod = _gateway_deployment()["spec"]["template"]["spec"]

    assert instructions[0][0] in {"ARG", "FROM"}
    assert any(
        keyword in {"ARG", "FROM"} and "python:3.11-slim" in arguments
        for keyword, arguments in instructions
    )
    assert users, "the final stage should switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"
    assert int(uid) != 0
    assert int(uid) == pod["securityContext"]["runAsUser"]
    # tini as PID 1 reaps re-parented processes and forwards signals to the gateway.
    assert ("ENTRYPOINT", '["tini", "--", "muster"]') in final
    assert any(keyword == "RUN" and "tini" in arguments for keyword, arguments in final)
    assert ("CMD", '["serve"]') in final
    assert ("EXPOSE", "8080") in final
    assert any(
        keyword == "RUN" and "pip install ." in arguments for keyword, arguments in instructions
    )


def test_image_listens_on_all_interfaces_and_checks_its_own_health() -> None:
    final = _final_stage(_dockerfile_instructions())
    env = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
    healthchecks = [arguments for keyword, arguments in final if keyword == "HEALTHCHECK"]

    assert "MUSTER_HOST=0.0.0.0" in env
    assert "MUSTER_DATA_DIR=/var/lib/muster" in env
    assert len(healthchecks) == 1
    assert "urllib.request" in healthchecks[0]
    assert "http://127.0.0.1:" in healthchecks[0]
    assert "/healthz" in healthchecks[0]
    assert "curl" not in healthchecks[0]


def test_dockerignore_keeps_local_environments_and_caches_out_of_the_build() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    required = {".venv", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build", "dist"}

    assert required <= patterns
    assert patterns & {"__pycache__", "**/__pycache__"}
    assert patterns & {"*.egg-info", "**/*.egg-info"}
    assert not patterns & {"pyproject.toml", "gateway", "README.md"}, "pip install . needs these"
