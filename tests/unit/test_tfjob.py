"""TFJob manifests: detection, translation to Muster specs, refused fields, and never a crash."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.schema import check as schema_check
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.pods import pod_requests
from gateway.domain.jobs.spec import JobSpec, RestartPolicy, SpecLimits
from gateway.domain.jobs.tfjob import is_tfjob, relocate_problems, translate_tfjob
from gateway.domain.jobs.tfjob_fields import API_VERSIONS, HARMLESS, REFUSED
from gateway.domain.problems import FieldProblem

GI = 2**30
PROPERTY = settings(database=None, max_examples=300, deadline=None)
EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "examples"
WORKER = "/spec/tfReplicaSpecs/Worker"
WORKER_POD = f"{WORKER}/template/spec"
WORKER_CONTAINER = f"{WORKER_POD}/containers/0"


def example(name: str) -> dict[str, Any]:
    path = EXAMPLES / name
    if not path.is_file():
        pytest.skip(f"the shared example manifests are not here: {path} is missing")
    document: dict[str, Any] = yaml.safe_load(path.read_text("utf-8"))
    return document


def manifest() -> dict[str, Any]:
    """A small v1 TFJob that translates cleanly; cases change one thing in it."""
    container = {"name": "tensorflow", "image": "reg/wd:1", "command": ["python", "train.py"]}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": "wd", "namespace": "search"},
        "spec": {
            "tfReplicaSpecs": {
                "Worker": {"replicas": 2, "template": {"spec": {"containers": [container]}}},
                "PS": {"template": {"spec": {"containers": [copy.deepcopy(container)]}}},
            }
        },
    }


def translated(document: Mapping[str, Any], tenant: str | None = None) -> dict[str, Any]:
    result = translate_tfjob(document, tenant=tenant)
    assert isinstance(result, dict), result
    return result


def checked(document: Mapping[str, Any], tenant: str | None = None) -> JobSpec:
    """What the shell does: translate, then the schema and check_job_spec, as for any spec."""
    spec = translated(document, tenant)
    assert schema_check("JobSpec", spec) == []
    result = check_job_spec(spec)
    assert isinstance(result, JobSpec), result
    return result


def problems(document: Mapping[str, Any], tenant: str | None = None) -> list[FieldProblem]:
    result = translate_tfjob(document, tenant=tenant)
    assert isinstance(result, list), result
    return result


def worker(document: dict[str, Any]) -> dict[str, Any]:
    replica: dict[str, Any] = document["spec"]["tfReplicaSpecs"]["Worker"]
    return replica


def pod(document: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = worker(document)["template"]["spec"]
    return spec


def container(document: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = pod(document)["containers"][0]
    return first


# -- the shared examples -------------------------------------------------------------------------


def test_the_v1alpha1_example_is_one_chief_ten_workers_and_four_ps() -> None:
    document = example("tfjob-v1alpha1.yaml")
    assert is_tfjob(document)
    spec = checked(document, tenant="search")
    assert (spec.name, spec.tenant) == ("example-job", "search")
    assert {r.role: r.count for r in spec.replicas} == {"chief": 1, "worker": 10, "ps": 4}
    assert spec.pod_count == 15
    assert spec.replica("chief").restart_policy is RestartPolicy.ON_FAILURE  # type: ignore[union-attr]
    # No restartPolicy in the PS template: the operator's and Muster's default.
    assert spec.replica("ps").restart_policy is RestartPolicy.NEVER  # type: ignore[union-attr]
    assert spec.replica("ps").image == "gcr.io/tf-on-k8s-dogfood/ps_sample:latest"  # type: ignore[union-attr]
    # No resources in the manifest: Muster's defaults, so resources are left out of the spec.
    assert all("resources" not in r for r in translated(document, "search")["replicas"].values())


def test_the_v1alpha1_example_needs_a_tenant_since_it_has_no_namespace() -> None:
    assert [p.pointer for p in problems(example("tfjob-v1alpha1.yaml"))] == ["/metadata/namespace"]


def test_the_v1_example_keeps_resources_exclusive_cpus_and_run_policy() -> None:
    document = example("tfjob-v1.yaml")
    assert is_tfjob(document)
    spec = checked(document)
    assert (spec.name, spec.tenant) == ("wide-deep", "search")
    assert spec.pod_count == 15
    workers, ps = spec.replica("worker"), spec.replica("ps")
    assert workers is not None
    assert ps is not None
    assert workers.exclusive_cpus
    assert workers.resources.cpu_millis == 8000
    assert ps.resources.memory_bytes == 32 * GI
    assert spec.replica("chief").port == 2222  # type: ignore[union-attr]
    assert spec.run_policy.backoff_limit == 3
    assert spec.run_policy.active_deadline_seconds == 86400
    assert spec.run_policy.clean_pod_policy.value == "Running"
    document_spec = translated(document)
    assert document_spec["replicas"]["worker"]["resources"]["cpu"] == "8"
    assert document_spec["replicas"]["worker"]["exclusive_cpus"] is True
    assert document_spec["replicas"]["ps"]["resources"]["memory"] == "32Gi"
    assert document_spec["framework"] == "tensorflow"


def test_translation_copies_instead_of_sharing_the_manifest() -> None:
    document = example("tfjob-v1.yaml")
    before = copy.deepcopy(document)
    spec = translated(document)
    spec["replicas"]["worker"]["command"].append("--changed")
    assert document == before


# -- detection -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(API_VERSIONS))
def test_every_supported_version_is_detected(version: str) -> None:
    assert is_tfjob({"apiVersion": version, "kind": "TFJob"})


NOT_TFJOBS: dict[str, object] = {
    "muster spec": {"name": "j", "tenant": "t", "replicas": {"worker": {"image": "i"}}},
    "pytorch job": {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob"},
    "kind in lower case": {"apiVersion": "kubeflow.org/v1", "kind": "tfjob"},
    "unknown version": {"apiVersion": "kubeflow.org/v2", "kind": "TFJob"},
    "other group": {"apiVersion": "tensorflow.org/v1alpha1", "kind": "TFJob"},
    "no version": {"kind": "TFJob"},
    "a list": [{"apiVersion": "kubeflow.org/v1", "kind": "TFJob"}],
    "a string": "TFJob",
    "null": None,
}


@pytest.mark.parametrize("document", NOT_TFJOBS.values(), ids=NOT_TFJOBS.keys())
def test_other_documents_are_not_tfjobs(document: object) -> None:
    assert not is_tfjob(document)


def test_a_manifest_of_another_kind_or_version_is_a_problem() -> None:
    document = manifest() | {"apiVersion": "kubeflow.org/v2", "kind": "PyTorchJob"}
    assert {p.pointer for p in problems(document)} == {"/apiVersion", "/kind"}


# -- mapping rules -------------------------------------------------------------------------------


def test_the_small_manifest_translates_with_every_default() -> None:
    assert translated(manifest()) == {
        "name": "wd",
        "tenant": "search",
        "framework": "tensorflow",
        "replicas": {
            "worker": {
                "count": 2,
                "image": "reg/wd:1",
                "command": ["python", "train.py"],
                "env": {},
                "restart_policy": "Never",
            },
            "ps": {
                "count": 1,
                "image": "reg/wd:1",
                "command": ["python", "train.py"],
                "env": {},
                "restart_policy": "Never",
            },
        },
        "run_policy": {},
        "labels": {},
    }


def test_pod_and_container_fields_map_to_the_replica() -> None:
    document = manifest()
    document["metadata"]["labels"] = {"team": "ranking"}
    worker(document)["restartPolicy"] = "ExitCode"
    pod(document)["nodeSelector"] = {"pool": "gpu"}
    pod(document)["tolerations"] = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    container(document).update(
        args=["--steps=10"],
        env=[{"name": "A", "value": "1"}, {"name": "B"}, {"name": "A", "value": "2"}],
        ports=[
            {"name": "metrics", "containerPort": 9090},
            {"name": "tfjob-port", "containerPort": 3333},
        ],
        resources={"limits": {"nvidia.com/gpu": "2", "cpu": "6", "memory": "24Gi"}},
    )
    spec = translated(document)
    replica = spec["replicas"]["worker"]
    assert spec["labels"] == {"team": "ranking"}
    assert replica["restart_policy"] == "ExitCode"
    assert replica["node_selector"] == {"pool": "gpu"}
    assert replica["tolerations"] == pod(document)["tolerations"]
    assert replica["args"] == ["--steps=10"]
    assert replica["env"] == {"A": "2", "B": ""}  # the last entry of a name wins, as in Kubernetes
    assert replica["port"] == 3333
    assert replica["resources"] == {"cpu": "6", "memory": "24Gi", "gpu": 2}
    assert replica["exclusive_cpus"] is True  # no requests: Kubernetes requests the limits
    checked(document)


RESOURCES: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {
    "requests equal limits": (
        {"requests": {"cpu": "8", "memory": "16Gi"}, "limits": {"cpu": "8", "memory": "16Gi"}},
        {"cpu": "8", "memory": "16Gi"},
        True,
    ),
    "requests below limits": (
        {"requests": {"cpu": "4"}, "limits": {"cpu": "8"}},
        {"cpu": "8"},
        False,
    ),
    "same amount written two ways": (
        {"requests": {"cpu": "4000m"}, "limits": {"cpu": 4}},
        {"cpu": 4},
        True,
    ),
    "a fraction of a CPU": (
        {"requests": {"cpu": "500m"}, "limits": {"cpu": "500m"}},
        {"cpu": "500m"},
        False,
    ),
    "requests only": (
        {"requests": {"cpu": "2", "memory": "1Gi"}},
        {"cpu": "2", "memory": "1Gi"},
        False,
    ),
    "gpu in requests": ({"requests": {"nvidia.com/gpu": 1}}, {"gpu": 1}, False),
}


@pytest.mark.parametrize(
    ("resources", "expected", "exclusive"), RESOURCES.values(), ids=RESOURCES.keys()
)
def test_resources_prefer_limits_and_whole_cpus_at_their_limit_are_exclusive(
    resources: dict[str, Any], expected: dict[str, Any], exclusive: bool
) -> None:
    document = manifest()
    container(document)["resources"] = resources
    replica = translated(document)["replicas"]["worker"]
    assert replica["resources"] == expected
    assert replica.get("exclusive_cpus", False) is exclusive
    checked(document)


NODE_AFFINITY = {
    "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]},
            {"matchExpressions": [{"key": "gpu.gen", "operator": "Gt", "values": ["8"]}]},
        ]
    },
    "preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}
    ],
}


def test_node_affinity_is_carried_to_the_replica_and_its_required_terms_to_placement() -> None:
    document = manifest()
    pod(document)["affinity"] = {"nodeAffinity": NODE_AFFINITY}
    assert translated(document)["replicas"]["worker"]["node_affinity"] == NODE_AFFINITY
    spec = checked(document)
    worker_spec = spec.replica("worker")
    assert worker_spec is not None
    assert worker_spec.node_affinity is not None
    terms = next(p.affinity for p in pod_requests(spec) if p.role == "worker")
    assert [[(r.key, r.operator, r.values) for r in term] for term in terms] == [
        [("zone", "In", ("a", "b"))],
        [("gpu.gen", "Gt", ("8",))],
    ]


@pytest.mark.parametrize(
    ("requirement", "where", "words"),
    [
        ({"key": "zone", "operator": "In"}, "values", "In needs at least one value"),
        ({"key": "z", "operator": "Exists", "values": ["a"]}, "values", "takes no values"),
        ({"key": "z", "operator": "Gt", "values": ["a"]}, "values", "one integer value"),
        ({"key": "z", "operator": "Near", "values": ["a"]}, "operator", "must be one of"),
    ],
)
def test_a_malformed_node_affinity_is_refused_at_the_manifests_pointer(
    requirement: dict[str, Any], where: str, words: str
) -> None:
    document = manifest()
    required = {"nodeSelectorTerms": [{"matchExpressions": [requirement]}]}
    pod(document)["affinity"] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}
    }
    found = spec_problems(document)
    pointer = (
        f"{WORKER_POD}/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution"
        f"/nodeSelectorTerms/0/matchExpressions/0/{where}"
    )
    assert [p.pointer for p in found] == [pointer]
    assert words in found[0].detail


def test_extended_resources_are_carried_by_name_and_a_request_is_their_limit() -> None:
    document = manifest()
    container(document)["resources"] = {
        "limits": {"nvidia.com/gpu": 2, "rdma/hca": 1, "hugepages-2Mi": "1Gi"},
        "requests": {"rdma/hca": "1", "amd.com/gpu": 1},
    }
    replica = translated(document)["replicas"]["worker"]
    assert replica["resources"] == {
        "gpu": 2,
        "rdma/hca": 1,
        "hugepages-2Mi": "1Gi",
        "amd.com/gpu": 1,
    }
    worker_spec = checked(document).replica("worker")
    assert worker_spec is not None
    assert worker_spec.resources.extended == (
        ("amd.com/gpu", 1),
        ("hugepages-2Mi", 1 << 30),
        ("rdma/hca", 1),
    )


def test_an_extended_request_other_than_its_limit_is_refused() -> None:
    document = manifest()
    container(document)["resources"] = {"limits": {"rdma/hca": 2}, "requests": {"rdma/hca": 1}}
    found = problems(document)
    assert [p.pointer for p in found] == [f"{WORKER_CONTAINER}/resources/requests/rdma~1hca"]
    assert "never over-committed" in found[0].detail


@pytest.mark.parametrize("inside", [True, False], ids=["runPolicy", "spec"])
def test_a_ttl_after_finished_becomes_the_jobs(inside: bool) -> None:
    document = manifest()
    if inside:
        document["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 60}
    else:
        document["spec"]["ttlSecondsAfterFinished"] = 60
    assert checked(document).run_policy.ttl_seconds_after_finished == 60


def test_replica_types_ignore_case_and_zero_replicas_run_nothing() -> None:
    document = manifest()
    replicas = document["spec"]["tfReplicaSpecs"]
    replicas["chief"] = replicas.pop("Worker")
    replicas["chief"]["replicas"] = 1
    replicas["Ps"] = replicas.pop("PS")
    replicas["EVALUATOR"] = copy.deepcopy(replicas["Ps"]) | {"replicas": 0}
    assert set(translated(document)["replicas"]) == {"chief", "ps"}
    checked(document)


def test_the_run_policy_of_older_versions_sits_directly_in_spec() -> None:
    document = manifest() | {"apiVersion": "kubeflow.org/v1beta2"}
    document["spec"].update(
        cleanPodPolicy="All", backoffLimit=5, activeDeadlineSeconds=60, successPolicy="AllWorkers"
    )
    assert translated(document)["run_policy"] == {
        "clean_pod_policy": "All",
        "backoff_limit": 5,
        "active_deadline_seconds": 60,
        "success_policy": "AllWorkers",
    }
    checked(document)


def test_a_run_policy_given_twice_must_agree() -> None:
    document = manifest()
    document["spec"].update(backoffLimit=5, runPolicy={"backoffLimit": 5, "cleanPodPolicy": "None"})
    assert translated(document)["run_policy"] == {"backoff_limit": 5, "clean_pod_policy": "None"}
    document["spec"]["backoffLimit"] = 6
    assert [p.pointer for p in problems(document)] == ["/spec/backoffLimit"]


def test_tenant_comes_from_the_namespace_or_must_match_it() -> None:
    assert translated(manifest())["tenant"] == "search"
    assert translated(manifest(), tenant="search")["tenant"] == "search"
    mismatch = problems(manifest(), tenant="ads")
    assert [p.pointer for p in mismatch] == ["/metadata/namespace"]
    assert "ads" in mismatch[0].detail
    anonymous = manifest()
    del anonymous["metadata"]["namespace"]
    assert translated(anonymous, tenant="ads")["tenant"] == "ads"
    assert [p.pointer for p in problems(anonymous)] == ["/metadata/namespace"]


def test_the_pods_grace_period_is_the_replicas_and_none_is_the_gateways_default() -> None:
    document = manifest()
    pod(document)["terminationGracePeriodSeconds"] = 120
    graces = {r.role: r.termination_grace_period_seconds for r in checked(document).replicas}
    assert graces == {"worker": 120, "ps": None}
    # Kubernetes' own default, written out, is kept as the replica's own: the gateway's default
    # may differ.
    pod(document)["terminationGracePeriodSeconds"] = 30
    assert translated(document)["replicas"]["worker"]["termination_grace_period_seconds"] == 30


def test_a_grace_period_over_the_maximum_is_refused_at_the_tfjobs_pointer() -> None:
    document = manifest()
    pod(document)["terminationGracePeriodSeconds"] = 90
    spec = translated(document)
    result = check_job_spec(spec, SpecLimits(max_termination_grace_seconds=60))
    assert isinstance(result, list), result
    (problem,) = relocate_problems(document, result, tenant=None)
    assert problem.pointer == f"{WORKER_POD}/terminationGracePeriodSeconds"
    assert "at most 60 seconds" in problem.detail


def test_v1alpha1_takes_the_grace_period_from_the_pod() -> None:
    document = example("tfjob-v1alpha1.yaml")
    document["spec"]["replicaSpecs"][0]["template"]["spec"]["terminationGracePeriodSeconds"] = 5
    replica = translated(document, "search")["replicas"]["chief"]
    assert replica["termination_grace_period_seconds"] == 5


def test_v1alpha1_takes_the_port_from_tf_port_and_restart_policy_from_the_pod() -> None:
    document = example("tfjob-v1alpha1.yaml")
    chief = document["spec"]["replicaSpecs"][0]
    chief["tfPort"] = 2345
    chief["template"]["spec"]["containers"][0]["ports"] = [
        {"name": "tfjob-port", "containerPort": 9999}
    ]
    replica = translated(document, "search")["replicas"]["chief"]
    assert (replica["port"], replica["restart_policy"]) == (2345, "OnFailure")


@pytest.mark.parametrize(
    ("name", "index", "accepted"),
    [("CHIEF", 0, True), ("chief", None, True), ("WORKER", 0, False), ("CHIEF", 1, False)],
)
def test_a_v1alpha1_termination_policy_must_name_the_chief(
    name: str, index: int | None, accepted: bool
) -> None:
    document = example("tfjob-v1alpha1.yaml")
    document["spec"]["terminationPolicy"] = {"chief": {"replicaName": name, "replicaIndex": index}}
    result = translate_tfjob(document, tenant="search")
    assert isinstance(result, dict) is accepted, result
    if not accepted:
        assert [p.pointer for p in problems(document, "search")] == ["/spec/terminationPolicy"]


# -- refused and ignored fields ------------------------------------------------------------------

Change = Callable[[dict[str, Any]], None]


def _sidecar(document: dict[str, Any]) -> None:
    pod(document)["containers"].append({"name": "istio-proxy", "image": "istio/proxyv2"})


REFUSALS: dict[str, tuple[Change, str, str]] = {
    "a sidecar": (_sidecar, f"{WORKER_POD}/containers/1", "sidecar"),
    "pod affinity": (
        lambda d: pod(d).update(affinity={"podAntiAffinity": {"x": 1}}),
        f"{WORKER_POD}/affinity/podAntiAffinity",
        "Muster places the whole gang itself",
    ),
    "another scheduler": (
        lambda d: pod(d).update(schedulerName="volcano"),
        f"{WORKER_POD}/schedulerName",
        "Muster does not support schedulerName",
    ),
    "an unknown pod field": (
        lambda d: pod(d).update(overhead={"cpu": "1"}),
        f"{WORKER_POD}/overhead",
        "Muster does not support overhead",
    ),
    "dynamic workers": (
        lambda d: d["spec"].update(enableDynamicWorker=True),
        "/spec/enableDynamicWorker",
        "Muster does not support enableDynamicWorker",
    ),
    "a minimum below the gang": (
        lambda d: d["spec"].update(runPolicy={"schedulingPolicy": {"minAvailable": 2}}),
        "/spec/runPolicy/schedulingPolicy/minAvailable",
        "Muster does not support minAvailable 2: it admits the whole gang of 3 pods",
    ),
    "a scheduling queue": (
        lambda d: d["spec"].update(runPolicy={"schedulingPolicy": {"queue": "research"}}),
        "/spec/runPolicy/schedulingPolicy/queue",
        "Muster does gang admission itself",
    ),
    "a scheduling policy that is no object": (
        lambda d: d["spec"].update(runPolicy={"schedulingPolicy": "gang"}),
        "/spec/runPolicy/schedulingPolicy",
        "must be an object",
    ),
    "suspend": (
        lambda d: d["spec"].update(runPolicy={"suspend": True}),
        "/spec/runPolicy/suspend",
        "Muster does not support suspend",
    ),
    "a probe": (
        lambda d: container(d).update(livenessProbe={"exec": {"command": ["true"]}}),
        f"{WORKER_CONTAINER}/livenessProbe",
        "Muster does not support livenessProbe",
    ),
    "a host port": (
        lambda d: container(d).update(
            ports=[{"name": "tfjob-port", "containerPort": 2222, "hostPort": 2222}]
        ),
        f"{WORKER_CONTAINER}/ports/0/hostPort",
        "Muster does not support hostPort",
    ),
    "a fraction of a device": (
        lambda d: container(d).update(resources={"limits": {"nvidia.com/gpu": "500m"}}),
        f"{WORKER_CONTAINER}/resources/limits/nvidia.com~1gpu",
        "whole number of devices",
    ),
    "no tensorflow container": (
        lambda d: container(d).update(name="trainer"),
        f"{WORKER_POD}/containers/0",
        "sidecar",
    ),
    "no image": (lambda d: container(d).pop("image"), f"{WORKER_CONTAINER}/image", "is required"),
    "an unknown replica type": (
        lambda d: d["spec"]["tfReplicaSpecs"].update(Launcher=worker(d)),
        "/spec/tfReplicaSpecs/Launcher",
        "not a TFJob replica type",
    ),
    "a replica type twice": (
        lambda d: d["spec"]["tfReplicaSpecs"].update(worker=worker(d)),
        "/spec/tfReplicaSpecs/worker",
        "a second worker",
    ),
    "an unknown top-level field": (
        lambda d: d.update(extra={"a": 1}),
        "/extra",
        "Muster does not support extra",
    ),
    "a generated name": (
        lambda d: d["metadata"].update(generateName="wd-"),
        "/metadata/generateName",
        "Muster does not support generateName",
    ),
    "no template": (lambda d: worker(d).pop("template"), f"{WORKER}/template", "is required"),
    "containers not a list": (
        lambda d: pod(d).update(containers={"name": "tensorflow"}),
        f"{WORKER_POD}/containers",
        "must be a list",
    ),
}


@pytest.mark.parametrize(("change", "where", "detail"), REFUSALS.values(), ids=REFUSALS.keys())
def test_fields_muster_cannot_honour_are_refused_with_a_pointer(
    change: Change, where: str, detail: str
) -> None:
    document = manifest()
    change(document)
    found = problems(document)
    assert where in [p.pointer for p in found], found
    assert detail in next(p.detail for p in found if p.pointer == where)


# Where each part of the manifest named in REFUSED sits in the small manifest.
PARTS: dict[str, Callable[[dict[str, Any]], tuple[dict[str, Any], str]]] = {
    "metadata": lambda d: (d["metadata"], "/metadata"),
    "spec": lambda d: (d["spec"], "/spec"),
    "runPolicy": lambda d: (d["spec"].setdefault("runPolicy", {}), "/spec/runPolicy"),
    "schedulingPolicy": lambda d: (
        d["spec"].setdefault("runPolicy", {}).setdefault("schedulingPolicy", {}),
        "/spec/runPolicy/schedulingPolicy",
    ),
    "pod": lambda d: (pod(d), WORKER_POD),
    "container": lambda d: (container(d), WORKER_CONTAINER),
    "env": lambda d: (
        container(d).setdefault("env", [{"name": "A"}])[0],
        f"{WORKER_CONTAINER}/env/0",
    ),
    "resources": lambda d: (
        container(d).setdefault("resources", {}),
        f"{WORKER_CONTAINER}/resources",
    ),
    "port": lambda d: (
        container(d).setdefault("ports", [{"name": "p", "containerPort": 1}])[0],
        f"{WORKER_CONTAINER}/ports/0",
    ),
    "affinity": lambda d: (pod(d).setdefault("affinity", {}), f"{WORKER_POD}/affinity"),
}
REFUSED_FIELDS = [
    (part, name) for part, fields in REFUSED.items() if part in PARTS for name in fields
]


@pytest.mark.parametrize(
    ("part", "name"), REFUSED_FIELDS, ids=[f"{p}.{n}" for p, n in REFUSED_FIELDS]
)
def test_every_refused_field_is_refused_where_it_is_written(part: str, name: str) -> None:
    document = manifest()
    target, where = PARTS[part](document)
    target[name] = {"something": "that matters"}
    found = problems(document)
    assert [p.pointer for p in found] == [f"{where}/{name}"]
    assert found[0].detail.startswith(f"Muster does not support {name}: ")


def test_the_v1alpha1_scheduler_name_is_refused() -> None:
    document = example("tfjob-v1alpha1.yaml")
    document["spec"]["schedulerName"] = "kube-batch"
    assert [p.pointer for p in problems(document, "search")] == ["/spec/schedulerName"]
    document["spec"]["schedulerName"] = "default-scheduler"
    translated(document, "search")


HARMLESS_CASES: dict[str, Change] = {
    "host network off": lambda d: pod(d).update(hostNetwork=False, hostPID=False),
    "no volumes": lambda d: pod(d).update(volumes=[], initContainers=None),
    "the default scheduler": lambda d: pod(d).update(schedulerName="default-scheduler"),
    "dynamic workers off": lambda d: d["spec"].update(enableDynamicWorker=False),
    "not suspended": lambda d: d["spec"].update(runPolicy={"suspend": False}),
    "an empty security context": lambda d: pod(d).update(securityContext={}),
    "the default service account": lambda d: pod(d).update(serviceAccountName="default"),
    "no grace period": lambda d: pod(d).update(terminationGracePeriodSeconds=None),
}
IGNORED_CASES: dict[str, Change] = {
    "status": lambda d: d.update(status={"conditions": []}),
    "object metadata": lambda d: d["metadata"].update(
        annotations={"a": "b"}, uid="u", resourceVersion="7", creationTimestamp="2024-01-01"
    ),
    "pod template labels and annotations": lambda d: worker(d)["template"].update(
        metadata={"labels": {"app": "wd"}, "annotations": {"sidecar.istio.io/inject": "false"}}
    ),
    "termination messages": lambda d: container(d).update(terminationMessagePolicy="File"),
    "ports that open nothing": lambda d: container(d).update(
        ports=[{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    ),
    "the pod's restart policy, which v1 overrides": lambda d: pod(d).update(restartPolicy="Always"),
}


@pytest.mark.parametrize(
    "change",
    [*HARMLESS_CASES.values(), *IGNORED_CASES.values()],
    ids=[*HARMLESS_CASES, *IGNORED_CASES],
)
def test_fields_that_change_nothing_are_accepted(change: Change) -> None:
    document = manifest()
    change(document)
    assert translated(document) == translated(manifest())


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("reg/wd:1", "IfNotPresent"),
        ("reg/wd:latest", "Always"),
        ("reg:5000/wd", "Always"),
        ("reg/wd@sha256:abcd", "IfNotPresent"),
    ],
)
def test_the_pull_policy_kubernetes_would_choose_is_accepted(image: str, policy: str) -> None:
    document = manifest()
    container(document)["image"] = image
    plain = translated(document)
    container(document)["imagePullPolicy"] = policy
    assert translated(document) == plain
    # Another policy is carried exactly (it is a pod field).
    container(document)["imagePullPolicy"] = "Never"
    assert translated(document)["replicas"]["worker"]["image_pull_policy"] == "Never"


def test_harmless_values_are_only_listed_for_refused_fields() -> None:
    refused = {name for fields in REFUSED.values() for name in fields}
    assert set(HARMLESS) <= refused
    assert {"serviceAccount", "ephemeralContainers"} <= refused
    # False is harmless for stdin; 0 is not False, and is refused.
    document = manifest()
    container(document)["stdin"] = 0
    assert [p.pointer for p in problems(document)] == [f"{WORKER_CONTAINER}/stdin"]


# -- problems of the translated spec, re-pointed at the manifest ---------------------------------


def spec_problems(document: Mapping[str, Any], tenant: str | None = None) -> list[FieldProblem]:
    """What the shell reports for a manifest that translates: schema, else meaning, re-pointed."""
    spec = translated(document, tenant)
    found = schema_check("JobSpec", spec)
    if not found:
        result = check_job_spec(spec)
        found = [] if isinstance(result, JobSpec) else result
    return relocate_problems(document, found, tenant=tenant)


RELOCATED: dict[str, tuple[Change, str]] = {
    "a reserved variable": (
        lambda d: container(d).update(env=[{"name": "A", "value": "1"}, {"name": "TF_CONFIG"}]),
        f"{WORKER_CONTAINER}/env/1",
    ),
    "a bad quantity": (
        lambda d: container(d).update(resources={"limits": {"cpu": "lots"}}),
        f"{WORKER_CONTAINER}/resources/limits/cpu",
    ),
    "a resource name no node can advertise": (
        lambda d: container(d).update(resources={"limits": {"gpus": 1}}),
        f"{WORKER_CONTAINER}/resources/limits/gpus",
    ),
    "a fraction of an extended resource": (
        lambda d: container(d).update(resources={"requests": {"rdma/hca": "500m"}}),
        f"{WORKER_CONTAINER}/resources/requests/rdma~1hca",
    ),
    "two chiefs": (
        lambda d: d["spec"]["tfReplicaSpecs"].update(Chief=worker(d)),
        "/spec/tfReplicaSpecs/Chief/replicas",
    ),
    "an image of the wrong type": (
        lambda d: container(d).update(image=5),
        f"{WORKER_CONTAINER}/image",
    ),
    "a bad toleration": (
        lambda d: pod(d).update(tolerations=[{"operator": "Equal", "value": "x"}]),
        f"{WORKER_POD}/tolerations/0/key",
    ),
    "a bad argument": (
        lambda d: container(d).update(args=["ok", 7]),
        f"{WORKER_CONTAINER}/args/1",
    ),
    "a bad label": (
        lambda d: d["metadata"].update(labels={"muster.dev/tenant": "x"}),
        "/metadata/labels/muster.dev~1tenant",
    ),
    "a bad restart policy": (
        lambda d: worker(d).update(restartPolicy="Sometimes"),
        f"{WORKER}/restartPolicy",
    ),
    "a bad clean pod policy": (
        lambda d: d["spec"].update(runPolicy={"cleanPodPolicy": "Sometimes"}),
        "/spec/runPolicy/cleanPodPolicy",
    ),
    "a bad name": (lambda d: d["metadata"].update(name="Wide_Deep"), "/metadata/name"),
    "a grace period above the admin's maximum": (
        lambda d: pod(d).update(terminationGracePeriodSeconds=301),
        f"{WORKER_POD}/terminationGracePeriodSeconds",
    ),
    "a negative grace period": (
        lambda d: pod(d).update(terminationGracePeriodSeconds=-1),
        f"{WORKER_POD}/terminationGracePeriodSeconds",
    ),
    "a grace period of the wrong type": (
        lambda d: pod(d).update(terminationGracePeriodSeconds="30s"),
        f"{WORKER_POD}/terminationGracePeriodSeconds",
    ),
    "no replicas": (lambda d: d["spec"].update(tfReplicaSpecs={}), "/spec/tfReplicaSpecs"),
}


@pytest.mark.parametrize(("change", "where"), RELOCATED.values(), ids=RELOCATED.keys())
def test_problems_of_the_translated_spec_point_into_the_manifest(
    change: Change, where: str
) -> None:
    document = manifest()
    change(document)
    assert where in [p.pointer for p in spec_problems(document)]


# -- never a crash ---------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _maybe(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


QUANTITY = st.sampled_from(["1", "8", "500m", "4Gi", "-1", "x", 2, 0.5, True]) | JSON
CONTAINER = _maybe(
    name=st.sampled_from(["tensorflow", "sidecar"]) | JSON,
    image=st.sampled_from(["reg/wd:1", "reg/wd", "reg/wd@sha256:ab"]) | JSON,
    imagePullPolicy=st.sampled_from(["Always", "IfNotPresent", "Never"]) | JSON,
    command=st.lists(st.text(max_size=8), max_size=3) | JSON,
    env=st.lists(
        _maybe(name=st.sampled_from(["A", "TF_CONFIG"]) | JSON, value=JSON, valueFrom=JSON)
    )
    | JSON,
    resources=_maybe(
        limits=_maybe(cpu=QUANTITY, memory=QUANTITY, **{"nvidia.com/gpu": QUANTITY}) | JSON,
        requests=_maybe(cpu=QUANTITY, memory=QUANTITY) | JSON,
    )
    | JSON,
    ports=st.lists(_maybe(name=st.just("tfjob-port") | JSON, containerPort=JSON, hostPort=JSON))
    | JSON,
    volumeMounts=JSON,
)
POD = _maybe(
    containers=st.lists(CONTAINER, max_size=3) | JSON,
    nodeSelector=JSON,
    tolerations=JSON,
    restartPolicy=st.sampled_from(["Never", "OnFailure"]) | JSON,
    terminationGracePeriodSeconds=st.integers(-1, 400) | JSON,
    volumes=JSON,
    hostNetwork=JSON,
)
REPLICA = _maybe(
    replicas=st.integers(-1, 3) | JSON,
    restartPolicy=st.sampled_from(["Never", "ExitCode"]) | JSON,
    template=_maybe(spec=POD | JSON, metadata=JSON) | JSON,
    tfReplicaType=st.sampled_from(["CHIEF", "WORKER", "PS", "LAUNCHER"]) | JSON,
    tfPort=JSON,
)
ROLE = st.sampled_from(["Chief", "Master", "Worker", "worker", "PS", "Evaluator", "Launcher"])
SPEC = _maybe(
    tfReplicaSpecs=st.dictionaries(ROLE, REPLICA | JSON, max_size=4) | JSON,
    replicaSpecs=st.lists(REPLICA | JSON, max_size=4) | JSON,
    runPolicy=_maybe(backoffLimit=JSON, cleanPodPolicy=JSON, schedulingPolicy=JSON) | JSON,
    backoffLimit=JSON,
    successPolicy=st.just("AllWorkers") | JSON,
    terminationPolicy=JSON,
)
MANIFESTS = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(sorted(API_VERSIONS)) | JSON,
        "kind": st.just("TFJob") | JSON,
        "metadata": _maybe(
            name=st.just("wd") | JSON, namespace=st.just("search") | JSON, labels=JSON
        )
        | JSON,
        "spec": SPEC | JSON,
    },
    optional={"status": JSON, "extra": JSON},
)

# Well-formed manifests whose values may still be wrong, so the spec's own checks get to speak.
SMALL_QUANTITY = st.sampled_from(["1", "8", "500m", "4Gi", "0", "x", 2, 0.5, 1.5])
NEAR_CONTAINER = st.fixed_dictionaries(
    {"name": st.just("tensorflow"), "image": st.sampled_from(["reg/wd:1", "", "a b", 5])},
    optional={
        "args": st.lists(st.text(max_size=4) | st.integers(), max_size=2),
        "env": st.lists(
            _maybe(
                name=st.sampled_from(["A", "TF_CONFIG", "1x"]),
                value=st.text(max_size=4) | st.integers(),
            ),
            max_size=3,
        ),
        "resources": _maybe(
            limits=_maybe(
                cpu=SMALL_QUANTITY, memory=SMALL_QUANTITY, **{"nvidia.com/gpu": SMALL_QUANTITY}
            ),
            requests=_maybe(cpu=SMALL_QUANTITY, memory=SMALL_QUANTITY),
        ),
        "ports": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["tfjob-port", "m"]),
                    "containerPort": st.integers(-1, 70000),
                }
            ),
            max_size=2,
        ),
    },
)
NEAR_REPLICA = st.fixed_dictionaries(
    {
        "template": st.fixed_dictionaries(
            {
                "spec": st.fixed_dictionaries(
                    {"containers": st.lists(NEAR_CONTAINER, min_size=1, max_size=1)},
                    optional={
                        "nodeSelector": st.dictionaries(
                            st.sampled_from(["zone", "a/b/c"]), st.text(max_size=3)
                        ),
                        "tolerations": st.lists(
                            _maybe(
                                key=st.sampled_from(["gpu", ""]),
                                operator=st.sampled_from(["Exists", "Equal", "Maybe"]),
                                value=st.text(max_size=3),
                                effect=st.sampled_from(["NoSchedule", "Sometimes"]),
                            ),
                            max_size=2,
                        ),
                        "terminationGracePeriodSeconds": st.sampled_from([None, 0, 30, 301, -1]),
                    },
                )
            }
        )
    },
    optional={
        "replicas": st.integers(-1, 3),
        "restartPolicy": st.sampled_from(["Never", "OnFailure", "ExitCode", "Sometimes"]),
    },
)
NEAR_MANIFESTS = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(sorted(API_VERSIONS - {"kubeflow.org/v1alpha1"})),
        "kind": st.just("TFJob"),
        "metadata": st.fixed_dictionaries(
            {"name": st.sampled_from(["wd", "Wide_Deep"]), "namespace": st.just("search")},
            optional={
                "labels": st.dictionaries(
                    st.sampled_from(["team", "muster.dev/x"]), st.text(max_size=3)
                )
            },
        ),
        "spec": st.fixed_dictionaries(
            {"tfReplicaSpecs": st.dictionaries(ROLE, NEAR_REPLICA, min_size=1, max_size=3)},
            optional={
                "runPolicy": _maybe(
                    backoffLimit=st.integers(-1, 5),
                    activeDeadlineSeconds=st.integers(-1, 5),
                    cleanPodPolicy=st.sampled_from(["Running", "All", "Some"]),
                ),
                "successPolicy": st.sampled_from(["", "AllWorkers", "Most"]),
            },
        ),
    }
)


def _parent_exists(document: object, where: str) -> bool:
    node = document
    for raw in where.split("/")[1:-1]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


@PROPERTY
@given(MANIFESTS | NEAR_MANIFESTS, st.sampled_from([None, "search"]))
def test_translation_never_raises_and_every_problem_points_into_the_manifest(
    document: dict[str, Any], tenant: str | None
) -> None:
    result = translate_tfjob(document, tenant=tenant)
    if isinstance(result, list):
        assert result
        found = result
    else:
        found = spec_problems(document, tenant)
    for problem in found:
        assert isinstance(problem, FieldProblem)
        assert problem.pointer == "" or _parent_exists(document, problem.pointer), problem


@PROPERTY
@given(st.dictionaries(st.text(max_size=8), JSON, max_size=4), JSON)
def test_translation_never_raises_on_any_json_under_a_tfjob_envelope(
    extra: dict[str, Any], spec: object
) -> None:
    for version in sorted(API_VERSIONS):
        document = extra | {"apiVersion": version, "kind": "TFJob", "spec": spec}
        result = translate_tfjob(document, tenant=None)
        assert isinstance(result, dict | list)
        assert is_tfjob(document)


# -- priority classes ------------------------------------------------------------------------------


def _scheduling(document: dict[str, Any], **policy: Any) -> None:
    document["spec"].setdefault("runPolicy", {})["schedulingPolicy"] = policy


def _ps_pod(document: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = document["spec"]["tfReplicaSpecs"]["PS"]["template"]["spec"]
    return spec


def test_the_scheduling_policys_priority_class_is_the_jobs() -> None:
    document = manifest()
    _scheduling(document, priorityClass="high")

    assert translated(document)["priority_class"] == "high"
    spec = checked(document)
    assert (spec.priority_class, spec.priority) == ("high", None)  # the class's, at submit


def test_a_priority_class_named_by_every_pod_is_the_jobs() -> None:
    document = manifest()
    pod(document)["priorityClassName"] = "high"
    _ps_pod(document)["priorityClassName"] = "high"

    assert translated(document)["priority_class"] == "high"
    _scheduling(document, priorityClass="high", minAvailable=3)
    assert translated(document)["priority_class"] == "high"


def test_no_class_anywhere_leaves_the_spec_without_one() -> None:
    document = manifest()
    _scheduling(document, priorityClass="", minAvailable=3, queue="", minResources={})
    pod(document)["priorityClassName"] = ""

    assert translated(document) == translated(manifest())
    assert "priority_class" not in translated(document)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        pytest.param(
            lambda d: pod(d).update(priorityClassName="high"),
            "/spec/tfReplicaSpecs/PS/template/spec/priorityClassName",
            id="one-pod-names-a-class-another-none",
        ),
        pytest.param(
            lambda d: (
                pod(d).update(priorityClassName="high"),
                _ps_pod(d).update(priorityClassName="low"),
            ),
            "/spec/tfReplicaSpecs/PS/template/spec/priorityClassName",
            id="two-pods-name-two-classes",
        ),
        pytest.param(
            lambda d: (
                _scheduling(d, priorityClass="high"),
                pod(d).update(priorityClassName="low"),
                _ps_pod(d).update(priorityClassName="low"),
            ),
            f"{WORKER_POD}/priorityClassName",
            id="the-pods-name-another-class-than-the-scheduling-policy",
        ),
    ],
)
def test_a_gang_whose_pods_would_run_at_different_priorities_is_refused(
    change: Change, where: str
) -> None:
    document = manifest()
    change(document)

    found = problems(document)

    assert where in [p.pointer for p in found], found
    assert "every pod of a gang runs at one priority" in found[0].detail


@pytest.mark.parametrize(
    ("policy", "where"),
    [
        ({"minAvailable": 1}, "minAvailable"),
        ({"minAvailable": "3"}, "minAvailable"),
        ({"queue": "research"}, "queue"),
        ({"minResources": {"cpu": "1"}}, "minResources"),
        ({"scheduleTimeoutSeconds": 60}, "scheduleTimeoutSeconds"),
        ({"gangSize": 3}, "gangSize"),
    ],
)
def test_other_scheduling_policy_fields_are_refused_unless_they_change_nothing(
    policy: dict[str, Any], where: str
) -> None:
    document = manifest()
    _scheduling(document, priorityClass="high", **policy)

    assert [p.pointer for p in problems(document)] == [f"/spec/runPolicy/schedulingPolicy/{where}"]


def test_a_bad_class_name_is_refused_at_the_manifests_field() -> None:
    document = manifest()
    _scheduling(document, priorityClass="Not_A_Label")
    pointers = [p.pointer for p in spec_problems(document)]
    assert pointers == ["/spec/runPolicy/schedulingPolicy/priorityClass"]

    document = manifest()
    pod(document)["priorityClassName"] = _ps_pod(document)["priorityClassName"] = "x" * 64
    assert [p.pointer for p in spec_problems(document)] == [f"{WORKER_POD}/priorityClassName"]


def test_pod_priorities_stay_refused() -> None:
    document = manifest()
    pod(document)["priority"] = 1000
    found = problems(document)
    assert [p.pointer for p in found] == [f"{WORKER_POD}/priority"]
    assert "priority class" in found[0].detail


def test_the_v1alpha1_pods_may_name_a_class() -> None:
    document = example("tfjob-v1alpha1.yaml")
    for replica in document["spec"]["replicaSpecs"]:
        replica["template"]["spec"]["priorityClassName"] = "high"

    assert checked(document, tenant="search").priority_class == "high"
