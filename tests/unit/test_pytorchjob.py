"""PyTorchJob manifests: detection, translation to Muster specs with the operator's defaults,
refused fields with their pointers, the replicas' environment in the training operator's format,
and never a crash."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.schema import check as schema_check
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.kubeflow import manifest_kind, relocate_problems, translate_manifest
from gateway.domain.jobs.pytorchjob import is_pytorchjob, translate_pytorchjob
from gateway.domain.jobs.spec import CleanPodPolicy, JobSpec, RestartPolicy
from gateway.domain.manifests.environment import kubernetes_addresses, replica_env
from gateway.domain.problems import FieldProblem

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pytorchjob.yaml"
SPECS = "/spec/pytorchReplicaSpecs"
MASTER_POD = f"{SPECS}/Master/template/spec"
PROPERTY = settings(database=None, max_examples=200, deadline=None)


def example() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text("utf-8"))
    return document


def manifest() -> dict[str, Any]:
    """A small PyTorchJob that leaves every default to the operator's; cases change one thing."""
    container = {"name": "pytorch", "image": "reg/train:1", "command": ["python", "train.py"]}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "bert", "namespace": "nlp"},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {"template": {"spec": {"containers": [container]}}},
                "Worker": {
                    "replicas": 3,
                    "template": {"spec": {"containers": [copy.deepcopy(container)]}},
                },
            }
        },
    }


def checked(document: dict[str, Any], tenant: str | None = None) -> JobSpec:
    """What the shell does: translate, then the schema and check_job_spec, as for any spec."""
    spec = translate_pytorchjob(document, tenant=tenant)
    assert isinstance(spec, dict), spec
    assert schema_check("JobSpec", spec) == []
    result = check_job_spec(spec)
    assert isinstance(result, JobSpec), result
    return result


def refused(document: dict[str, Any]) -> list[FieldProblem]:
    """The problems of a manifest, from the translation or, relocated, from the spec check."""
    spec = translate_pytorchjob(document, tenant=None)
    if isinstance(spec, list):
        return spec
    result = check_job_spec(spec)
    assert isinstance(result, list), result
    return relocate_manifest(document, result)


def relocate_manifest(document: dict[str, Any], problems: list[FieldProblem]) -> list[FieldProblem]:
    return relocate_problems("PyTorchJob", document, problems, tenant=None)


def master(document: dict[str, Any]) -> dict[str, Any]:
    replica: dict[str, Any] = document["spec"]["pytorchReplicaSpecs"]["Master"]
    return replica


def master_container(document: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = master(document)["template"]["spec"]["containers"][0]
    return container


# -- detection and translation ---------------------------------------------------------------------


def test_the_example_is_one_master_and_two_gpu_workers() -> None:
    spec = checked(example())
    assert (spec.name, spec.tenant, spec.framework.value) == (
        "llama-finetune",
        "research",
        "pytorch",
    )
    assert {r.role: r.count for r in spec.replicas} == {"master": 1, "worker": 2}
    for replica in spec.replicas:
        assert replica.resources.gpu_shares == 800
        assert replica.port == 23456
        assert replica.restart_policy is RestartPolicy.ON_FAILURE
        assert replica.command == ("torchrun", "/workspace/train.py")
    assert spec.run_policy.backoff_limit == 3
    assert spec.run_policy.active_deadline_seconds == 172800
    assert spec.run_policy.clean_pod_policy is CleanPodPolicy.RUNNING
    assert spec.labels == (("team", "nlp"),)


def test_the_operators_defaults_fill_what_the_manifest_leaves_out() -> None:
    spec = checked(manifest())
    assert {r.role: r.count for r in spec.replicas} == {"master": 1, "worker": 3}
    assert {r.port for r in spec.replicas} == {23456}
    assert {r.restart_policy for r in spec.replicas} == {RestartPolicy.ON_FAILURE}
    # pytorch_defaults.go: cleanPodPolicy None (a TFJob's default is Running).
    assert spec.run_policy.clean_pod_policy is CleanPodPolicy.NONE


def test_the_port_named_pytorchjob_port_is_the_replicas() -> None:
    document = manifest()
    master_container(document)["ports"] = [
        {"name": "metrics", "containerPort": 9090},
        {"name": "pytorchjob-port", "containerPort": 29500},
    ]
    assert checked(document).replica("master").port == 29500  # type: ignore[union-attr]


def test_replica_types_ignore_case_and_the_tenant_may_come_from_the_caller() -> None:
    document = manifest()
    replicas = document["spec"]["pytorchReplicaSpecs"]
    replicas["master"] = replicas.pop("Master")
    replicas["WORKER"] = replicas.pop("Worker")
    del document["metadata"]["namespace"]
    spec = checked(document, tenant="nlp")
    assert (spec.tenant, [r.role for r in spec.replicas]) == ("nlp", ["master", "worker"])


def test_nproc_per_node_auto_changes_nothing() -> None:
    document = manifest()
    document["spec"]["nprocPerNode"] = "auto"
    assert checked(document) == checked(manifest())


def test_a_ttl_after_finished_becomes_the_jobs() -> None:
    document = manifest()
    document["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 60}
    assert checked(document).run_policy.ttl_seconds_after_finished == 60


@pytest.mark.parametrize(
    ("document", "kind"),
    [
        (manifest(), "PyTorchJob"),
        ({**manifest(), "kind": "TFJob"}, "TFJob"),
        ({**manifest(), "apiVersion": "kubeflow.org/v1beta1"}, None),
        ({**manifest(), "apiVersion": ["kubeflow.org/v1"]}, None),
        ({"name": "a-spec", "replicas": {}}, None),
        ([manifest()], None),
    ],
    ids=["pytorchjob", "tfjob", "old version", "unhashable version", "job spec", "list"],
)
def test_the_kind_of_manifest_is_told_apart(document: object, kind: str | None) -> None:
    assert manifest_kind(document) == kind
    assert is_pytorchjob(document) == (kind == "PyTorchJob")


# -- refusals --------------------------------------------------------------------------------------

Change = Callable[[dict[str, Any]], object]


@pytest.mark.parametrize(
    ("change", "at", "says"),
    [
        (
            lambda d: d["spec"].update(elasticPolicy={"minReplicas": 1, "maxReplicas": 4}),
            "/spec/elasticPolicy",
            "Muster runs fixed-size gangs",
        ),
        # An empty policy still turns the operator's elastic mode on.
        (lambda d: d["spec"].update(elasticPolicy={}), "/spec/elasticPolicy", "fixed-size gangs"),
        (lambda d: d["spec"].update(nprocPerNode="8"), "/spec/nprocPerNode", "PET_NPROC_PER_NODE"),
        (lambda d: d["spec"].update(successPolicy="AllWorkers"), "/spec/successPolicy", ""),
        (lambda d: d["spec"].update(runPolicy={"suspend": True}), "/spec/runPolicy/suspend", ""),
        (
            lambda d: d["spec"]["pytorchReplicaSpecs"].update(Chief=master(d)),
            f"{SPECS}/Chief",
            "use Master or Worker",
        ),
        (
            lambda d: master_container(d).update(name="tensorflow"),
            f"{MASTER_POD}/containers",
            "needs a container named pytorch",
        ),
        (
            lambda d: master(d)["template"]["spec"]["containers"].append(
                {"name": "proxy", "image": "envoy"}
            ),
            f"{MASTER_POD}/containers/1",
            "runs only the container named pytorch",
        ),
        (lambda d: master_container(d).update(stdin=True), f"{MASTER_POD}/containers/0/stdin", ""),
        (lambda d: master(d).update(replicas=2), f"{SPECS}/Master/replicas", "exactly one master"),
        (
            lambda d: d["spec"]["pytorchReplicaSpecs"].pop("Master"),
            SPECS,
            "needs a master",
        ),
        (
            lambda d: master(d).update(restartPolicy="Sometimes"),
            f"{SPECS}/Master/restartPolicy",
            "",
        ),
        (
            lambda d: master_container(d).update(env=[{"name": "MASTER_ADDR", "value": "x"}]),
            f"{MASTER_POD}/containers/0/env/0",
            "",
        ),
        (lambda d: d["metadata"].pop("name"), "/metadata/name", "is required"),
        (lambda d: d["metadata"].pop("namespace"), "/metadata/namespace", "names the tenant"),
        (lambda d: d.update(apiVersion="kubeflow.org/v2"), "/apiVersion", "kubeflow.org/v1"),
    ],
    ids=[
        "elasticPolicy",
        "empty elasticPolicy",
        "nprocPerNode",
        "successPolicy",
        "suspend",
        "Chief",
        "no pytorch container",
        "sidecar",
        "stdin",
        "two masters",
        "no master",
        "restart policy",
        "reserved variable",
        "no name",
        "no namespace",
        "another version",
    ],
)
def test_what_muster_cannot_honour_is_refused_with_a_pointer(
    change: Change, at: str, says: str
) -> None:
    document = manifest()
    change(document)
    found = refused(document)
    assert any(p.pointer == at and says in p.detail for p in found), found
    assert all(p.pointer == "" or p.pointer.startswith("/") for p in found)


def test_the_dispatcher_translates_and_relocates_by_kind() -> None:
    document = manifest()
    master(document)["replicas"] = 2
    spec = translate_manifest("PyTorchJob", document, tenant=None)
    assert isinstance(spec, dict)
    problems = check_job_spec(spec)
    assert isinstance(problems, list)
    assert [p.pointer for p in relocate_manifest(document, problems)] == [
        f"{SPECS}/Master/replicas"
    ]


# -- the environment, in the training operator's format --------------------------------------------


# What the training operator (kubeflow/training-operator v1.9, pkg/controller.v1/pytorch/
# envvar.go setPodEnv and master.go) gives replica (role, index) of a PyTorchJob named ``job``
# with a Master and ``workers`` Workers, no elasticPolicy and the default nprocPerNode "auto":
# MASTER_ADDR is replicaName(job, master, 0), the master's Service, without a namespace.
def operator_env(job: str, role: str, index: int, *, workers: int, port: int) -> dict[str, str]:
    rank = str(index + 1 if role == "worker" else index)
    world = str(1 + workers)  # getTotalReplicas * getNprocPerNodeInt ("auto" counts 1)
    return {
        "PYTHONUNBUFFERED": "1",
        "MASTER_PORT": str(port),
        "PET_MASTER_PORT": str(port),
        "MASTER_ADDR": f"{job}-master-0",
        "PET_MASTER_ADDR": f"{job}-master-0",
        "WORLD_SIZE": world,
        "RANK": rank,
        "PET_NODE_RANK": rank,
        "PET_NPROC_PER_NODE": "auto",  # pytorch_defaults.go: DefaultNprocPerNode
        "PET_NNODES": str(1 + workers),
    }


@pytest.mark.parametrize(
    ("source", "workers", "port"),
    [(example, 2, 23456), (manifest, 3, 23456)],
    ids=["example", "small"],
)
@pytest.mark.parametrize("domain", [None, "cluster.local"])
def test_every_replica_gets_the_operators_environment(
    source: Callable[[], dict[str, Any]], workers: int, port: int, domain: str | None
) -> None:
    spec = checked(source())
    addresses = kubernetes_addresses(spec, "ns", domain)
    for role, index in [("master", 0), *(("worker", i) for i in range(workers))]:
        env = replica_env(
            spec, role=role, index=index, addresses=addresses, gpu_devices=None, cpu_millis=4000
        )
        expected = operator_env(spec.name, role, index, workers=workers, port=port)
        assert {name: env[name] for name in expected} == expected, (role, index)


# -- never a crash ---------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    ["pytorchReplicaSpecs", "elasticPolicy", "nprocPerNode", "runPolicy", "cleanPodPolicy"]
)


@PROPERTY
@given(spec=st.dictionaries(FIELDS, JSON, max_size=4), metadata=JSON)
def test_translation_never_raises_and_every_problem_points_into_the_manifest(
    spec: dict[str, Any], metadata: object
) -> None:
    document = {**manifest(), "spec": spec, "metadata": metadata}
    result = translate_pytorchjob(document, tenant=None)
    if isinstance(result, list):
        assert result
        assert all(p.pointer == "" or p.pointer.startswith("/") for p in result)
    else:
        relocate_manifest(document, [FieldProblem(pointer="/replicas/master/x", detail="d")])
