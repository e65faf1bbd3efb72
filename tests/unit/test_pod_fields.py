"""Production pod fields: their check, their stored document, the pods that carry them, the
tenant pod policy that bounds them, and the local backend's refusal of them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.kubeflow import manifest_kind, translate_manifest
from gateway.domain.jobs.pod_fields import PodFields
from gateway.domain.jobs.pods import pod_name
from gateway.domain.jobs.policy import (
    PodPolicy,
    kubernetes_only,
    needs_policy,
    policy_document,
    policy_of,
    policy_problems,
)
from gateway.domain.jobs.spec import JobSpec, TerminationGrace, from_document, to_document
from gateway.domain.manifests.kubernetes import HOSTNAME_KEY, pod_manifest
from gateway.domain.scheduling.nodes import GpuMode
from gateway.domain.scheduling.queueing import Placement

KUBERNETES_VERSION = "1.30.0"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PRODUCTION: dict[str, Any] = {
    "volumes": [
        {"name": "data", "persistentVolumeClaim": {"claimName": "imagenet", "readOnly": True}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
        {"name": "conf", "configMap": {"name": "train-conf", "items": [{"key": "a", "path": "a"}]}},
        {"name": "creds", "secret": {"secretName": "s3-creds", "defaultMode": 256}},
        {
            "name": "scratch",
            "ephemeral": {
                "volumeClaimTemplate": {
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "100Gi"}},
                    }
                }
            },
        },
    ],
    "volume_mounts": [
        {"name": "data", "mountPath": "/data", "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "conf", "mountPath": "/etc/train"},
    ],
    "env_value_from": {
        "AWS_SECRET_ACCESS_KEY": {"secretKeyRef": {"name": "s3-creds", "key": "secret"}},
        "MY_POD_IP": {"fieldRef": {"fieldPath": "status.podIP"}},
    },
    "env_from": [{"configMapRef": {"name": "train-env"}, "prefix": "CFG_"}],
    "working_dir": "/workspace",
    "image_pull_policy": "Always",
    "service_account_name": "trainer",
    "image_pull_secrets": ["regcred"],
    "pod_security_context": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
    "security_context": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    "init_containers": [
        {
            "name": "fetch",
            "image": "reg/fetch:1",
            "command": ["fetch", "/data"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        },
        {"name": "metrics", "image": "reg/metrics:1", "restartPolicy": "Always"},
    ],
}


def _raw(**worker: Any) -> dict[str, Any]:
    return {
        "name": "prod",
        "tenant": "search",
        "framework": "tensorflow",
        "replicas": {
            "worker": {"count": 2, "image": "reg/wd:1", "env": {"K": "V"}, **worker},
        },
    }


def _spec(**worker: Any) -> JobSpec:
    spec = check_job_spec(_raw(**worker))
    assert isinstance(spec, JobSpec), spec
    return spec


def _problems(**worker: Any) -> list[tuple[str, str]]:
    result = check_job_spec(_raw(**worker))
    assert isinstance(result, list), result
    return [(p.pointer, p.detail) for p in result]


def _pod(spec: JobSpec) -> dict[str, Any]:
    replica = spec.replicas[0]
    placement = Placement(
        pod_name=pod_name(spec.name, replica.role, 0),
        role=replica.role,
        index=0,
        node="gpu-0",
        cpu_millis=replica.resources.cpu_millis,
        memory_bytes=replica.resources.memory_bytes,
        gpu=(),
        extended=replica.resources.extended,
    )
    return pod_manifest(
        spec,
        placement,
        gpu_mode=GpuMode.NONE,
        job_id="0b6f3a8e-4c1d-4f0e-9a57-2d8c1e6b7f90",
        tenant="search",
        namespace="team-search",
        attempt=0,
        owner=None,
        cluster_domain=None,
        grace=TerminationGrace(),
    )


# The check ---------------------------------------------------------------------------------------


def test_production_fields_are_accepted_and_round_trip_through_the_stored_document() -> None:
    spec = _spec(**copy.deepcopy(PRODUCTION))
    assert spec.replicas[0].pod.any
    document = to_document(spec)
    for key, value in PRODUCTION.items():
        assert document["replicas"]["worker"][key] == value
    assert from_document(document) == spec
    assert check_job_spec(document) == spec
    hash(spec)  # specs are values


def test_a_document_stored_before_pod_fields_reads_back_without_any() -> None:
    spec = _spec()
    document = to_document(spec)
    assert "volumes" not in document["replicas"]["worker"]
    assert from_document(document).replicas[0].pod == PodFields()


@pytest.mark.parametrize(
    ("fields", "pointer"),
    [
        ({"volumes": [{"name": "d", "nfs": {"server": "x", "path": "/"}}]}, "/volumes/0/nfs"),
        ({"volumes": [{"name": "d"}]}, "/volumes/0"),
        (
            {"volumes": [{"name": "d", "emptyDir": {}, "secret": {"secretName": "s"}}]},
            "/volumes/0",
        ),
        (
            {"volumes": [{"name": "d", "emptyDir": {}}, {"name": "d", "emptyDir": {}}]},
            "/volumes/1/name",
        ),
        ({"volumes": [{"name": "D_", "emptyDir": {}}]}, "/volumes/0/name"),
        (
            {"volumes": [{"name": "d", "emptyDir": {"medium": "HugePages"}}]},
            "/volumes/0/emptyDir/medium",
        ),
        (
            {"volumes": [{"name": "d", "hostPath": {"path": "/a/../etc"}}]},
            "/volumes/0/hostPath/path",
        ),
        ({"volume_mounts": [{"name": "nope", "mountPath": "/x"}]}, "/volume_mounts/0/name"),
        (
            {
                "volumes": [{"name": "d", "emptyDir": {}}],
                "volume_mounts": [{"name": "d", "mountPath": "x"}],
            },
            "/volume_mounts/0/mountPath",
        ),
        (
            {
                "volumes": [{"name": "d", "emptyDir": {}}],
                "volume_mounts": [
                    {"name": "d", "mountPath": "/x"},
                    {"name": "d", "mountPath": "/x/"},
                ],
            },
            "/volume_mounts/1/mountPath",
        ),
        (
            {"env_value_from": {"TF_CONFIG": {"configMapKeyRef": {"name": "c", "key": "k"}}}},
            "/env_value_from/TF_CONFIG",
        ),
        ({"env_value_from": {"K": {"fieldRef": {"fieldPath": "x"}}}}, "/env_value_from/K"),
        ({"env_value_from": {"A": {}}}, "/env_value_from/A"),
        ({"security_context": {"procMount": "Unmasked"}}, "/security_context/procMount"),
        (
            {"security_context": {"seccompProfile": {"type": "Unconfined"}}},
            "/security_context/seccompProfile/type",
        ),
        ({"init_containers": [{"name": "tensorflow", "image": "x"}]}, "/init_containers/0/name"),
        (
            {"init_containers": [{"name": "i", "image": "x", "resources": {}}]},
            "/init_containers/0/resources",
        ),
        (
            {"init_containers": [{"name": "i", "image": "x", "restartPolicy": "OnFailure"}]},
            "/init_containers/0/restartPolicy",
        ),
        ({"service_account_name": "Not A Name"}, "/service_account_name"),
        ({"working_dir": "relative"}, "/working_dir"),
        ({"host_network": "yes"}, "/host_network"),
    ],
)
def test_malformed_pod_fields_are_refused_at_their_pointer(
    fields: dict[str, Any], pointer: str
) -> None:
    pointers = [p for p, _ in _problems(**fields)]
    assert "/replicas/worker" + pointer in pointers


# The pods ----------------------------------------------------------------------------------------


def test_pods_carry_the_fields_exactly_with_musters_own_intact_and_valid() -> None:
    spec = _spec(**copy.deepcopy(PRODUCTION))
    pod = _pod(spec)
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    pod_spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert pod_spec["volumes"] == PRODUCTION["volumes"]
    assert pod_spec["initContainers"] == PRODUCTION["init_containers"]
    assert pod_spec["serviceAccountName"] == "trainer"
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod_spec["securityContext"] == PRODUCTION["pod_security_context"]
    assert container["volumeMounts"] == PRODUCTION["volume_mounts"]
    assert container["securityContext"] == PRODUCTION["security_context"]
    assert container["envFrom"] == PRODUCTION["env_from"]
    assert (container["workingDir"], container["imagePullPolicy"]) == ("/workspace", "Always")
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "secret"}},
    }
    assert env["K"] == {"name": "K", "value": "V"}
    assert "value" in env["TF_CONFIG"]
    assert [e["name"] for e in container["env"]] == sorted(env)
    pinning = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert pinning["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": HOSTNAME_KEY, "operator": "In", "values": ["gpu-0"]}]}
    ]
    assert pod_spec["restartPolicy"] == "Never"


def test_a_pod_without_pod_fields_is_what_it_was() -> None:
    pod_spec = _pod(_spec())["spec"]
    for key in (
        "volumes",
        "initContainers",
        "serviceAccountName",
        "securityContext",
        "hostNetwork",
    ):
        assert key not in pod_spec


def test_host_network_pods_keep_cluster_dns() -> None:
    pod = _pod(_spec(host_network=True))
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    assert (pod["spec"]["hostNetwork"], pod["spec"]["dnsPolicy"]) == (
        True,
        "ClusterFirstWithHostNet",
    )


# The policy --------------------------------------------------------------------------------------


def _breaches(spec: JobSpec, policy: PodPolicy) -> list[tuple[str, str]]:
    return [(p.pointer, p.detail) for p in policy_problems(spec, policy)]


REFUSALS = [
    pytest.param(
        {
            "volumes": [{"name": "h", "hostPath": {"path": "/var/lib/data"}}],
        },
        "/volumes/0/hostPath",
        "volume-types",
        {"volume_types": ["hostPath"], "host_path_prefixes": ["/var/lib"]},
        id="hostPath",
    ),
    pytest.param(
        {"security_context": {"privileged": True}},
        "/security_context/privileged",
        "privileged",
        {"allow_privileged": True},
        id="privileged",
    ),
    pytest.param(
        {"security_context": {"capabilities": {"add": ["IPC_LOCK"]}}},
        "/security_context/capabilities/add/0",
        "capabilities",
        {"allowed_capabilities": ["IPC_LOCK"]},
        id="capability",
    ),
    pytest.param(
        {"host_network": True},
        "/host_network",
        "host-namespaces",
        {"allow_host_namespaces": True},
        id="hostNetwork",
    ),
    pytest.param(
        {"service_account_name": "cluster-admin"},
        "/service_account_name",
        "service-account",
        {"service_accounts": ["default", "cluster-admin"]},
        id="service-account",
    ),
    pytest.param(
        {"tolerations": [{"operator": "Exists"}]},
        "/tolerations/0",
        "tolerations",
        {"tolerations": [{"operator": "Exists"}]},
        id="toleration",
    ),
    pytest.param(
        {"init_containers": [{"name": "i", "image": "x", "securityContext": {"privileged": True}}]},
        "/init_containers/0/securityContext/privileged",
        "privileged",
        {"allow_privileged": True},
        id="privileged-init-container",
    ),
]


@pytest.mark.parametrize(("fields", "pointer", "rule", "allowed"), REFUSALS)
def test_the_default_policy_refuses_with_pointer_and_rule_and_passes_once_allowed(
    fields: dict[str, Any], pointer: str, rule: str, allowed: dict[str, Any]
) -> None:
    spec = _spec(**fields)
    assert needs_policy(spec)
    breaches = _breaches(spec, PodPolicy())
    assert len(breaches) == 1, breaches
    assert breaches[0][0] == "/replicas/worker" + pointer
    assert f"pod policy rule {rule!r}" in breaches[0][1]
    assert _breaches(spec, policy_of(allowed)) == []


def test_host_paths_pass_only_below_an_allowed_prefix_by_whole_segments() -> None:
    policy = policy_of({"volume_types": ["hostPath"], "host_path_prefixes": ["/data/"]})
    for path, allowed in (("/data", True), ("/data/a/b", True), ("/database", False), ("/", False)):
        spec = _spec(volumes=[{"name": "h", "hostPath": {"path": path}}])
        breaches = _breaches(spec, policy)
        assert (breaches == []) is allowed, (path, breaches)
        if not allowed:
            assert "pod policy rule 'host-path'" in breaches[0][1]


def test_a_toleration_pattern_leaves_out_what_it_does_not_name() -> None:
    policy = policy_of({"tolerations": [{"key": "dedicated", "value": "search"}]})
    ok = {"key": "dedicated", "operator": "Equal", "value": "search", "effect": "NoSchedule"}
    assert _breaches(_spec(tolerations=[ok]), policy) == []
    for bad in (
        {"key": "dedicated", "operator": "Equal", "value": "ads"},
        {"key": "dedicated", "operator": "Exists"},
        {"operator": "Exists"},
    ):
        assert len(_breaches(_spec(tolerations=[bad]), policy)) == 1, bad


def test_policy_documents_round_trip_and_an_empty_one_is_the_default() -> None:
    assert policy_of({}) == PodPolicy()
    policy = policy_of(
        {
            "volume_types": ["hostPath", "emptyDir"],
            "host_path_prefixes": ["/data/"],
            "service_accounts": ["trainer"],
            "allow_privileged": True,
            "allowed_capabilities": ["CAP_IPC_LOCK"],
            "allow_host_namespaces": True,
            "tolerations": [{"key": "k", "effect": "NoSchedule"}],
        }
    )
    assert policy.host_path_prefixes == ("/data",)
    assert policy.allowed_capabilities == ("IPC_LOCK",)
    assert policy_of(policy_document(policy)) == policy
    # A key left out keeps the base's value.
    assert policy_of({"allow_privileged": False}, policy).service_accounts == ("trainer",)


def test_a_spec_without_pod_fields_or_tolerations_needs_no_policy() -> None:
    assert not needs_policy(_spec())


# The local backend -------------------------------------------------------------------------------


def test_the_local_backend_refuses_every_pod_field_naming_the_kubernetes_backend() -> None:
    spec = _spec(working_dir="/w", volumes=[{"name": "s", "emptyDir": {}}])
    problems = kubernetes_only(spec)
    assert [p.pointer for p in problems] == [
        "/replicas/worker/volumes",
        "/replicas/worker/working_dir",
    ]
    assert all("needs the Kubernetes backend" in p.detail for p in problems)
    assert kubernetes_only(_spec()) == []


@pytest.mark.parametrize(
    ("example", "tenant"),
    [("tfjob-production.yaml", "search"), ("pytorchjob-production.yaml", "research")],
)
def test_the_production_examples_yield_pods_valid_for_kubernetes_1_30(
    example: str, tenant: str
) -> None:
    document = yaml.safe_load((EXAMPLES / example).read_text())
    del document["metadata"]["namespace"]  # the API drops it once it has found the tenant
    kind = manifest_kind(document)
    assert kind is not None
    translated = translate_manifest(kind, document, tenant=tenant)
    assert isinstance(translated, dict), translated
    spec = check_job_spec(translated)
    assert isinstance(spec, JobSpec), spec
    pod = _pod(spec)
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    replicas = document["spec"].get("tfReplicaSpecs") or document["spec"]["pytorchReplicaSpecs"]
    template = replicas["Worker"]["template"]["spec"]
    assert pod["spec"]["volumes"] == template["volumes"]
    assert pod["spec"]["initContainers"] == template["initContainers"]
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["rdma/hca"] == "1"
    allowed = {"service_accounts": ["trainer"], "allowed_capabilities": ["IPC_LOCK"]}
    assert policy_problems(spec, policy_of(allowed)) == []
    roles = sorted(r.role for r in spec.replicas)
    assert sorted(p.pointer for p in policy_problems(spec, PodPolicy())) == sorted(
        [
            *(f"/replicas/{role}/security_context/capabilities/add/0" for role in roles),
            *(f"/replicas/{role}/service_account_name" for role in roles),
        ]
    )
