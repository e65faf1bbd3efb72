"""deploy/rbac.yaml grants exactly what the Kubernetes backend uses, no more and no less.

The calls are not listed by hand: the backend runs every operation it has (inventory, create,
create again, observe, logs, delete, delete again, delete of a job whose namespace it has not
seen) against the emulator, and the requests the emulator received are the calls the code makes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest
import yaml

from gateway.backends.kubernetes.client import RateLimitedApiClient
from gateway.backends.kubernetes.inventory import KubernetesInventory, NodeCache
from gateway.backends.kubernetes.runtime import KubernetesRuntime
from tests.integration.kube import Cluster, client_for, running_cluster, seed
from tests.integration.test_kubernetes_backend import JOB_ID, NAMES, cluster_objects, gang

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"
VERBS = {
    kmock.action.LIST: "list",
    kmock.action.WATCH: "watch",
    kmock.action.FETCH: "get",
    kmock.action.CREATE: "create",
    kmock.action.UPDATE: "patch",
    kmock.action.DELETE: "delete",
}
# Not a call: owner references with blockOwnerDeletion need update on the owner's finalizers.
IMPLIED = {("configmaps/finalizers", "update")}


def granted() -> set[tuple[str, str]]:
    role = next(d for d in yaml.safe_load_all(RBAC.read_text()) if d["kind"] == "ClusterRole")
    return {
        (resource, verb)
        for rule in role["rules"]
        if rule["apiGroups"] == [""]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def used(cluster: Cluster) -> set[tuple[str, str]]:
    calls = set()
    for request in cluster:
        if request.resource is None:
            continue
        resource = request.resource.plural
        if request.subresource:
            resource = f"{resource}/{request.subresource}"
        calls.add((resource, VERBS[request.action]))
    return calls


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with running_cluster() as cluster:
        seed(cluster, *cluster_objects())
        yield cluster


@pytest.fixture
async def api(cluster: Cluster, tmp_path: Path) -> AsyncIterator[RateLimitedApiClient]:
    async with client_for(cluster, tmp_path) as client:
        yield client


async def test_rbac_grants_exactly_the_calls_the_backend_makes(
    cluster: Cluster, api: RateLimitedApiClient
) -> None:
    nodes = NodeCache(api)
    inventory = KubernetesInventory(api, nodes=nodes)
    runtime = KubernetesRuntime(api, cluster_domain=None, nodes=nodes)
    await inventory.nodes()
    await runtime.create(gang(), NAMES)
    await runtime.create(gang(), NAMES)
    await runtime.observe()
    async for _ in runtime.logs(JOB_ID, NAMES[0], follow=False):
        pass
    for name in NAMES:
        await runtime.delete(JOB_ID, name)
        await runtime.delete(JOB_ID, name)
    # A fresh runtime (a restarted gateway) must find the job's namespace by itself.
    await runtime.create(gang(), NAMES[:1])
    await KubernetesRuntime(api, cluster_domain=None, nodes=nodes).delete(JOB_ID, NAMES[0])

    calls = used(cluster)
    assert calls, "the emulator received no request"
    assert calls - granted() == set(), "calls the ClusterRole does not allow"
    assert granted() - IMPLIED - calls == set(), "rules no call needs: remove them"
