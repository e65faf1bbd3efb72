"""Jobs from submit to the end on Kubernetes: the API, admission, the reconciler and the real
kubernetes-asyncio client against kmock's emulator, with a test kubelet moving pods through their
phases. Time is an injected clock (real time plus an offset the tests advance)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.backends.kubernetes.client import RateLimitedApiClient
from gateway.backends.kubernetes.inventory import KubernetesInventory, NodeCache
from gateway.backends.kubernetes.runtime import KubernetesRuntime
from gateway.backends.nodes_file import StaticInventory
from gateway.db.admission import LeaderQueue
from gateway.domain.manifests.kubernetes import LABEL_JOB_ID
from gateway.domain.scheduling.nodes import GpuMode, Node
from gateway.errors import KubernetesUnavailable
from gateway.loops.reconciler import Reconciler
from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import admit_and_place
from tests.integration.kube import (
    Cluster,
    Kubelet,
    caught_up,
    client_for,
    node,
    running_cluster,
    seed,
)
from tests.openapi_check import CheckedClient

GIB = 2**30
NAMESPACE = "search"
EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "examples"
REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
QUOTA = {"cpu": "1000", "memory": "10Ti", "gpu": 64, "max_running_jobs": 50, "max_queued_jobs": 100}
NODE_NAMES = [f"n-{i}" for i in range(8)]


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


#: What GPU feature discovery labels a GPU node with (the production examples' node affinity).
GPU_LABELS = {"nvidia.com/gpu.present": "true"}


@pytest.fixture
def nodes() -> tuple[Node, ...]:
    """What the API checks submits against: the same nodes the emulated cluster has."""
    cpu = [Node(name=name, cpu_millis=32_000, memory_bytes=128 * GIB) for name in NODE_NAMES]
    gpu = Node(
        name="g-0",
        cpu_millis=32_000,
        memory_bytes=128 * GIB,
        gpu_mode=GpuMode.DEVICE_PLUGIN,
        gpu_devices=8,
        labels={"kubernetes.io/hostname": "g-0", **GPU_LABELS},
        extended={"rdma/hca": 4},
    )
    return (*cpu, gpu)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with running_cluster() as cluster:
        seed(
            cluster,
            *(node(name, cpu="32", memory="128Gi") for name in NODE_NAMES),
            node(
                "g-0",
                cpu="32",
                memory="128Gi",
                gpus=8,
                labels=GPU_LABELS,
                extended={"rdma/hca": "4"},
            ),
        )
        yield cluster


@pytest.fixture
async def kube(cluster: Cluster, tmp_path: Path) -> AsyncIterator[RateLimitedApiClient]:
    async with client_for(cluster, tmp_path) as client:
        yield client


class Harness:
    """One gateway's loops, run a step at a time; each step first lets the informers hear
    every change the cluster has made (as the watches deliver them)."""

    def __init__(
        self, engine: AsyncEngine, kube: RateLimitedApiClient, clock: Clock, cluster: Cluster
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.cluster = cluster
        quick = {"backoff": (0.01, 0.05)}  # resume at once when the emulator is back
        self.node_cache = NodeCache(kube, clock=clock, **quick)
        self.inventory = KubernetesInventory(kube, nodes=self.node_cache, **quick)
        self.runtime = KubernetesRuntime(kube, cluster_domain=None, nodes=self.node_cache, **quick)
        self.reconciler = Reconciler(engine, self.runtime, is_leader=lambda: True, clock=clock)
        self.queue = LeaderQueue()

    async def settle(self) -> None:
        await self.inventory.nodes()
        await self.runtime.observe()
        await caught_up(self.cluster, *self.inventory.informers, self.runtime.pods)

    async def admit(self) -> tuple[str, ...]:
        await self.settle()
        nodes = await self.inventory.nodes()
        return (await admit_and_place(self.engine, nodes, self.queue, self.clock)).admitted

    async def reconcile(self) -> None:
        await self.settle()
        await self.reconciler.reconcile()

    async def step(self) -> None:
        await self.admit()
        await self.reconcile()

    async def close(self) -> None:
        await self.runtime.pods.stop()
        await self.inventory.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def gateway(
    engine: AsyncEngine, kube: RateLimitedApiClient, clock: Clock, cluster: Cluster
) -> AsyncIterator[Harness]:
    harness = Harness(engine, kube, clock, cluster)
    yield harness
    await harness.close()


async def make_tenant(api: CheckedClient) -> None:
    body = {"namespace": NAMESPACE, "quota": QUOTA}
    assert (await api.put("/v1/admin/tenants/search", json=body)).status == 201


def pods(cluster: Cluster, job_id: str | None = None) -> dict[str, dict[str, Any]]:
    return _objects(cluster, "v1/pods", job_id)


def services(cluster: Cluster, job_id: str | None = None) -> dict[str, dict[str, Any]]:
    return _objects(cluster, "v1/services", job_id)


def _objects(cluster: Cluster, resource: str, job_id: str | None) -> dict[str, dict[str, Any]]:
    found = {}
    for key, obj in cluster.objects.items():
        if str(key[0]) != resource and getattr(key[0], "plural", None) != resource.split("/")[1]:
            continue
        if obj.deleted:
            continue
        labels = obj["metadata"].get("labels") or {}
        if job_id is None or labels.get(LABEL_JOB_ID) == job_id:
            found[obj["metadata"]["name"]] = dict(obj)
    return found


def env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}


def tf_job(name: str, **replicas: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "tenant": "search",
        "framework": "tensorflow",
        "run_policy": {"backoff_limit": 2, "ready_timeout_seconds": 60},
        "replicas": {role: {"image": "img", **spec} for role, spec in replicas.items()},
    }


async def submit(api: CheckedClient, spec: dict[str, Any]) -> str:
    response = await api.post("/v1/jobs", json=spec)
    assert response.status == 201, response.text
    return str(response.body["id"])


async def state(api: CheckedClient, job_id: str) -> dict[str, Any]:
    return (await api.get(f"/v1/jobs/{job_id}")).body  # type: ignore[no-any-return]


async def run_all(kubelet: Kubelet, cluster: Cluster, job_id: str) -> None:
    for name in pods(cluster, job_id):
        await kubelet.run(NAMESPACE, name)


Step = Callable[[], Coroutine[Any, Any, None]]


async def test_success_via_the_chief_deletes_the_still_running_ps(
    api: CheckedClient, cluster: Cluster, gateway: Harness
) -> None:
    await make_tenant(api)
    job_id = await submit(api, tf_job("wd", chief={}, worker={"count": 1}, ps={"count": 2}))
    await gateway.step()
    assert sorted(pods(cluster, job_id)) == ["wd-chief-0", "wd-ps-0", "wd-ps-1", "wd-worker-0"]
    assert sorted(services(cluster, job_id)) == sorted(pods(cluster, job_id))
    kubelet = Kubelet(cluster)
    await run_all(kubelet, cluster, job_id)
    await gateway.step()
    assert (await state(api, job_id))["state"] == "running"
    await kubelet.exit(NAMESPACE, "wd-chief-0", 0)
    await gateway.step()
    done = await state(api, job_id)
    assert (done["state"], done["reason"]) == ("succeeded", "ChiefSucceeded")
    # clean_pod_policy Running: the PS and the worker, still running, are gone with their
    # Services; the chief's pod stays for its logs.
    assert sorted(pods(cluster, job_id)) == ["wd-chief-0"]


async def test_worker_failing_under_on_failure_is_restarted_then_the_job_fails(
    api: CheckedClient, cluster: Cluster, gateway: Harness
) -> None:
    await make_tenant(api)
    job_id = await submit(api, tf_job("flaky", worker={"restart_policy": "OnFailure"}))
    kubelet = Kubelet(cluster)
    await gateway.step()
    for restart in range(2):
        await kubelet.run(NAMESPACE, "flaky-worker-0")
        await kubelet.exit(NAMESPACE, "flaky-worker-0", 1)
        await gateway.step()  # deletes the failed pod (a restart) ...
        await gateway.step()  # ... and creates it again
        assert "flaky-worker-0" in pods(cluster, job_id), restart
        assert (await state(api, job_id))["state"] in ("admitted", "running")
    await kubelet.run(NAMESPACE, "flaky-worker-0")
    await kubelet.exit(NAMESPACE, "flaky-worker-0", 1)
    await gateway.step()
    failed = await state(api, job_id)
    assert (failed["state"], failed["reason"]) == ("failed", "BackoffLimitExceeded")
    events = (await api.get(f"/v1/jobs/{job_id}/events")).body["items"]
    assert [e["type"] for e in events].count("restarted") == 2


@pytest.mark.parametrize(("code", "outcome"), [(137, "restarted"), (1, "failed")])
async def test_exit_code_policy_retries_signals_and_not_permanent_codes(
    api: CheckedClient, cluster: Cluster, gateway: Harness, code: int, outcome: str
) -> None:
    await make_tenant(api)
    job_id = await submit(api, tf_job("codes", worker={"restart_policy": "ExitCode"}))
    kubelet = Kubelet(cluster)
    await gateway.step()
    await kubelet.run(NAMESPACE, "codes-worker-0")
    await kubelet.exit(NAMESPACE, "codes-worker-0", code)
    await gateway.step()
    job = await state(api, job_id)
    events = [e["type"] for e in (await api.get(f"/v1/jobs/{job_id}/events")).body["items"]]
    if outcome == "restarted":
        assert job["state"] in ("admitted", "running")
        assert "restarted" in events
    else:
        assert (job["state"], job["reason"]) == ("failed", "PermanentExitCode")


async def test_gang_not_ready_in_time_is_evicted_whole_and_requeued_with_backoff(
    api: CheckedClient, cluster: Cluster, gateway: Harness, clock: Clock
) -> None:
    await make_tenant(api)
    job_id = await submit(api, tf_job("slow", chief={}, worker={"count": 2}))
    await gateway.step()
    await Kubelet(cluster).run(NAMESPACE, "slow-chief-0")  # the workers never start
    clock.offset = 61
    await gateway.reconcile()
    job = await state(api, job_id)
    assert (job["state"], job["reason"], job["attempt"]) == ("queued", "ReadyTimeout", 1)
    assert pods(cluster, job_id) == {}
    assert services(cluster, job_id) == {}
    await gateway.admit()
    assert (await state(api, job_id))["reason"] == "BackoffAfterEviction"
    clock.offset += 61  # the first backoff is 60 s
    assert await gateway.admit() == (job_id,)


async def test_node_going_not_ready_requeues_the_job_onto_other_nodes(
    api: CheckedClient, cluster: Cluster, gateway: Harness, clock: Clock
) -> None:
    await make_tenant(api)
    job_id = await submit(api, tf_job("moving", worker={"count": 2}))
    await gateway.step()
    kubelet = Kubelet(cluster)
    await run_all(kubelet, cluster, job_id)
    await gateway.step()
    lost = pods(cluster, job_id)["moving-worker-0"]["metadata"]["annotations"]["muster.dev/node"]
    async with cluster.patch(
        f"/api/v1/nodes/{lost}",
        json={"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        headers={"Content-Type": "application/merge-patch+json"},
    ) as response:
        assert response.status == 200
    await gateway.reconcile()  # NotReady for less than the grace: a blink, not a loss
    assert (await state(api, job_id))["state"] == "running"
    clock.offset += 61
    await gateway.reconcile()
    job = await state(api, job_id)
    assert (job["state"], job["reason"]) == ("queued", "NodeLost")
    clock.offset += 61
    await gateway.step()
    placed = {
        p["metadata"]["annotations"]["muster.dev/node"] for p in pods(cluster, job_id).values()
    }
    assert placed
    assert lost not in placed


async def test_a_gateway_killed_after_admission_leaves_exactly_one_set_of_pods(
    api: CheckedClient,
    cluster: Cluster,
    engine: AsyncEngine,
    kube: RateLimitedApiClient,
    clock: Clock,
) -> None:
    await make_tenant(api)
    job_id = await submit(api, tf_job("once", chief={}, worker={"count": 3}))
    first = Harness(engine, kube, clock, cluster)
    assert await first.admit() == (job_id,)  # ... and the gateway dies before creating pods
    second = Harness(engine, kube, clock, cluster)  # the next leader, knowing nothing
    await second.reconcile()
    await second.reconcile()
    await first.reconcile()  # even a late pass of the dead one changes nothing
    assert sorted(pods(cluster, job_id)) == [
        "once-chief-0",
        "once-worker-0",
        "once-worker-1",
        "once-worker-2",
    ]
    assert len(services(cluster, job_id)) == 4


async def test_cancel_leaves_no_pod_or_service(
    api: CheckedClient, cluster: Cluster, gateway: Harness
) -> None:
    await make_tenant(api)
    job_id = await submit(api, tf_job("gone", chief={}, ps={"count": 2}))
    await gateway.step()
    await run_all(Kubelet(cluster), cluster, job_id)
    await gateway.step()
    assert (await api.post(f"/v1/jobs/{job_id}/cancel")).status == 200
    await gateway.reconcile()
    assert pods(cluster, job_id) == {}
    assert services(cluster, job_id) == {}


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="../shared/examples is not here")
@pytest.mark.parametrize("example", ["tfjob-v1.yaml", "tfjob-v1alpha1.yaml"])
async def test_reference_tfjobs_yield_fifteen_pods_and_services_with_tf_config(
    api: CheckedClient, cluster: Cluster, gateway: Harness, example: str
) -> None:
    await make_tenant(api)
    response = await api.post(
        "/v1/jobs?tenant=search",
        data=(EXAMPLES / example).read_text(),
        headers={"Content-Type": "application/yaml"},
    )
    assert response.status == 201, response.text
    job_id = response.body["id"]
    await gateway.step()
    created = pods(cluster, job_id)
    assert len(created) == 15
    assert len(services(cluster, job_id)) == 15
    name = response.body["name"]
    config = json.loads(env(created[f"{name}-worker-3"])["TF_CONFIG"])
    assert config["task"] == {"type": "worker", "index": 3}
    assert config["environment"] == "cloud"
    assert list(config["cluster"]) == ["chief", "ps", "worker"]
    assert config["cluster"]["worker"][3] == f"{name}-worker-3.{NAMESPACE}.svc:2222"
    assert len(config["cluster"]["ps"]) == 4
    if example == "tfjob-v1.yaml":
        worker = created[f"{name}-worker-0"]["spec"]["containers"][0]
        assert worker["resources"]["requests"]["cpu"] == worker["resources"]["limits"]["cpu"]
        assert env(created[f"{name}-worker-0"])["OMP_NUM_THREADS"] == "8"


async def test_pods_are_pinned_to_the_node_admission_planned(
    api: CheckedClient, cluster: Cluster, gateway: Harness, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    job_id = await submit(api, tf_job("pinned", worker={"count": 2, "resources": {"gpu": 2}}))
    await gateway.step()
    async with engine.connect() as conn:
        planned = dict(
            (
                await conn.execute(
                    text("SELECT pod_name, node FROM placements WHERE job_id = :id"), {"id": job_id}
                )
            ).all()
        )
    for name, pod in pods(cluster, job_id).items():
        terms = pod["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0]["values"] == [planned[name]]
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


async def test_pods_the_reconciler_sweeps_away_are_given_their_grace_period(
    api: CheckedClient, cluster: Cluster, gateway: Harness
) -> None:
    """A cancelled job's pods are deleted by the sweep, each with the grace in its own spec: the
    replica's, else the default; the Services with none."""
    await make_tenant(api)
    job_id = await submit(
        api, tf_job("graceful", chief={"termination_grace_period_seconds": 120}, ps={})
    )
    await gateway.step()
    created = pods(cluster, job_id)
    assert created["graceful-chief-0"]["spec"]["terminationGracePeriodSeconds"] == 120
    assert created["graceful-ps-0"]["spec"]["terminationGracePeriodSeconds"] == 30
    await run_all(Kubelet(cluster), cluster, job_id)
    await gateway.step()
    assert (await api.post(f"/v1/jobs/{job_id}/cancel")).status == 200

    await gateway.reconcile()

    assert pods(cluster, job_id) == {}
    asked = {name: options.get("gracePeriodSeconds") for name, options in cluster.deletions("pods")}
    assert asked == {"graceful-chief-0": 120, "graceful-ps-0": 30}
    assert all("gracePeriodSeconds" not in options for _, options in cluster.deletions("services"))


@pytest.fixture
async def short_grace_api(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> AsyncIterator[CheckedClient]:
    """The API of a gateway whose admin allows grace periods of at most 60 seconds."""
    backend = dataclasses.replace(settings.backend, max_termination_grace_seconds=60)
    app = make_app(dataclasses.replace(settings, backend=backend), engine, StaticInventory(nodes))
    async with TestClient(TestServer(app)) as client:
        yield CheckedClient(client, tokens.admin_token(settings))


TFJOB_GRACE = "/spec/tfReplicaSpecs/Worker/template/spec/terminationGracePeriodSeconds"


def tfjob_manifest(grace: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "TFJob",
            "metadata": {"name": "tf-grace", "namespace": NAMESPACE},
            "spec": {
                "tfReplicaSpecs": {
                    "Worker": {
                        "replicas": 1,
                        "template": {
                            "spec": {
                                "terminationGracePeriodSeconds": grace,
                                "containers": [{"name": "tensorflow", "image": "reg/tf:1"}],
                            }
                        },
                    }
                }
            },
        }
    )


async def test_a_grace_period_above_the_admins_maximum_is_refused_where_it_was_written(
    short_grace_api: CheckedClient,
) -> None:
    api = short_grace_api
    await make_tenant(api)

    refused = await api.post(
        "/v1/jobs", json=tf_job("long", worker={"termination_grace_period_seconds": 61})
    )
    tfjob = await api.post(
        "/v1/jobs", data=tfjob_manifest(61), headers={"Content-Type": "application/yaml"}
    )

    for response, where in (
        (refused, "/replicas/worker/termination_grace_period_seconds"),
        (tfjob, TFJOB_GRACE),
    ):
        assert response.status == 422, response.text
        (error,) = response.body["errors"]
        assert error["pointer"] == where
        assert "at most 60 seconds" in error["detail"]
        assert "admin" in error["detail"]
    accepted = await api.post(
        "/v1/jobs", data=tfjob_manifest(60), headers={"Content-Type": "application/yaml"}
    )
    assert accepted.status == 201, accepted.text
    worker = accepted.body["spec"]["replicas"]["worker"]
    assert worker["termination_grace_period_seconds"] == 60


def generic(name: str, tenant: str, workers: int, cpu: str, **extra: Any) -> dict[str, Any]:
    worker = {"count": workers, "image": "img", "resources": {"cpu": cpu, "memory": "1Gi"}}
    return {
        "name": name,
        "tenant": tenant,
        "framework": "generic",
        "replicas": {"worker": {**worker, **extra}},
    }


async def test_a_preempted_gang_gets_its_grace_is_requeued_and_later_completes(
    api: CheckedClient, cluster: Cluster, engine: AsyncEngine, gateway: Harness
) -> None:
    """search borrows all of ads' idle quota for a 4-pod gang; ads' job reclaims it: the gang's
    pods are deleted with their grace period, the job is requeued (job.preempted), ads' job
    runs, and then the gang runs again and succeeds (job.succeeded)."""
    assert (await api.put("/v1/admin/cohorts/pool", json={})).status == 201
    for name in ("search", "ads"):
        body = {"namespace": name, "quota": {**QUOTA, "cpu": "64"}, "cohort": "pool"}
        assert (await api.put(f"/v1/admin/tenants/{name}", json=body)).status == 201
    hook = {"url": "https://hooks.example.com/m", "events": ["job.preempted", "job.succeeded"]}
    big = await submit(
        api,
        {
            **generic("big", "search", 4, "32", termination_grace_period_seconds=45),
            "callback": hook,
        },
    )
    kubelet = Kubelet(cluster)
    await gateway.step()
    for name in pods(cluster, big):
        await kubelet.run("search", name)
    await gateway.step()
    assert (await state(api, big))["state"] == "running"

    mine = await submit(api, generic("mine", "ads", 2, "16"))
    assert await gateway.admit() == (mine,)
    preempted = await state(api, big)
    assert (preempted["state"], preempted["reason"], preempted["attempt"]) == (
        "queued",
        "Preempted",
        1,
    )
    await gateway.reconcile()
    assert pods(cluster, big) == {}
    asked = {name: options.get("gracePeriodSeconds") for name, options in cluster.deletions("pods")}
    assert asked == {f"big-worker-{k}": 45 for k in range(4)}
    assert sorted(pods(cluster, mine)) == ["mine-worker-0", "mine-worker-1"]

    # ads' job ends; the gang is admitted again (its first preemption backs it off not at all).
    for name in pods(cluster, mine):
        await kubelet.run("ads", name)
        await kubelet.exit("ads", name, 0)
    await gateway.reconcile()
    assert (await state(api, mine))["state"] == "succeeded"
    assert await gateway.admit() == (big,)
    await gateway.reconcile()
    for name in pods(cluster, big):
        await kubelet.run("search", name)
        await kubelet.exit("search", name, 0)
    await gateway.reconcile()
    done = await state(api, big)
    assert (done["state"], done["attempt"]) == ("succeeded", 1)
    async with engine.connect() as conn:
        hooks = await conn.execute(
            text(
                "SELECT event_type FROM webhook_outbox WHERE job_id = CAST(:id AS uuid) "
                "ORDER BY created_at"
            ),
            {"id": big},
        )
        assert [row.event_type for row in hooks] == ["job.preempted", "job.succeeded"]


async def test_a_pytorchjob_yields_pods_with_the_operators_rendezvous_variables(
    api: CheckedClient, cluster: Cluster, gateway: Harness
) -> None:
    """examples/pytorchjob.yaml, made small enough for the emulated nodes: every pod's MASTER_ADDR
    is the master's Service, RANK is 0 for the master and 1..n for the workers, WORLD_SIZE the
    gang's size, as the training operator sets them."""
    await make_tenant(api)
    document = yaml.safe_load((REPO_EXAMPLES / "pytorchjob.yaml").read_text())
    document["metadata"]["namespace"] = NAMESPACE
    for replica in document["spec"]["pytorchReplicaSpecs"].values():
        container = replica["template"]["spec"]["containers"][0]
        container["resources"] = {"limits": {"cpu": "4", "memory": "8Gi"}}
    response = await api.post("/v1/jobs", json=document)
    assert response.status == 201, response.text
    job_id, name = response.body["id"], response.body["name"]

    await gateway.step()

    created = pods(cluster, job_id)
    master = f"{name}-master-0"
    assert sorted(created) == [master, f"{name}-worker-0", f"{name}-worker-1"]
    assert master in services(cluster, job_id)
    for pod_name, pod in created.items():
        container = pod["spec"]["containers"][0]
        assert container["name"] == "pytorch"
        assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456}]
        variables = env(pod)
        rank = "0" if pod_name == master else str(int(pod_name.rsplit("-", 1)[1]) + 1)
        assert {
            key: variables[key]
            for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PYTHONUNBUFFERED")
        } == {
            "MASTER_ADDR": master,
            "MASTER_PORT": "23456",
            "WORLD_SIZE": "3",
            "RANK": rank,
            "PYTHONUNBUFFERED": "1",
        }


PRODUCTION_POLICY = {
    "pod_policy": {"service_accounts": ["default", "trainer"], "allowed_capabilities": ["IPC_LOCK"]}
}


def assert_pod_as_asked(pod: dict[str, Any], template: dict[str, Any], node_name: str) -> None:
    """The pod carries what its manifest's template asked for, exactly, with Muster's pinning
    added to the template's node affinity and its own variables beside the template's."""
    spec = pod["spec"]
    for key in ("volumes", "initContainers", "serviceAccountName", "imagePullSecrets"):
        assert spec[key] == template[key], key
    assert spec["securityContext"] == template["securityContext"]
    asked = template["containers"][0]
    container = spec["containers"][0]
    for key in ("volumeMounts", "workingDir", "securityContext", "command"):
        assert container[key] == asked[key], key
    for side in ("requests", "limits"):
        assert container["resources"][side]["rdma/hca"] == str(
            asked["resources"]["limits"]["rdma/hca"]
        )
    variables = {e["name"]: e for e in container["env"]}
    for entry in asked["env"]:
        assert variables[entry["name"]] == entry
    pinned = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]}
    own = template.get("affinity", {}).get("nodeAffinity", {})
    own_terms = own.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get(
        "nodeSelectorTerms", [{}]
    )
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {**term, "matchExpressions": [*term.get("matchExpressions", []), pinned]}
        for term in own_terms
    ]


async def test_the_production_tfjob_yields_pods_with_exactly_its_pod_fields_once_allowed(
    api: CheckedClient, cluster: Cluster, gateway: Harness, engine: AsyncEngine
) -> None:
    """examples/tfjob-production.yaml: refused until an admin allows its service account and
    IPC_LOCK, then its volumes, mounts, env, service account, pull secrets, security contexts,
    init container, node affinity and RDMA NIC reach the pods exactly, with Muster's pinning and
    environment intact, on the one node that advertises rdma/hca."""
    await make_tenant(api)
    text = (REPO_EXAMPLES / "tfjob-production.yaml").read_text()
    manifest = yaml.safe_load(text)
    template = manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    post = {"data": text, "headers": {"Content-Type": "application/yaml"}}

    refused = await api.post("/v1/jobs?tenant=search", **post)
    assert refused.status == 422, refused.text
    assert sorted(p["pointer"] for p in refused.body["errors"]) == sorted(
        f"/spec/tfReplicaSpecs/{role}/template/spec/{field}"
        for role in ("Chief", "Worker")
        for field in (
            "serviceAccountName",
            "containers/0/securityContext/capabilities/add/0",
        )
    )
    assert all("pod policy rule" in p["detail"] for p in refused.body["errors"])

    assert (await api.patch("/v1/admin/tenants/search", json=PRODUCTION_POLICY)).status == 200
    response = await api.post("/v1/jobs?tenant=search", **post)
    assert response.status == 201, response.text
    await gateway.step()
    created = pods(cluster, response.body["id"])
    assert sorted(created) == [
        "resnet-prod-chief-0",
        "resnet-prod-worker-0",
        "resnet-prod-worker-1",
    ]
    for pod in created.values():
        assert_pod_as_asked(pod, template, "g-0")
        variables = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert "TF_CONFIG" in variables
        assert variables["OMP_NUM_THREADS"]["value"] == "8"
        assert pod["metadata"]["labels"]["muster.dev/tenant"] == "search"


async def test_the_production_pytorchjob_yields_pods_with_its_fields_and_the_operators_env(
    api: CheckedClient, cluster: Cluster, gateway: Harness
) -> None:
    """examples/pytorchjob-production.yaml, made small enough for the emulated GPU node: its pod
    fields and RDMA NIC reach every pod exactly, and each pod's environment is the training
    operator's (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and torchrun's PET_ variables)."""
    body = {"namespace": "research", "quota": QUOTA, **PRODUCTION_POLICY}
    assert (await api.put("/v1/admin/tenants/research", json=body)).status == 201
    document = yaml.safe_load((REPO_EXAMPLES / "pytorchjob-production.yaml").read_text())
    limits = {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": 1, "rdma/hca": 1}
    for replica in document["spec"]["pytorchReplicaSpecs"].values():
        replica["template"]["spec"]["containers"][0]["resources"] = {"limits": limits}
    template = document["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    response = await api.post("/v1/jobs", json=document)
    assert response.status == 201, response.text
    await gateway.step()

    created = pods(cluster, response.body["id"])
    master = "llama-pretrain-master-0"
    assert sorted(created) == [master, *(f"llama-pretrain-worker-{k}" for k in range(3))]
    for name, pod in created.items():
        assert_pod_as_asked(pod, template, "g-0")
        variables = env(pod)
        rank = "0" if name == master else str(int(name.rsplit("-", 1)[1]) + 1)
        assert {
            key: variables[key]
            for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PET_NNODES")
        } == {
            "MASTER_ADDR": master,
            "MASTER_PORT": "23456",
            "WORLD_SIZE": "4",
            "RANK": rank,
            "PET_NNODES": "4",
        }


# -- informers: watches that drop, expire, and an API server that goes away ----------------------


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


async def running_gang(api: CheckedClient, cluster: Cluster, gateway: Harness) -> str:
    await make_tenant(api)
    job_id = await submit(api, tf_job("steady", chief={}, worker={"count": 2}))
    await gateway.step()
    await run_all(Kubelet(cluster), cluster, job_id)
    await gateway.step()
    assert (await state(api, job_id))["state"] == "running"
    return job_id


async def test_a_dropped_watch_resumes_from_where_it_was_without_listing_again(
    api: CheckedClient, cluster: Cluster, gateway: Harness
) -> None:
    job_id = await running_gang(api, cluster, gateway)
    watched = gateway.runtime.pods.watches
    await cluster.drop_watches()
    await Kubelet(cluster).exit(NAMESPACE, "steady-worker-1", 0)
    await gateway.reconcile()
    assert (await gateway.runtime.observe())[job_id, "steady-worker-1"].exit_code == 0
    assert gateway.runtime.pods.watches > watched
    assert cluster.lists("pods") == 2  # once for Muster's pods, once for others': at start only
    assert cluster.lists("nodes") == 1


async def test_a_pod_that_ends_while_the_watch_is_down_is_seen_after_a_relist_on_410(
    api: CheckedClient, cluster: Cluster, gateway: Harness
) -> None:
    """The API server goes away; the chief succeeds meanwhile; the history Muster's watch would
    resume from is compacted, so the resumed watch gets 410 Gone: the informer lists again, and
    the chief's success (and so the job's) is not lost."""
    job_id = await running_gang(api, cluster, gateway)
    cluster.down = True
    await cluster.drop_watches()
    await cluster.change_unseen(
        "pods",
        NAMESPACE,
        "steady-chief-0",
        {
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": 0}}}],
            }
        },
    )
    cluster.compact()
    cluster.down = False
    await gateway.reconcile()
    assert (await state(api, job_id))["state"] == "succeeded"
    assert gateway.runtime.pods.lists == 2  # the first list, and the one after 410 Gone


async def test_an_api_outage_of_a_minute_evicts_nothing_creates_nothing_and_heals_itself(
    api: CheckedClient, cluster: Cluster, gateway: Harness, clock: Clock, engine: AsyncEngine
) -> None:
    job_id = await running_gang(api, cluster, gateway)
    before = sorted(pods(cluster, job_id))
    requests = len(list(cluster))
    cluster.down = True
    await cluster.drop_watches()
    await until(lambda: gateway.runtime.health() is not None)  # the watches' renewals fail
    for _ in range(6):  # a pass every 10 s for a minute
        clock.offset += 10
        with pytest.raises(KubernetesUnavailable):
            await gateway.reconciler.reconcile()
        assert gateway.runtime.health() is not None
    writes = [
        r
        for r in list(cluster)[requests:]
        if r.action in (kmock.action.CREATE, kmock.action.DELETE, kmock.action.UPDATE)
    ]
    assert writes == []
    assert (await state(api, job_id))["state"] == "running"

    cluster.down = False
    await until(lambda: gateway.runtime.health() is None)  # the informers resume by themselves
    await gateway.reconcile()
    await gateway.reconcile()
    job = await state(api, job_id)
    assert (job["state"], job["attempt"]) == ("running", 0)
    assert sorted(pods(cluster, job_id)) == before
    assert cluster.count(kmock.action.CREATE, "pods") == len(before)  # nothing duplicated


# -- clean-up after the TTL ------------------------------------------------------------------------


async def test_after_its_ttl_a_finished_jobs_parent_goes_and_its_kept_pods_are_collected(
    api: CheckedClient, cluster: Cluster, gateway: Harness, clock: Clock, engine: AsyncEngine
) -> None:
    """clean_pod_policy None keeps every pod of a finished job; 120 s after it finished (its
    run_policy.ttl_seconds_after_finished), the leader deletes the parent ConfigMap and the
    garbage collector (emulated: owner references) takes the pods and Services. The job's
    record stays."""
    await make_tenant(api)
    spec = tf_job("kept", chief={}, worker={"count": 1})
    spec["run_policy"] = {"clean_pod_policy": "None", "ttl_seconds_after_finished": 120}
    job_id = await submit(api, spec)
    await gateway.step()
    kubelet = Kubelet(cluster)
    await run_all(kubelet, cluster, job_id)
    for name in pods(cluster, job_id):
        await kubelet.exit(NAMESPACE, name, 0)
    await gateway.reconcile()
    assert (await state(api, job_id))["state"] == "succeeded"
    kept = sorted(pods(cluster, job_id))
    assert kept == ["kept-chief-0", "kept-worker-0"]

    clock.offset += 60
    assert await gateway.reconciler.clean_up(force=True) == []  # not yet
    assert sorted(pods(cluster, job_id)) == kept
    clock.offset += 61
    assert await gateway.reconciler.clean_up(force=True) == [job_id]
    assert [name for name, _ in cluster.deletions("configmaps")] == ["kept-muster"]
    assert pods(cluster, job_id) == {}
    assert services(cluster, job_id) == {}
    assert {(plural, name) for plural, _, name in cluster.collected} == {
        (plural, name) for plural in ("pods", "services") for name in kept
    }
    assert await gateway.reconciler.clean_up(force=True) == []  # once only
    assert (await state(api, job_id))["state"] == "succeeded"  # the record stays
