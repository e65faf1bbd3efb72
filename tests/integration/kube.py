"""A small Kubernetes for the backend's tests: kmock's emulator on 127.0.0.1, made a little more
like an API server, a kubeconfig pointing at it, seed objects, and a test kubelet.

kmock's ``KubernetesEmulator`` stores objects in memory and serves list, get, create, merge-patch
and delete on any declared resource. ``Cluster`` adds what the backend relies on and the emulator
lacks: a uid (and creation time) on every created object, label and field selectors on lists
(``honour_selectors=False`` turns them off again, to show the backend filters by itself), and the
``pods/<name>/log`` subresource, served from ``Cluster.pod_logs``. Every request is recorded
(the emulator's own list of them); ``Cluster.deletions`` gives the DeleteOptions each DELETE sent.

It also behaves like an API server for watches: every change gets the next resourceVersion
(``metadata.resourceVersion``; a list says the current one), and a watch replays the changes
after the resourceVersion it names, honours the selectors and ``timeoutSeconds``, sends a
BOOKMARK every ``bookmark_seconds`` when asked for them, and answers 410 Gone (an ERROR event)
for a resourceVersion older than the history it keeps (``compact()`` drops it all). Faults on
demand: ``drop_watches()`` ends every open watch; ``down = True`` answers every request 503 (and
ends the watches) until it is set back.

Nothing here schedules or runs anything: ``Kubelet`` plays the node, binding a pod to its planned
node and moving it Pending -> Running -> Succeeded or Failed by patching it over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
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


#: (resourceVersion, type, resource plural, object, the object before) of one change.
Change = tuple[int, str, str, dict[str, Any], dict[str, Any] | None]
HISTORY = 100_000  # changes kept for watches to resume from


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    honour_selectors: bool = True
    pod_logs: dict[tuple[str, str], bytes] = attrs.field(factory=dict)
    bookmark_seconds: float = 0.2
    down: bool = False
    version: int = 1
    history: list[Change] = attrs.field(factory=list)
    oldest: int = 1  # the oldest resourceVersion a watch may resume from
    watch_generation: int = 0
    collected: list[tuple[str, str | None, str]] = attrs.field(factory=list)
    changed: asyncio.Condition = attrs.field(factory=asyncio.Condition)

    async def _handle(self, request: kmock.Request) -> Any:
        if self.down and request.resource is not None:
            return aiohttp.web.json_response(
                {"kind": "Status", "code": 503, "reason": "ServiceUnavailable"}, status=503
            )
        changing = request.action in (
            kmock.action.CREATE,
            kmock.action.UPDATE,
            kmock.action.DELETE,
        ) and (request.name is not None or request.action == kmock.action.CREATE)
        version = self.version + 1
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            metadata = request.data.setdefault("metadata", {})
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault(
                "creationTimestamp", datetime.datetime.now(datetime.UTC).isoformat()
            )
            metadata["resourceVersion"] = str(version)
        elif request.action == kmock.action.UPDATE and isinstance(request.data, dict):
            request.data.setdefault("metadata", {})["resourceVersion"] = str(version)
        key = self._key(request)
        stored = self._stored(key)
        before = dict(stored.raw) if stored is not None and not stored.deleted else None
        response = await super()._handle(request)
        if changing and key is not None and response.status < 300:
            await self._record(request, key, version, before)
        return response

    def _stored(self, key: Any) -> Any:
        """The emulator's stored object under ``key``, or None."""
        if key is None or key[2] is None or key not in self._objects:
            return None
        return self._objects[key]

    def _key(self, request: kmock.Request) -> Any:
        if request.resource is None:
            return None
        data = request.data if isinstance(request.data, dict) else {}
        namespace = request.namespace or (data.get("metadata") or {}).get("namespace")
        name = request.name or (data.get("metadata") or {}).get("name")
        return (request.resource, namespace, name)

    async def _record(
        self, request: kmock.Request, key: Any, version: int, before: dict[str, Any] | None
    ) -> None:
        """Append the change a request made to the watch history, with its resourceVersion."""
        assert request.resource is not None
        stored = self._stored(key)
        if stored is None:
            return
        if stored.deleted:
            kind, obj = "DELETED", dict(stored.last.raw)
            obj["metadata"] = {**obj.get("metadata", {}), "resourceVersion": str(version)}
        else:
            kind = "ADDED" if request.action == kmock.action.CREATE else "MODIFIED"
            obj = dict(stored.raw)
        self.version = version
        self.history.append((version, kind, request.resource.plural, obj, before))
        if kind == "DELETED":
            self._collect_garbage(obj.get("metadata", {}).get("uid"))
        if len(self.history) > HISTORY:
            del self.history[: len(self.history) - HISTORY]
            self.oldest = self.history[0][0]
        async with self.changed:
            self.changed.notify_all()

    def _collect_garbage(self, owner_uid: str | None) -> None:
        """The garbage collector: delete every object whose ownerReferences name a deleted
        owner's uid (and, in turn, what they own)."""
        if not owner_uid:
            return
        for key, stored in list(self._objects.items()):
            if stored.deleted:
                continue
            owners = (stored.raw.get("metadata") or {}).get("ownerReferences") or []
            if any(owner.get("uid") == owner_uid for owner in owners):
                before = dict(stored.raw)
                stored.delete()
                self.version += 1
                obj = dict(before)
                obj["metadata"] = {**obj.get("metadata", {}), "resourceVersion": str(self.version)}
                self.history.append((self.version, "DELETED", key[0].plural, obj, before))
                self.collected.append((key[0].plural, key[1], key[2]))
                self._collect_garbage((before.get("metadata") or {}).get("uid"))

    def _selected(self, request: kmock.Request, obj: Mapping[str, Any]) -> bool:
        metadata = obj.get("metadata") or {}
        if request.namespace and metadata.get("namespace") != request.namespace:
            return False
        if not self.honour_selectors:
            return True
        labels, fields = request.params.get("labelSelector"), request.params.get("fieldSelector")
        return (not labels or _matches_labels(labels, metadata.get("labels") or {})) and (
            not fields or _matches_fields(fields, obj)
        )

    async def _serve_list(self, request: kmock.Request) -> Any:
        listing = await super()._serve_list(request)
        if isinstance(listing, dict):
            listing["metadata"] = {"resourceVersion": str(self.version)}
            listing["items"] = [item for item in listing["items"] if self._selected(request, item)]
        return listing

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        yield b""  # the headers go out at once
        assert request.resource is not None
        plural = request.resource.plural
        generation = self.watch_generation
        deadline = asyncio.get_running_loop().time() + float(
            request.params.get("timeoutSeconds") or 3600
        )
        bookmarks = request.params.get("allowWatchBookmarks") == "true"
        since = request.params.get("resourceVersion")
        if since:
            last = int(since)
            if last < self.oldest - 1:
                yield {
                    "type": "ERROR",
                    "object": {"kind": "Status", "code": 410, "reason": "Expired"},
                }
                return
        else:  # no resourceVersion: every object as ADDED first
            listing = await self._serve_list(request)
            for item in listing["items"]:
                yield {"type": "ADDED", "object": item}
            last = self.version
        told = last
        while not self.down and generation == self.watch_generation:
            for version, kind, resource, obj, before in [c for c in self.history if c[0] > last]:
                last = version
                if resource != plural:
                    continue
                # As the API server does: an object entering the selection is ADDED to this
                # watch, one leaving it DELETED.
                now = self._selected(request, obj) and kind != "DELETED"
                was = before is not None and self._selected(request, before)
                if now:
                    told = version
                    yield {"type": "MODIFIED" if was else "ADDED", "object": obj}
                elif was:
                    told = version
                    yield {"type": "DELETED", "object": obj}
            if bookmarks and last > told:  # other collections' changes: say how far it is
                told = last
                yield {
                    "type": "BOOKMARK",
                    "object": {"kind": "Pod", "metadata": {"resourceVersion": str(last)}},
                }
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), min(left, self.bookmark_seconds))
            if bookmarks and self.version == last:
                yield {
                    "type": "BOOKMARK",
                    "object": {"kind": "Pod", "metadata": {"resourceVersion": str(last)}},
                }

    async def change_unseen(
        self, plural: str, namespace: str | None, name: str, patch: Mapping[str, Any]
    ) -> None:
        """Merge ``patch`` into an object as a kubelet would while Muster cannot reach the API
        server (``down``): the change is stored and in the watch history, but no request of
        Muster's carries it."""
        resource = next(r for r in self._get_resources() if r.plural == plural)
        key = (resource, namespace, name)
        stored = self._objects[key]
        before = dict(stored.raw)
        version = self.version + 1
        stored.patch(
            {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": str(version)}}
        )
        self.version = version
        self.history.append((version, "MODIFIED", plural, dict(stored.raw), before))

    def compact(self) -> None:
        """Forget the history: a watch from any resourceVersion so far gets 410 Gone."""
        self.history.clear()
        self.oldest = self.version + 1

    async def drop_watches(self) -> None:
        """End every open watch, as a dropped connection or a restarted API server would."""
        self.watch_generation += 1
        async with self.changed:
            self.changed.notify_all()

    def lists(self, plural: str) -> int:
        """How many list calls (not watches) of ``plural`` the cluster has answered."""
        return self.count(kmock.action.LIST, plural)

    def watches(self, plural: str) -> int:
        return self.count(kmock.action.WATCH, plural)

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


async def caught_up(cluster: Cluster, *informers: Any, seconds: float = 5.0) -> None:
    """Wait until every informer has heard of every change the cluster made so far (their
    resourceVersions reach the cluster's; bookmarks carry them past other collections')."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    target = cluster.version
    while not all(
        informer.synced.is_set() and int(informer.resource_version or 0) >= target
        for informer in informers
    ):
        if loop.time() > deadline:
            behind = {i.name: i.resource_version for i in informers}
            raise AssertionError(f"informers did not reach resourceVersion {target}: {behind}")
        await asyncio.sleep(0.005)
