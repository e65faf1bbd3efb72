"""The Kubernetes backend through the real kubernetes-asyncio client, over HTTP, against kmock's
emulator (see ``tests/integration/kube.py``): what the inventory reports, what create() writes,
how observe() reads pod phases, delete() (with each pod's own grace period), logs, error
translation and the client's rate limit.

The manifests' every field is the builder's business (``tests/unit/test_k8s_objects.py``); here a
few fields show the backend sent what the builder rendered, to the right place.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes_asyncio.client import ApiException

from gateway.backends.base import Gang, Inventory, Runtime
from gateway.backends.kubernetes.client import (
    Kube,
    RateLimitedApiClient,
    TokenBucket,
    kube_client,
)
from gateway.backends.kubernetes.informer import Informer
from gateway.backends.kubernetes.inventory import KubernetesInventory, NodeCache
from gateway.backends.kubernetes.runtime import KubernetesRuntime
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.pods import pod_name
from gateway.domain.jobs.spec import JobSpec, TerminationGrace
from gateway.domain.lifecycle.decisions import ReplicaPhase
from gateway.domain.manifests.kubernetes import (
    GPU_RESOURCE,
    LABEL_ATTEMPT,
    LABEL_JOB_ID,
    LABEL_MANAGED,
    MANAGER,
    parent_name,
)
from gateway.domain.scheduling.nodes import GpuMode, GpuSlice, Taint
from gateway.domain.scheduling.queueing import Placement
from gateway.errors import (
    ConfigError,
    KubernetesAlreadyExists,
    KubernetesConflict,
    KubernetesNameTaken,
    KubernetesNotFound,
    KubernetesUnavailable,
)
from tests.integration.kube import (
    GIB,
    MIB,
    Cluster,
    Kubelet,
    caught_up,
    kubeconfig,
    node,
    pod,
    running_cluster,
    seed,
)

NAMESPACE = "team-search"
JOB_ID = "0b6f3a8e-4c1d-4f0e-9a57-2d8c1e6b7f90"
OTHER_JOB_ID = "7d1e2f3a-0000-4000-8000-000000000001"
SHARING = "muster.dev/gpu-sharing"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cluster_objects() -> list[dict[str, Any]]:
    """Four nodes (device-plugin GPUs, shared GPUs, CPU, NotReady CPU) and the pods of others."""
    return [
        node(
            "gpu-0",
            cpu="32",
            memory="128Gi",
            gpus=8,
            extended={"rdma/hca": "4", "hugepages-2Mi": "4Gi", "example.com/weird": "lots"},
        ),
        node(
            "shared-0",
            cpu="16",
            memory="64Gi",
            gpus=2,  # the label's count wins over the device plugin's
            labels={SHARING: "true", "muster.dev/gpu-count": "4"},
            taints=[{"key": SHARING, "value": "true", "effect": "NoSchedule"}],
        ),
        node("cpu-0", cpu="7910m", memory="30Gi"),
        node("cpu-1", cpu="8", memory="32Gi", ready=False),
        # Held: a DNS pod on cpu-0; a GPU pod on gpu-0 whose init container asks for more CPU
        # than its container (the scheduler counts the larger).
        pod(
            "kube-system",
            "coredns-1",
            node_name="cpu-0",
            requests={"cpu": "100m", "memory": "70Mi"},
            labels={"k8s-app": "kube-dns"},
        ),
        pod(
            "ml",
            "notebook",
            node_name="gpu-0",
            requests={"cpu": "4", "memory": "16Gi", GPU_RESOURCE: "2", "rdma/hca": "1"},
            init_requests={"cpu": "6", "memory": "1Gi", "hugepages-2Mi": "1Gi"},
        ),
        # Not held: ended, unbound, or Muster's own (admission subtracts those itself).
        pod("ml", "done", node_name="cpu-0", phase="Succeeded", requests={"cpu": "4"}),
        pod("ml", "failed", node_name="gpu-0", phase="Failed", requests={GPU_RESOURCE: "4"}),
        pod("ml", "unbound", node_name=None, phase="Pending", requests={"cpu": "4"}),
        pod(
            NAMESPACE,
            "older-worker-0",
            node_name="cpu-0",
            requests={"cpu": "2"},
            labels={LABEL_MANAGED: MANAGER},
        ),
    ]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with running_cluster() as cluster:
        seed(cluster, *cluster_objects())
        yield cluster


@pytest.fixture
async def api(cluster: Cluster, tmp_path: Path) -> AsyncIterator[RateLimitedApiClient]:
    config = kubeconfig(tmp_path / "kubeconfig", str(cluster.url))
    client = await kube_client(config, qps=1000, burst=1000)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def runtime(api: RateLimitedApiClient) -> AsyncIterator[KubernetesRuntime]:
    # Nodes NotReady count as lost at once here: the grace has its own tests.
    made = KubernetesRuntime(api, cluster_domain=None, nodes=NodeCache(api, lost_after=0))
    yield made
    await made.pods.stop()
    await made._nodes.close()


def job_spec() -> JobSpec:
    spec = check_job_spec(
        {
            "name": "wd",
            "tenant": "search",
            "framework": "tensorflow",
            "replicas": {
                "chief": {"count": 1, "image": "reg/wd:1", "resources": {"cpu": "2", "gpu": 0.5}},
                "worker": {
                    "count": 2,
                    "image": "reg/wd:1",
                    "resources": {"cpu": "4", "gpu": 1},
                    "termination_grace_period_seconds": 45,
                },
                "ps": {"count": 1, "image": "reg/wd:1", "resources": {"cpu": "1"}},
            },
        }
    )
    assert isinstance(spec, JobSpec), spec
    return spec


def gang(*, attempt: int = 1, ps_node: str = "cpu-0", worker_node: str = "gpu-0") -> Gang:
    """The chief on a slice of a shared GPU, the workers on device-plugin GPUs, the PS on CPUs."""
    spec = job_spec()
    where = {
        ("chief", 0): ("shared-0", (GpuSlice(device=1, shares=50),)),
        ("worker", 0): (worker_node, (GpuSlice(device=0, shares=100),)),
        ("worker", 1): ("gpu-0", (GpuSlice(device=1, shares=100),)),
        ("ps", 0): (ps_node, ()),
    }
    placements = []
    for replica in spec.replicas:
        for index in range(replica.count):
            node_name, gpu = where[replica.role, index]
            placements.append(
                Placement(
                    pod_name=pod_name(spec.name, replica.role, index),
                    role=replica.role,
                    index=index,
                    node=node_name,
                    cpu_millis=replica.resources.cpu_millis,
                    memory_bytes=replica.resources.memory_bytes,
                    gpu=gpu,
                )
            )
    return Gang(
        job_id=JOB_ID,
        spec=spec,
        namespace=NAMESPACE,
        attempt=attempt,
        placements=tuple(placements),
    )


NAMES = ("wd-chief-0", "wd-ps-0", "wd-worker-0", "wd-worker-1")


def stored(cluster: Cluster, plural: str, name: str) -> kmock.Object:
    return cluster.objects[f"v1/{plural}", NAMESPACE, name]


def exists(cluster: Cluster, plural: str, name: str) -> bool:
    key = (kmock.resource(f"v1/{plural}"), NAMESPACE, name)
    return key in cluster.objects and not cluster.objects[key].deleted


# --- the client ---------------------------------------------------------------------------------


def test_the_bucket_lets_a_burst_through_then_one_request_per_token() -> None:
    clock = Clock()
    bucket = TokenBucket(qps=2, burst=3, clock=clock)
    assert [bucket.reserve() for _ in range(5)] == [0, 0, 0, 0.5, 1.0]
    clock.now += 10  # pays back the two borrowed tokens, then refills, but only up to the burst
    assert [bucket.reserve() for _ in range(4)] == [0, 0, 0, 0.5]


async def test_the_rate_limit_admits_at_most_burst_requests_without_waiting(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = kubeconfig(tmp_path / "kubeconfig", str(cluster.url))
    api = await kube_client(config, qps=1000, burst=3)
    # The clock stands still: no token comes back while the requests are sent.
    api.limiter = bucket = TokenBucket(qps=1000, burst=3, clock=Clock())
    try:
        kube = Kube(api)
        await asyncio.gather(*(kube.list("/api/v1/nodes") for _ in range(8)))
    finally:
        await api.close()
    assert cluster.count(kmock.action.LIST, "nodes") == 8
    assert bucket.throttled == 5
    # The five over the burst were told to wait 1, 2, ... 5 token periods: in order, one each.
    assert bucket.waited_seconds == pytest.approx(sum(range(1, 6)) / 1000)


async def test_configuration_that_cannot_load_stops_startup(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MUSTER_KUBECONFIG"):
        await kube_client(tmp_path / "missing", qps=10, burst=10)
    with pytest.raises(ConfigError):
        await kube_client(kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1"), qps=0, burst=1)


async def test_api_errors_become_the_backends_exception_tree(
    cluster: Cluster, api: RateLimitedApiClient, tmp_path: Path
) -> None:
    kube = Kube(api)
    with pytest.raises(KubernetesNotFound) as missing:
        await kube.get("/api/v1/namespaces/ml/pods/nope")
    assert isinstance(missing.value.__cause__, ApiException)
    assert missing.value.status == 404
    body = pod("ml", "notebook", node_name=None)
    with pytest.raises(KubernetesAlreadyExists):
        await kube.create("/api/v1/namespaces/ml/pods", body)
    cluster["get /api/v1/services"] << 503
    with pytest.raises(KubernetesUnavailable):
        await kube.list("/api/v1/services")
    # Nothing listens on port 1.
    closed = await kube_client(
        kubeconfig(tmp_path / "closed", "http://127.0.0.1:1"), qps=10, burst=10
    )
    try:
        with pytest.raises(KubernetesUnavailable):
            await Kube(closed).list("/api/v1/nodes")
    finally:
        await closed.close()


# --- the inventory ------------------------------------------------------------------------------


async def test_inventory_offers_allocatable_minus_pods_muster_does_not_own(
    api: RateLimitedApiClient,
) -> None:
    nodes = {n.name: n for n in await KubernetesInventory(api).nodes()}
    assert list(nodes) == ["cpu-0", "cpu-1", "gpu-0", "shared-0"]

    cpu = nodes["cpu-0"]
    assert (cpu.cpu_millis, cpu.memory_bytes) == (7910 - 100, 30 * GIB - 70 * MIB)
    assert (cpu.gpu_mode, cpu.gpu_devices, cpu.ready) == (GpuMode.NONE, 0, True)

    gpu = nodes["gpu-0"]  # the notebook's init container (6 CPUs) counts, not its container's 4
    assert (gpu.cpu_millis, gpu.memory_bytes) == (32_000 - 6000, 128 * GIB - 16 * GIB)
    assert (gpu.gpu_mode, gpu.gpu_devices) == (GpuMode.DEVICE_PLUGIN, 8 - 2)
    # Extended resources by name, less what others' pods hold (a quantity that does not parse
    # offers nothing); the pods and ephemeral names Kubernetes keeps are not extended.
    assert gpu.extended == {"rdma/hca": 4 - 1, "hugepages-2Mi": 4 * GIB - GIB}
    assert nodes["cpu-0"].extended == {}

    shared = nodes["shared-0"]
    assert (shared.gpu_mode, shared.gpu_devices) == (GpuMode.SHARED, 4)
    assert shared.taints == (Taint(key=SHARING, value="true", effect="NoSchedule"),)
    assert shared.labels[SHARING] == "true"

    assert nodes["cpu-1"].ready is False
    assert nodes["cpu-1"].cpu_millis == 8000


async def test_inventory_lists_once_and_then_follows_the_watches(
    cluster: Cluster, api: RateLimitedApiClient
) -> None:
    inventory = KubernetesInventory(api)
    try:
        first = await inventory.nodes()
        assert await inventory.nodes() is first  # nothing changed: the same tuple, no request
        seed(cluster, node("cpu-2", cpu="8", memory="32Gi"))
        await cluster_node(cluster, api, "cpu-3")
        await caught_up(cluster, *inventory.informers)
        assert {"cpu-3"} <= {n.name for n in await inventory.nodes()}
        # A pod of someone else's binds to cpu-3 and holds its CPU; when it ends, it holds none.
        taken = pod("ml", "batch", node_name="cpu-3", requests={"cpu": "3"})
        await Kube(api).create("/api/v1/namespaces/ml/pods", taken)
        await caught_up(cluster, *inventory.informers)
        cpu3 = next(n for n in await inventory.nodes() if n.name == "cpu-3")
        assert cpu3.cpu_millis == 8000 - 3000
        await Kubelet(cluster).exit("ml", "batch", 0)
        await caught_up(cluster, *inventory.informers)
        cpu3 = next(n for n in await inventory.nodes() if n.name == "cpu-3")
        assert cpu3.cpu_millis == 8000
        assert cluster.lists("nodes") == 1
        assert cluster.lists("pods") == 1
    finally:
        await inventory.close()


async def cluster_node(cluster: Cluster, api: RateLimitedApiClient, name: str) -> None:
    """A node joining the cluster through the API (seeded objects make no watch event)."""
    await Kube(api).create("/api/v1/nodes", node(name, cpu="8", memory="32Gi"))


# --- create -------------------------------------------------------------------------------------


async def test_create_makes_a_headless_service_and_a_pinned_pod_per_replica(
    cluster: Cluster, runtime: KubernetesRuntime
) -> None:
    await runtime.create(gang(), NAMES)

    parent = cluster.objects["v1/configmaps", NAMESPACE, parent_name("wd")]
    assert parent["metadata"]["labels"][LABEL_JOB_ID] == JOB_ID
    for name in NAMES:
        service, created = stored(cluster, "services", name), stored(cluster, "pods", name)
        assert service["spec"]["clusterIP"] == "None"
        labels = created["metadata"]["labels"]
        assert (labels[LABEL_JOB_ID], labels[LABEL_ATTEMPT], labels[LABEL_MANAGED]) == (
            JOB_ID,
            "1",
            MANAGER,
        )
        for obj in (service, created):
            (owner,) = obj["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["uid"]) == ("ConfigMap", parent["metadata"]["uid"])

    worker = stored(cluster, "pods", "wd-worker-0")
    terms = worker["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["gpu-0"]
    assert worker["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "1"

    # The chief's node shares its GPUs: no device-plugin request, the planned device instead.
    chief = stored(cluster, "pods", "wd-chief-0")["spec"]
    container = chief["containers"][0]
    assert GPU_RESOURCE not in container["resources"]["requests"]
    assert {"name": "CUDA_VISIBLE_DEVICES", "value": "1"} in container["env"]
    assert {"key": SHARING, "operator": "Equal", "value": "true", "effect": "NoSchedule"} in chief[
        "tolerations"
    ]


async def test_creating_twice_changes_nothing(cluster: Cluster, runtime: KubernetesRuntime) -> None:
    await runtime.create(gang(), NAMES)
    await runtime.create(gang(), NAMES)
    for name in NAMES:
        assert len(stored(cluster, "pods", name).history) == 1
        assert len(stored(cluster, "services", name).history) == 1
    assert len(cluster.objects["v1/configmaps", NAMESPACE, parent_name("wd")].history) == 1


async def test_a_name_another_job_holds_is_a_conflict_and_is_left_alone(
    cluster: Cluster, runtime: KubernetesRuntime
) -> None:
    theirs = {LABEL_JOB_ID: OTHER_JOB_ID, LABEL_MANAGED: MANAGER, LABEL_ATTEMPT: "1"}
    seed(cluster, pod(NAMESPACE, "wd-worker-1", node_name="gpu-0", labels=theirs))

    with pytest.raises(KubernetesNameTaken) as taken:
        await runtime.create(gang(), NAMES)

    assert (taken.value.job_id, taken.value.owner_job_id) == (JOB_ID, OTHER_JOB_ID)
    assert JOB_ID in str(taken.value)
    assert OTHER_JOB_ID in str(taken.value)
    assert isinstance(taken.value, KubernetesConflict)
    other = stored(cluster, "pods", "wd-worker-1")
    assert len(other.history) == 1
    assert other["metadata"]["labels"][LABEL_JOB_ID] == OTHER_JOB_ID
    # The rest of the gang was created all the same.
    assert all(exists(cluster, "pods", name) for name in NAMES)


async def test_a_pod_of_an_earlier_attempt_is_replaced_on_the_next_pass(
    cluster: Cluster, runtime: KubernetesRuntime
) -> None:
    await runtime.create(gang(attempt=1), ("wd-ps-0",))

    await runtime.create(gang(attempt=2), ("wd-ps-0",))  # finds attempt 1's pod: deletes it
    assert not exists(cluster, "pods", "wd-ps-0")
    assert cluster.deletions("pods")[0][1]["gracePeriodSeconds"] == 30  # its own, the default
    await runtime.create(gang(attempt=2), ("wd-ps-0",))
    assert stored(cluster, "pods", "wd-ps-0")["metadata"]["labels"][LABEL_ATTEMPT] == "2"


# --- observe ------------------------------------------------------------------------------------


@pytest.mark.parametrize("honour_selectors", [True, False], ids=["selectors", "no-selectors"])
async def test_observe_maps_phases_exit_codes_and_lost_nodes(
    honour_selectors: bool, cluster: Cluster, runtime: KubernetesRuntime
) -> None:
    # Without selectors the emulator returns every pod: the backend must filter by itself.
    cluster.honour_selectors = honour_selectors
    await runtime.create(gang(ps_node="cpu-1"), NAMES)  # cpu-1 is NotReady
    kubelet = Kubelet(cluster)
    await kubelet.run(NAMESPACE, "wd-chief-0")
    await kubelet.run(NAMESPACE, "wd-worker-0")
    await kubelet.run(NAMESPACE, "wd-worker-1")
    await kubelet.exit(NAMESPACE, "wd-worker-0", 0)
    await kubelet.exit(NAMESPACE, "wd-worker-1", 3)

    observed = await runtime.observe()

    assert set(observed) == {(JOB_ID, name) for name in NAMES}  # no one else's pods
    listing = next(r for r in cluster if r.action == kmock.action.LIST and r.resource == "v1/pods")
    assert listing.params["labelSelector"] == f"{LABEL_MANAGED}={MANAGER}"
    seen = {name: observed[JOB_ID, name] for name in NAMES}
    assert all(status.attempt == 1 for status in seen.values())
    assert (seen["wd-chief-0"].phase, seen["wd-chief-0"].exit_code) == (ReplicaPhase.RUNNING, None)
    assert (seen["wd-worker-0"].phase, seen["wd-worker-0"].exit_code) == (ReplicaPhase.SUCCEEDED, 0)
    assert (seen["wd-worker-1"].phase, seen["wd-worker-1"].exit_code) == (ReplicaPhase.FAILED, 3)
    assert seen["wd-ps-0"].phase is ReplicaPhase.PENDING
    assert seen["wd-ps-0"].node_ready is False  # planned on a NotReady node
    assert all(seen[name].node_ready for name in NAMES if name != "wd-ps-0")


async def test_a_pod_its_node_failed_reads_as_lost_not_as_failed(
    cluster: Cluster, runtime: KubernetesRuntime
) -> None:
    await runtime.create(gang(), ("wd-worker-0",))
    kubelet = Kubelet(cluster)
    await kubelet.run(NAMESPACE, "wd-worker-0")
    await kubelet.evict(NAMESPACE, "wd-worker-0")

    status = (await runtime.observe())[JOB_ID, "wd-worker-0"]

    assert (status.phase, status.exit_code, status.node_ready) == (
        ReplicaPhase.MISSING,
        None,
        False,
    )


# --- delete and logs ----------------------------------------------------------------------------


async def test_delete_removes_pod_and_service_and_deleting_again_succeeds(
    cluster: Cluster, runtime: KubernetesRuntime
) -> None:
    await runtime.create(gang(), NAMES)
    await runtime.observe()

    await runtime.delete(JOB_ID, "wd-worker-0")
    assert not exists(cluster, "pods", "wd-worker-0")
    assert not exists(cluster, "services", "wd-worker-0")
    assert exists(cluster, "pods", "wd-worker-1")
    await runtime.delete(JOB_ID, "wd-worker-0")


def grace_asked(cluster: Cluster, plural: str) -> list[tuple[str, object]]:
    """Each DELETE of ``plural``: the name and the gracePeriodSeconds its DeleteOptions sent."""
    return [
        (name, options.get("gracePeriodSeconds")) for name, options in cluster.deletions(plural)
    ]


async def test_pods_carry_their_replicas_grace_period_capped_by_the_admins_maximum(
    cluster: Cluster, api: RateLimitedApiClient
) -> None:
    default = KubernetesRuntime(api, cluster_domain=None)
    await default.create(gang(), ("wd-worker-0", "wd-ps-0"))
    assert stored(cluster, "pods", "wd-worker-0")["spec"]["terminationGracePeriodSeconds"] == 45
    assert stored(cluster, "pods", "wd-ps-0")["spec"]["terminationGracePeriodSeconds"] == 30

    capped = KubernetesRuntime(
        api, cluster_domain=None, grace=TerminationGrace(default_seconds=10, max_seconds=20)
    )
    await capped.create(gang(), ("wd-worker-1", "wd-chief-0"))
    assert stored(cluster, "pods", "wd-worker-1")["spec"]["terminationGracePeriodSeconds"] == 20
    assert stored(cluster, "pods", "wd-chief-0")["spec"]["terminationGracePeriodSeconds"] == 10


async def test_a_deleted_pod_is_given_the_grace_period_in_its_spec_and_its_service_none(
    cluster: Cluster, api: RateLimitedApiClient, runtime: KubernetesRuntime
) -> None:
    await runtime.create(gang(), NAMES)
    await runtime.observe()

    await runtime.delete(JOB_ID, "wd-worker-0")  # as listed by observe()
    await runtime.delete(JOB_ID, "wd-ps-0")
    # A gateway whose default differs (and that never listed the pods, so reads each first):
    # the pod is given its own grace all the same, whatever the API server's default.
    other = KubernetesRuntime(api, cluster_domain=None, grace=TerminationGrace(default_seconds=5))
    await other.delete(JOB_ID, "wd-worker-1")
    await other.delete(JOB_ID, "wd-chief-0")

    assert grace_asked(cluster, "pods") == [
        ("wd-worker-0", 45),
        ("wd-ps-0", 30),
        ("wd-worker-1", 45),
        ("wd-chief-0", 30),
    ]
    assert [grace for _, grace in grace_asked(cluster, "services")] == [None] * 4
    assert not any(exists(cluster, "pods", name) for name in NAMES)


async def test_delete_finds_the_namespace_without_an_observe_and_spares_other_jobs(
    cluster: Cluster, api: RateLimitedApiClient, runtime: KubernetesRuntime
) -> None:
    await runtime.create(gang(), NAMES)
    fresh = KubernetesRuntime(api, cluster_domain=None)  # as after a restart: knows no job yet

    await fresh.delete(JOB_ID, "wd-ps-0")
    assert not exists(cluster, "pods", "wd-ps-0")
    assert not exists(cluster, "services", "wd-ps-0")

    theirs = {LABEL_JOB_ID: OTHER_JOB_ID, LABEL_MANAGED: MANAGER, LABEL_ATTEMPT: "1"}
    seed(cluster, pod(NAMESPACE, "wd-ps-0", node_name="cpu-0", labels=theirs))
    await runtime.delete(JOB_ID, "wd-ps-0")  # the name is ours no more
    assert exists(cluster, "pods", "wd-ps-0")


async def test_logs_stream_the_pods_log(cluster: Cluster, runtime: KubernetesRuntime) -> None:
    await runtime.create(gang(), ("wd-chief-0",))
    cluster.pod_logs[NAMESPACE, "wd-chief-0"] = b"step 1 loss 0.9\nstep 2 loss 0.7\n"

    chunks = [chunk async for chunk in runtime.logs(JOB_ID, "wd-chief-0", follow=True)]

    assert b"".join(chunks) == b"step 1 loss 0.9\nstep 2 loss 0.7\n"
    assert [chunk async for chunk in runtime.logs(JOB_ID, "wd-worker-0", follow=False)] == []
    request = next(r for r in cluster if r.subresource == "log")
    assert request.params["follow"] == "true"


def test_the_backend_implements_the_protocols(api: RateLimitedApiClient) -> None:
    # Checked by mypy: the assignments fail type checking if a signature drifts.
    inventory: Inventory = KubernetesInventory(api)
    runtime: Runtime = KubernetesRuntime(api, cluster_domain="cluster.local")
    assert inventory is not None
    assert runtime is not None


async def test_close_closes_the_client(api: RateLimitedApiClient) -> None:
    runtime = KubernetesRuntime(api, cluster_domain=None, nodes=NodeCache(api))
    await runtime.close()
    assert api.rest_client.pool_manager.closed


# --- production pod fields -----------------------------------------------------------------------


async def test_pods_carry_the_replicas_pod_fields_exactly_with_musters_own_intact(
    cluster: Cluster, runtime: KubernetesRuntime
) -> None:
    fields: dict[str, Any] = {
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "imagenet"}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        ],
        "volume_mounts": [{"name": "shm", "mountPath": "/dev/shm"}],
        "env_value_from": {"TOKEN": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        "service_account_name": "trainer",
        "image_pull_secrets": ["regcred"],
        "init_containers": [{"name": "fetch", "image": "reg/fetch:1"}],
    }
    checked = check_job_spec(
        {"name": "x", "tenant": "search", "replicas": {"w": {"image": "i", **fields}}}
    )
    assert isinstance(checked, JobSpec), checked
    base = gang()
    spec = dataclasses.replace(
        base.spec,
        replicas=tuple(
            dataclasses.replace(r, pod=checked.replicas[0].pod) if r.role == "worker" else r
            for r in base.spec.replicas
        ),
    )
    await runtime.create(dataclasses.replace(base, spec=spec), NAMES)

    pod = stored(cluster, "pods", "wd-worker-0")["spec"]
    container = pod["containers"][0]
    assert pod["volumes"] == fields["volumes"]
    assert pod["initContainers"] == fields["init_containers"]
    assert pod["serviceAccountName"] == "trainer"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert container["volumeMounts"] == fields["volume_mounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TOKEN"]["valueFrom"] == fields["env_value_from"]["TOKEN"]
    assert "TF_CONFIG" in env
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["gpu-0"]
    # The other replicas carry none of them.
    assert "volumes" not in stored(cluster, "pods", "wd-chief-0")["spec"]


async def test_a_pod_is_pinned_by_its_nodes_hostname_label_where_it_differs_from_the_name(
    cluster: Cluster, api: RateLimitedApiClient
) -> None:
    """On some clouds a node's kubernetes.io/hostname label is not its name: the pin must use
    the label, or the scheduler finds no node for the pod."""
    await Kube(api).create(
        "/api/v1/nodes",
        {
            **node("ip-10-0-0-7.ec2.internal", cpu="32", memory="128Gi", gpus=8),
            "metadata": {
                "name": "ip-10-0-0-7.ec2.internal",
                "labels": {"kubernetes.io/hostname": "ip-10-0-0-7"},
            },
        },
    )
    runtime = KubernetesRuntime(api, cluster_domain=None)
    try:
        await runtime.create(gang(worker_node="ip-10-0-0-7.ec2.internal"), ("wd-worker-0",))
        pinned = stored(cluster, "pods", "wd-worker-0")["spec"]["affinity"]["nodeAffinity"]
        terms = pinned["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [
            {
                "matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["ip-10-0-0-7"]}
                ]
            }
        ]
    finally:
        await runtime.pods.stop()
        await runtime._nodes.close()


async def test_an_informer_whose_listener_fails_lists_again_and_goes_on(
    cluster: Cluster, api: RateLimitedApiClient
) -> None:
    """A bug in a listener must not end the watch for good: the informer logs it, lists again
    (its cache may be half-updated) and goes on."""
    informer: Informer[str] = Informer(
        Kube(api),
        "/api/v1/nodes",
        lambda obj: obj["metadata"]["name"],
        name="nodes",
        backoff=(0.01, 0.05),
    )
    failures = [RuntimeError("a listener's bug")]

    def listener(key: str, old: str | None, new: str | None) -> None:
        if failures and key == "cpu-9":
            raise failures.pop()

    informer.on_change(listener)
    informer.start()
    try:
        assert await informer.wait_synced(5)
        await cluster_node(cluster, api, "cpu-9")
        await caught_up(cluster, informer)
        assert "cpu-9" in informer.items
        assert informer.lists == 2
        assert informer.fresh
    finally:
        await informer.stop()
