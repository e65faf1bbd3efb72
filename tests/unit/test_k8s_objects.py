"""The Kubernetes objects of a job: pods pinned to their planned nodes, headless Services and the
parent ConfigMap, as the training operator would name and label them.

Every manifest rendered here is also validated against Kubernetes' own schemas in strict mode,
so a misspelt or unknown field fails.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest

from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.pods import pod_name
from gateway.domain.jobs.spec import JobSpec, TerminationGrace
from gateway.domain.manifests.environment import kubernetes_addresses, replica_env
from gateway.domain.manifests.kubernetes import (
    GPU_RESOURCE,
    LABEL_ATTEMPT,
    LABEL_JOB_ID,
    LABEL_JOB_NAME,
    LABEL_MANAGED,
    LABEL_REPLICA_INDEX,
    LABEL_REPLICA_TYPE,
    LABEL_TENANT,
    Owner,
    job_labels,
    parent_manifest,
    parent_name,
    parent_owner,
    pod_manifest,
    replica_labels,
    service_manifest,
)
from gateway.domain.names import DNS_1123_LABEL
from gateway.domain.scheduling.nodes import GpuMode, GpuSlice
from gateway.domain.scheduling.queueing import Placement

# The same version as the deploy manifests' check (tests/integration/test_deploy_manifests.py).
KUBERNETES_VERSION = "1.30.0"
JOB_ID = "0b6f3a8e-4c1d-4f0e-9a57-2d8c1e6b7f90"
TENANT = "search"
NAMESPACE = "team-search"
OWNER = Owner(api_version="v1", kind="ConfigMap", name="wide-deep-muster", uid="uid-1")
SHARING_TOLERATION = {
    "key": "muster.dev/gpu-sharing",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}
GIB = 2**30
#: The gateway's grace periods (its settings): a default of 20 s, at most 90 s.
GRACE = TerminationGrace(default_seconds=20, max_seconds=90)


def _spec(raw: dict[str, Any]) -> JobSpec:
    spec = check_job_spec(raw)
    assert isinstance(spec, JobSpec), spec
    return spec


TF_JOB = _spec(
    {
        "name": "wide-deep",
        "tenant": TENANT,
        "framework": "tensorflow",
        "labels": {"team": "ranking"},
        "replicas": {
            "chief": {
                "image": "reg/wd:1",
                "command": ["python", "train.py"],
                "args": ["--epochs", "3"],
                "env": {"K": "V"},
                "resources": {"cpu": "4", "memory": "8Gi", "gpu": 0.5},
            },
            "worker": {
                "count": 2,
                "image": "reg/wd:1",
                "resources": {"cpu": "8", "memory": "16Gi", "gpu": 2},
                "exclusive_cpus": True,
                "termination_grace_period_seconds": 120,
                "node_selector": {"pool": "gpu", "accelerator": "a100"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
            "ps": {
                "count": 2,
                "image": "reg/wd:1",
                "resources": {"cpu": "500m", "memory": "32Gi"},
                "tolerations": [
                    {
                        "key": "node.kubernetes.io/unreachable",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 30,
                    }
                ],
            },
            "evaluator": {"image": "reg/wd:1", "port": 2300},
        },
    }
)

# Where admission put each replica: the chief takes half of device 2 on a shared node, the workers
# two whole devices each on device-plugin nodes, the PS CPU nodes, the evaluator a shared node
# without any GPU share.
TF_PLANS = {
    ("chief", 0): ("shared-0", GpuMode.SHARED, ((2, 50),)),
    ("evaluator", 0): ("shared-0", GpuMode.SHARED, ()),
    ("ps", 0): ("cpu-0", GpuMode.NONE, ()),
    ("ps", 1): ("cpu-1", GpuMode.NONE, ()),
    ("worker", 0): ("gpu-0", GpuMode.DEVICE_PLUGIN, ((0, 100), (1, 100))),
    ("worker", 1): ("gpu-1", GpuMode.DEVICE_PLUGIN, ((4, 100), (6, 100))),
}


def _plan(
    spec: JobSpec, role: str, index: int, plans: dict[Any, Any] | None = None
) -> tuple[Placement, GpuMode]:
    """The replica's placement as admission made it, and its node's GPU mode."""
    node, mode, slices = (plans or TF_PLANS)[role, index]
    replica = spec.replica(role)
    assert replica is not None
    placement = Placement(
        pod_name=pod_name(spec.name, role, index),
        role=role,
        index=index,
        node=node,
        cpu_millis=replica.resources.cpu_millis,
        memory_bytes=replica.resources.memory_bytes,
        gpu=tuple(GpuSlice(device=d, shares=s) for d, s in slices),
    )
    return placement, mode


def _pod(
    role: str,
    index: int = 0,
    *,
    spec: JobSpec = TF_JOB,
    plans: dict[Any, Any] | None = None,
    owner: Owner | None = OWNER,
    cluster_domain: str | None = None,
    attempt: int = 2,
    grace: TerminationGrace = GRACE,
) -> dict[str, Any]:
    placement, mode = _plan(spec, role, index, plans)
    return pod_manifest(
        spec,
        placement,
        gpu_mode=mode,
        job_id=JOB_ID,
        tenant=TENANT,
        namespace=NAMESPACE,
        attempt=attempt,
        owner=owner,
        cluster_domain=cluster_domain,
        grace=grace,
    )


def _service(
    role: str, index: int = 0, *, spec: JobSpec = TF_JOB, owner: Owner | None = OWNER
) -> dict[str, Any]:
    return service_manifest(
        spec, role=role, index=index, job_id=JOB_ID, tenant=TENANT, namespace=NAMESPACE, owner=owner
    )


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in _container(pod)["env"]}


# -- environment -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "index"), sorted(TF_PLANS))
def test_pod_environment_is_replica_env_for_its_plan(role: str, index: int) -> None:
    pod = _pod(role, index)
    plan, mode = _plan(TF_JOB, role, index)
    devices = tuple(sorted({s.device for s in plan.gpu})) if mode is GpuMode.SHARED else None
    expected = replica_env(
        TF_JOB,
        role=role,
        index=index,
        addresses=kubernetes_addresses(TF_JOB, NAMESPACE, None),
        gpu_devices=devices,
        cpu_millis=plan.cpu_millis,
    )

    assert _env(pod) == expected
    assert json.loads(_env(pod)["TF_CONFIG"])["task"] == {"type": role, "index": index}
    assert [item["name"] for item in _container(pod)["env"]] == sorted(expected)
    assert all(set(item) == {"name", "value"} for item in _container(pod)["env"])


def test_tf_config_points_at_the_services_with_the_cluster_domain() -> None:
    config = json.loads(_env(_pod("worker", 1, cluster_domain="cluster.local"))["TF_CONFIG"])

    assert config["cluster"]["ps"] == [
        f"wide-deep-ps-{i}.{NAMESPACE}.svc.cluster.local:2222" for i in range(2)
    ]
    assert config["cluster"]["evaluator"] == [
        f"wide-deep-evaluator-0.{NAMESPACE}.svc.cluster.local:2300"
    ]


def test_thread_variables_follow_the_planned_cpu() -> None:
    assert _env(_pod("worker", 0))["OMP_NUM_THREADS"] == "8"
    assert _env(_pod("ps", 0))["OMP_NUM_THREADS"] == "1"


# -- names, labels, container --------------------------------------------------------------------


@pytest.mark.parametrize(("role", "index"), sorted(TF_PLANS))
def test_pod_names_and_labels_follow_the_operator(role: str, index: int) -> None:
    metadata = _pod(role, index, attempt=3)["metadata"]

    assert metadata["name"] == f"wide-deep-{role}-{index}"
    assert metadata["namespace"] == NAMESPACE
    assert metadata["labels"] == {
        "team": "ranking",
        LABEL_JOB_NAME: "wide-deep",
        LABEL_JOB_ID: JOB_ID,
        LABEL_TENANT: TENANT,
        LABEL_REPLICA_TYPE: role,
        LABEL_REPLICA_INDEX: str(index),
        LABEL_ATTEMPT: "3",
        LABEL_MANAGED: "muster",
    }
    assert metadata["annotations"] == {"muster.dev/node": TF_PLANS[role, index][0]}


def test_label_helpers() -> None:
    assert job_labels(job_id="i", job_name="j", tenant="t") == {
        LABEL_JOB_NAME: "j",
        LABEL_JOB_ID: "i",
        LABEL_TENANT: "t",
    }
    labels = replica_labels(job_id="i", job_name="j", tenant="t", role="Worker", index=4)
    assert labels[LABEL_REPLICA_TYPE] == "worker"
    assert labels[LABEL_REPLICA_INDEX] == "4"
    assert job_labels(job_id="i", job_name="j", tenant="t").items() <= labels.items()


def test_container_runs_the_replica_image_command_and_port() -> None:
    pod = _pod("chief")
    container = _container(pod)

    assert container["name"] == "tensorflow"
    assert container["image"] == "reg/wd:1"
    assert container["command"] == ["python", "train.py"]
    assert container["args"] == ["--epochs", "3"]
    assert container["ports"] == [{"name": "tfjob-port", "containerPort": 2222}]
    assert _env(pod)["K"] == "V"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["enableServiceLinks"] is False
    assert not {"hostname", "subdomain", "schedulerName", "nodeName"} & set(pod["spec"])


def test_a_pods_grace_period_is_its_replicas_else_the_default_never_above_the_cap() -> None:
    assert _pod("ps")["spec"]["terminationGracePeriodSeconds"] == 20  # none of its own
    # The worker asks for 120 s, above this gateway's cap (an admin lowered it since).
    assert _pod("worker")["spec"]["terminationGracePeriodSeconds"] == 90
    generous = TerminationGrace(default_seconds=30, max_seconds=300)
    assert _pod("worker", grace=generous)["spec"]["terminationGracePeriodSeconds"] == 120
    assert _pod("chief", grace=generous)["spec"]["terminationGracePeriodSeconds"] == 30


def test_empty_command_and_args_are_left_to_the_image() -> None:
    container = _container(_pod("ps"))

    assert "command" not in container
    assert "args" not in container


PYTORCH_JOB = _spec(
    {
        "name": "bert",
        "tenant": TENANT,
        "framework": "pytorch",
        "replicas": {"master": {"image": "i"}, "worker": {"count": 2, "image": "i"}},
    }
)
GENERIC_JOB = _spec(
    {"name": "sweep", "tenant": TENANT, "replicas": {"trial": {"image": "i", "port": 8000}}}
)
CPU_PLANS = {
    (role, i): ("cpu-0", GpuMode.NONE, ())
    for role in ("master", "worker", "trial")
    for i in range(2)
}


@pytest.mark.parametrize(
    ("spec", "role", "container_name", "port_name", "port"),
    [
        (TF_JOB, "ps", "tensorflow", "tfjob-port", 2222),
        (PYTORCH_JOB, "worker", "pytorch", "pytorchjob-port", 2222),
        (GENERIC_JOB, "trial", "main", "muster-port", 8000),
    ],
    ids=["tensorflow", "pytorch", "generic"],
)
def test_container_and_port_names_are_the_operators_defaults(
    spec: JobSpec, role: str, container_name: str, port_name: str, port: int
) -> None:
    pod = _pod(role, spec=spec, plans=CPU_PLANS | TF_PLANS)
    service = _service(role, spec=spec)

    assert _container(pod)["name"] == container_name
    assert _container(pod)["ports"] == [{"name": port_name, "containerPort": port}]
    assert service["spec"]["ports"] == [{"name": port_name, "port": port, "targetPort": port}]


def test_pytorch_pod_gets_the_rendezvous_variables() -> None:
    env = _env(_pod("worker", 1, spec=PYTORCH_JOB, plans=CPU_PLANS))

    assert env["MASTER_ADDR"] == "bert-master-0"  # the Service, as the operator names it
    assert env["RANK"] == "2"
    assert env["WORLD_SIZE"] == "3"


# -- placement -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "index"), sorted(TF_PLANS))
def test_pod_is_pinned_to_its_planned_node(role: str, index: int) -> None:
    affinity = _pod(role, index)["spec"]["affinity"]["nodeAffinity"]

    assert affinity == {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/hostname",
                            "operator": "In",
                            "values": [TF_PLANS[role, index][0]],
                        }
                    ]
                }
            ]
        }
    }


@pytest.mark.parametrize(("role", "index"), sorted(TF_PLANS))
def test_only_parameter_servers_prefer_distinct_nodes(role: str, index: int) -> None:
    affinity = _pod(role, index)["spec"]["affinity"]

    if role != "ps":
        assert "podAntiAffinity" not in affinity
        return
    assert affinity["podAntiAffinity"] == {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "labelSelector": {
                        "matchLabels": {LABEL_JOB_ID: JOB_ID, LABEL_REPLICA_TYPE: "ps"}
                    },
                    "topologyKey": "kubernetes.io/hostname",
                },
            }
        ]
    }
    assert (
        affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0][
            "podAffinityTerm"
        ]["labelSelector"]["matchLabels"].items()
        <= _pod("ps", 1)["metadata"]["labels"].items()
    )


def test_node_selector_and_tolerations_come_from_the_replica() -> None:
    worker = _pod("worker")["spec"]
    ps = _pod("ps")["spec"]

    assert worker["nodeSelector"] == {"accelerator": "a100", "pool": "gpu"}
    assert list(worker["nodeSelector"]) == ["accelerator", "pool"]
    assert worker["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert ps["tolerations"] == [
        {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 30,
        }
    ]
    assert "nodeSelector" not in ps


def _with_worker(**fields: Any) -> JobSpec:
    """TF_JOB with the worker's replica changed by ``fields`` (raw spec keys)."""
    return _spec(
        {
            "name": "wide-deep",
            "tenant": TENANT,
            "framework": "tensorflow",
            "replicas": {
                "worker": {
                    "count": 2,
                    "image": "reg/wd:1",
                    "resources": {"cpu": "8", "memory": "32Gi", "gpu": 2},
                    **fields,
                }
            },
        }
    )


NODE_AFFINITY = {
    "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
            {
                "matchExpressions": [{"key": "pool", "operator": "Exists"}],
                "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["x"]}],
            },
        ]
    },
    "preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 5, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}
    ],
}


def test_the_replicas_node_affinity_is_merged_with_the_pinning_never_in_its_place() -> None:
    spec = _with_worker(node_affinity=NODE_AFFINITY)
    pod = _pod("worker", 1, spec=spec)
    pinned = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-1"]}
    assert pod["spec"]["affinity"]["nodeAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "zone", "operator": "In", "values": ["a"]},
                        pinned,
                    ]
                },
                {
                    "matchExpressions": [{"key": "pool", "operator": "Exists"}, pinned],
                    "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["x"]}],
                },
            ]
        },
        "preferredDuringSchedulingIgnoredDuringExecution": (
            NODE_AFFINITY["preferredDuringSchedulingIgnoredDuringExecution"]
        ),
    }
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_extended_resources_are_requested_at_their_limit() -> None:
    spec = _with_worker(
        resources={"cpu": "8", "memory": "32Gi", "gpu": 2, "rdma/hca": 1, "hugepages-2Mi": "1Gi"}
    )
    placement, mode = _plan(spec, "worker", 1)
    plan = replace(placement, extended=(("hugepages-2Mi", GIB), ("rdma/hca", 1)))
    pod = pod_manifest(
        spec,
        plan,
        gpu_mode=mode,
        job_id=JOB_ID,
        tenant=TENANT,
        namespace=NAMESPACE,
        attempt=0,
        owner=None,
        cluster_domain=None,
        grace=GRACE,
    )
    resources = _container(pod)["resources"]
    for side in ("requests", "limits"):
        assert resources[side]["rdma/hca"] == "1"
        assert resources[side]["hugepages-2Mi"] == "1Gi"
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


# -- GPUs ------------------------------------------------------------------------------------------


def test_device_plugin_node_requests_whole_gpus_from_the_plugin() -> None:
    pod = _pod("worker", 1)
    resources = _container(pod)["resources"]

    assert resources["requests"][GPU_RESOURCE] == "2"
    assert resources["limits"][GPU_RESOURCE] == "2"
    # The plugin picks the devices and sets their visibility; Muster's indices are bookkeeping.
    assert "CUDA_VISIBLE_DEVICES" not in _env(pod)
    assert SHARING_TOLERATION not in pod["spec"]["tolerations"]


def test_shared_node_fraction_sets_visible_devices_and_tolerates_the_sharing_taint() -> None:
    pod = _pod("chief")
    resources = _container(pod)["resources"]
    env = _env(pod)

    assert env["CUDA_VISIBLE_DEVICES"] == "2"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert GPU_RESOURCE not in resources["requests"]
    assert GPU_RESOURCE not in resources["limits"]
    assert pod["spec"]["tolerations"] == [SHARING_TOLERATION]


def test_shared_node_whole_gpus_list_every_planned_device_in_order() -> None:
    plans = TF_PLANS | {("worker", 0): ("shared-0", GpuMode.SHARED, ((3, 100), (1, 100)))}
    pod = _pod("worker", 0, plans=plans)

    assert _env(pod)["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert GPU_RESOURCE not in _container(pod)["resources"]["requests"]
    assert pod["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        SHARING_TOLERATION,
    ]


def test_shared_node_pod_without_gpu_sees_no_device() -> None:
    pod = _pod("evaluator")

    assert _env(pod)["CUDA_VISIBLE_DEVICES"] == ""
    assert pod["spec"]["tolerations"] == [SHARING_TOLERATION]


def test_sharing_toleration_the_user_wrote_is_not_repeated() -> None:
    spec = _spec(
        {
            "name": "j",
            "tenant": TENANT,
            "replicas": {
                "w": {
                    "image": "i",
                    "resources": {"gpu": 0.25},
                    "tolerations": [
                        {
                            "key": "muster.dev/gpu-sharing",
                            "operator": "Equal",
                            "value": "true",
                            "effect": "NoSchedule",
                        }
                    ],
                }
            },
        }
    )
    pod = _pod("w", spec=spec, plans={("w", 0): ("shared-0", GpuMode.SHARED, ((0, 25),))})

    assert pod["spec"]["tolerations"] == [SHARING_TOLERATION]


@pytest.mark.parametrize(("role", "index"), [("ps", 0), ("evaluator", 0)])
def test_cpu_only_pods_request_no_gpu(role: str, index: int) -> None:
    resources = _container(_pod(role, index))["resources"]

    assert GPU_RESOURCE not in resources["requests"]
    assert GPU_RESOURCE not in resources["limits"]


# -- CPU and memory --------------------------------------------------------------------------------


def test_exclusive_cpus_make_requests_equal_limits() -> None:
    resources = _container(_pod("worker"))["resources"]

    assert resources["requests"] == resources["limits"]
    assert resources["requests"] == {"cpu": "8", "memory": "16Gi", GPU_RESOURCE: "2"}


@pytest.mark.parametrize(("role", "cpu", "memory"), [("chief", "4", "8Gi"), ("ps", "500m", "32Gi")])
def test_shared_cpus_have_a_memory_limit_and_no_cpu_limit(role: str, cpu: str, memory: str) -> None:
    resources = _container(_pod(role))["resources"]

    assert resources == {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}


def test_resources_are_the_planned_amounts() -> None:
    placement, mode = _plan(TF_JOB, "ps", 0)
    plan = replace(placement, cpu_millis=1500, memory_bytes=3 * GIB + 1)
    pod = pod_manifest(
        TF_JOB,
        plan,
        gpu_mode=mode,
        job_id=JOB_ID,
        tenant=TENANT,
        namespace=NAMESPACE,
        attempt=0,
        owner=None,
        cluster_domain=None,
        grace=GRACE,
    )

    assert _container(pod)["resources"]["requests"] == {"cpu": "1500m", "memory": str(3 * GIB + 1)}


# -- services --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "index"), sorted(TF_PLANS))
def test_service_is_headless_and_selects_its_replica_by_the_three_labels(
    role: str, index: int
) -> None:
    service = _service(role, index)
    pod = _pod(role, index)
    port = 2300 if role == "evaluator" else 2222

    assert service["apiVersion"] == "v1"
    assert service["kind"] == "Service"
    assert service["metadata"]["name"] == pod["metadata"]["name"]
    assert service["metadata"]["namespace"] == NAMESPACE
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {
        LABEL_JOB_NAME: "wide-deep",
        LABEL_REPLICA_TYPE: role,
        LABEL_REPLICA_INDEX: str(index),
    }
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [{"name": "tfjob-port", "port": port, "targetPort": port}]
    assert service["metadata"]["labels"] == {
        key: value for key, value in pod["metadata"]["labels"].items() if key != LABEL_ATTEMPT
    }


def test_service_selects_only_its_own_replica() -> None:
    selectors = [_service(role, index)["spec"]["selector"] for role, index in sorted(TF_PLANS)]
    for (role, index), selector in zip(sorted(TF_PLANS), selectors, strict=True):
        matched = [
            key
            for key in sorted(TF_PLANS)
            if selector.items() <= _pod(*key)["metadata"]["labels"].items()
        ]
        assert matched == [(role, index)]


# -- ownership and the parent ----------------------------------------------------------------------


def test_parent_configmap_carries_the_job_labels() -> None:
    parent = parent_manifest(
        job_id=JOB_ID, job_name="wide-deep", tenant=TENANT, namespace=NAMESPACE
    )

    assert parent == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "wide-deep-muster",
            "namespace": NAMESPACE,
            "labels": job_labels(job_id=JOB_ID, job_name="wide-deep", tenant=TENANT)
            | {LABEL_MANAGED: "muster"},
        },
    }


def test_parent_owns_every_pod_and_service() -> None:
    owner = parent_owner(job_name="wide-deep", uid="uid-1")
    expected = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "wide-deep-muster",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]

    assert owner == OWNER
    for role, index in sorted(TF_PLANS):
        assert _pod(role, index, owner=owner)["metadata"]["ownerReferences"] == expected
        assert _service(role, index, owner=owner)["metadata"]["ownerReferences"] == expected


def test_without_an_owner_there_are_no_owner_references() -> None:
    assert "ownerReferences" not in _pod("chief", owner=None)["metadata"]
    assert "ownerReferences" not in _service("chief", owner=None)["metadata"]


@pytest.mark.parametrize("length", [1, 56, 57, 62, 63])
def test_parent_name_is_a_dns_label_shortened_like_a_pod_name(length: int) -> None:
    job = ("a" * (length - 1) + "b")[-length:]
    name = parent_name(job)

    assert len(name) <= 63
    assert DNS_1123_LABEL.fullmatch(name)
    if len(job) + len("-muster") <= 63:
        assert name == f"{job}-muster"
    else:
        assert name.startswith(job[:40])
        assert name != parent_name(job[:-1] + "c")


# -- refusals --------------------------------------------------------------------------------------

BAD_PLANS = {
    "wrong name": lambda p, m: (replace(p, pod_name="wide-deep-chief-9"), m),
    "unknown role": lambda p, m: (replace(p, role="master", pod_name="wide-deep-master-0"), m),
    "index out of range": lambda p, m: (replace(p, index=1, pod_name="wide-deep-chief-1"), m),
    "fraction on a device-plugin node": lambda p, m: (p, GpuMode.DEVICE_PLUGIN),
    "gpu on a node without gpus": lambda p, m: (p, GpuMode.NONE),
}


@pytest.mark.parametrize("change", BAD_PLANS.values(), ids=BAD_PLANS.keys())
def test_a_plan_that_disagrees_with_the_spec_is_refused(change: Any) -> None:
    plan, mode = change(*_plan(TF_JOB, "chief", 0))

    with pytest.raises(ValueError, match=r"."):
        pod_manifest(
            TF_JOB,
            plan,
            gpu_mode=mode,
            job_id=JOB_ID,
            tenant=TENANT,
            namespace=NAMESPACE,
            attempt=0,
            owner=None,
            cluster_domain=None,
            grace=GRACE,
        )


@pytest.mark.parametrize(("role", "index"), [("master", 0), ("worker", 2), ("ps", -1)])
def test_a_service_for_a_replica_the_job_lacks_is_refused(role: str, index: int) -> None:
    with pytest.raises(ValueError, match=role):
        _service(role, index)


# -- every manifest is valid Kubernetes ------------------------------------------------------------


def _all_manifests() -> dict[str, dict[str, Any]]:
    manifests: dict[str, dict[str, Any]] = {
        "parent": parent_manifest(
            job_id=JOB_ID, job_name="wide-deep", tenant=TENANT, namespace=NAMESPACE
        ),
        "parent of a long name": parent_manifest(
            job_id=JOB_ID, job_name="x" * 63, tenant=TENANT, namespace=NAMESPACE
        ),
    }
    for owner in (OWNER, None):
        suffix = "" if owner else " without owner"
        for role, index in sorted(TF_PLANS):
            manifests[f"pod {role}-{index}{suffix}"] = _pod(
                role, index, owner=owner, cluster_domain="cluster.local"
            )
            manifests[f"service {role}-{index}{suffix}"] = _service(role, index, owner=owner)
    for spec, role in ((PYTORCH_JOB, "master"), (GENERIC_JOB, "trial")):
        manifests[f"pod {spec.name}"] = _pod(role, spec=spec, plans=CPU_PLANS)
        manifests[f"service {spec.name}"] = _service(role, spec=spec)
    return manifests


ALL_MANIFESTS = _all_manifests()


@pytest.mark.parametrize("manifest", ALL_MANIFESTS.values(), ids=ALL_MANIFESTS.keys())
def test_every_manifest_is_valid_kubernetes_with_no_unknown_fields(
    manifest: dict[str, Any],
) -> None:
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        location = ".".join(str(part) for part in error.path)
        pytest.fail(f"invalid at {location}: {error.message}")


def test_strict_validation_would_catch_a_misspelt_field() -> None:
    pod = _pod("chief")
    pod["spec"]["restartPolicyy"] = "Never"

    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicyy"):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("manifest", ALL_MANIFESTS.values(), ids=ALL_MANIFESTS.keys())
def test_manifests_are_plain_json_with_every_label_a_valid_value(manifest: dict[str, Any]) -> None:
    assert json.loads(json.dumps(manifest)) == manifest
    assert "null" not in json.dumps(manifest)
    for value in manifest["metadata"]["labels"].values():
        assert isinstance(value, str)
        assert len(value) <= 63


def test_rendering_is_deterministic() -> None:
    first = json.dumps(_all_manifests())
    second = json.dumps(_all_manifests())

    assert first == second
