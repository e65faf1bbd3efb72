"""A small Kubernetes for the backend's tests: kmock's emulator on 127.0.0.1, made a little more
like an API server, a kubeconfig pointing at it, seed objects, and a test kubelet.

kmock's ``KubernetesEmulator`` stores objects in memory and serves list, get, create, merge-patch
and delete on any declared resource. ``Cluster`` adds what the backend relies on and the emulator
lacks: a uid (and creation time) on every created object, label and field selectors on lists
(``honour_selectors=False`` turns them off again, to show the backend filters by itself), and the
``pods/<name>/log`` subresource, served from ``Cluster.pod_logs``. Every request is recorded
(the emulator's own list of them); ``Cluster.deletions`` gives the DeleteOptions each DELETE sent.

Nothing here schedules or runs anything: ``Kubelet`` plays the node, binding a pod to its planned
node and moving it Pending -> Running -> Succeeded or Failed by patching it over HTTP.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import kmock

from gateway.backends.kubernetes.client import RateLimitedApiClient, kube_client
from gateway.domain.manifests.kubernetes import NODE_ANNOTATION

GIB = 2**30
MIB = 2**20
RESOURCES = ("v1/pods", "v1/services", "v1/nodes", "v1/configmaps")


def _matches_labels(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality-based label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return "" if value is None else str(value)


def _matches_fields(selector: str, obj: Mapping[str, Any]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            path, value = term.split("!=", 1)
            if _field(obj, path) == value:
                return False
        else:
            path, value = term.replace("==", "=").split("=", 1)
            if _field(obj, path) != value:
                return False
    return True


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    honour_selectors: bool = True
    pod_logs: dict[tuple[str, str], bytes] = attrs.field(factory=dict)

    async def _handle(self, request: kmock.Request) -> Any:
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            metadata = request.data.setdefault("metadata", {})
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault(
                "creationTimestamp", datetime.datetime.now(datetime.UTC).isoformat()
            )
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        listing = await super()._serve_list(request)
        if self.honour_selectors and isinstance(listing, dict):
            labels, fields = (
                request.params.get("labelSelector"),
                request.params.get("fieldSelector"),
            )
            listing["items"] = [
                item
                for item in listing["items"]
                if (not labels or _matches_labels(labels, item["metadata"].get("labels") or {}))
                and (not fields or _matches_fields(fields, item))
            ]
        return listing

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        if request.subresource == "log":
            await super()._serve_fetch(request)  # 404 when there is no such pod
            return self.pod_logs.get((request.namespace or "", request.name or ""), b"")
        return await super()._serve_fetch(request)

    def deletions(self, plural: str) -> list[tuple[str, dict[str, Any]]]:
        """The name and DeleteOptions (``{}`` for none) of each DELETE of one ``plural`` received,
        in order."""
        return [
            (request.name or "", dict(request.data) if isinstance(request.data, dict) else {})
            for request in self
            if request.action == kmock.action.DELETE
            and request.resource is not None
            and request.resource.plural == plural
        ]

    def count(self, action: kmock.action, plural: str | None = None) -> int:
        """How many requests of this kind (on this resource) the cluster has received."""
        return sum(
            1
            for request in self
            if request.action == action
            and (
                plural is None
                or (request.resource is not None and request.resource.plural == plural)
            )
        )


def kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig (JSON is YAML) whose current context is the emulator, with a dummy token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester"}}],
        "current-context": "kmock",
    }
    path.write_text(json.dumps(config), "utf-8")
    return path


@contextlib.asynccontextmanager
async def running_cluster(*, honour_selectors: bool = True) -> AsyncIterator[Cluster]:
    """The emulator serving HTTP on 127.0.0.1 with the core resources declared, and no objects."""
    async with Cluster(honour_selectors=honour_selectors) as cluster, kmock.Server(cluster):
        for resource in RESOURCES:
            cluster.resources[resource] = kmock.ResourceInfo()
        yield cluster
        # The emulator answers its own failures with a 500; the API errors it means are fine.
        unexpected = [e for e in cluster.errors if not isinstance(e, kmock.KubernetesError)]
        assert not unexpected, unexpected


def node(
    name: str,
    *,
    cpu: str,
    memory: str,
    gpus: int = 0,
    ready: bool = True,
    labels: Mapping[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    extended: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    allocatable = {"cpu": cpu, "memory": memory, "pods": "110", **(extended or {})}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid4()),
            "labels": {"kubernetes.io/hostname": name, **(labels or {})},
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "allocatable": allocatable,
            "capacity": allocatable,
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
        },
    }


def pod(
    namespace: str,
    name: str,
    *,
    node_name: str | None,
    phase: str = "Running",
    requests: Mapping[str, str] | None = None,
    init_requests: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A pod that someone other than the backend under test made."""
    spec: dict[str, Any] = {
        "containers": [
            {"name": "main", "image": "img", "resources": {"requests": dict(requests or {})}}
        ]
    }
    if init_requests:
        spec["initContainers"] = [
            {"name": "init", "image": "img", "resources": {"requests": dict(init_requests)}}
        ]
    if node_name:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "labels": dict(labels or {}),
        },
        "spec": spec,
        "status": {"phase": phase},
    }


def seed(cluster: Cluster, *objects: Mapping[str, Any]) -> None:
    """Store objects as they are, as if created before the test began."""
    plurals = {"Node": "v1/nodes", "Pod": "v1/pods", "Service": "v1/services"}
    plurals["ConfigMap"] = "v1/configmaps"
    for obj in objects:
        metadata = obj["metadata"]
        cluster.objects[plurals[obj["kind"]], metadata.get("namespace"), metadata["name"]] = obj


class Kubelet:
    """Plays the scheduler and the node for Muster's pods, over the emulator's HTTP API."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def _patch(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        url = f"/api/v1/namespaces/{namespace}/pods/{name}"
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.cluster.patch(url, json=patch, headers=headers) as response:
            assert response.status == 200, await response.text()

    def _pod(self, namespace: str, name: str) -> Mapping[str, Any]:
        return self.cluster.objects["v1/pods", namespace, name]

    async def run(self, namespace: str, name: str) -> None:
        """Bind the pod to its planned node and start its container."""
        planned = self._pod(namespace, name)["metadata"]["annotations"][NODE_ANNOTATION]
        await self._patch(namespace, name, {"spec": {"nodeName": planned}})
        await self._patch(
            namespace,
            name,
            {
                "status": {
                    "phase": "Running",
                    "containerStatuses": [
                        {"name": "main", "ready": True, "state": {"running": {}}}
                    ],
                }
            },
        )

    async def exit(self, namespace: str, name: str, code: int) -> None:
        """The container ends with ``code``; restartPolicy is Never, so the pod ends too."""
        await self._patch(
            namespace,
            name,
            {
                "status": {
                    "phase": "Succeeded" if code == 0 else "Failed",
                    "containerStatuses": [
                        {
                            "name": "main",
                            "ready": False,
                            "state": {"terminated": {"exitCode": code, "reason": "Completed"}},
                        }
                    ],
                }
            },
        )

    async def evict(self, namespace: str, name: str) -> None:
        """The node evicts the pod under pressure: Failed, no container exit code."""
        await self._patch(
            namespace,
            name,
            {"status": {"phase": "Failed", "reason": "Evicted", "containerStatuses": None}},
        )


@contextlib.asynccontextmanager
async def client_for(cluster: Cluster, tmp_path: Path) -> AsyncIterator[RateLimitedApiClient]:
    """The real kubernetes-asyncio client for the emulator, effectively unthrottled."""
    client = await kube_client(
        kubeconfig(tmp_path / "kubeconfig", str(cluster.url)), qps=1000, burst=1000
    )
    try:
        yield client
    finally:
        await client.close()
