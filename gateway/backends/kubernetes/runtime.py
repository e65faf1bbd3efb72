"""``Runtime`` over the Kubernetes API: Muster's pods in every tenant namespace.

- ``observe`` reads Muster's pods (labelled ``app.kubernetes.io/managed-by=muster``, in all
  namespaces; checked again on each object) from an informer (one list, then a watch, keeping
  only the fields ``observing`` reads) and maps each through ``observing.pod_status``, with node
  readiness from the ``NodeCache``: a node NotReady for less than its grace still counts as
  ready, so a node that blinks loses no gang. Every pod event and every node change calls
  ``on_change``, so the reconciler hears of a pod's end as the watch delivers it.
- An API outage is not a node failure: while an informer cannot reach the API server or has not
  heard from it for its ``stale_after``, ``observe`` raises ``KubernetesUnavailable`` (the
  reconciler then evicts and creates nothing), and ``health`` says why; it resumes by itself.
- ``create`` renders and creates the gang's objects (``creating.create_gang``) with each pod's
  GPU mode taken from its planned node, and its grace period from its replica's spec
  (``TerminationGrace``: the gateway's default and cap).
- ``delete`` removes the replica's Pod, with the grace period in its spec as last listed, and its
  Service (``deleting.delete_object``).
- ``logs`` streams the pod's log (``follow`` keeps it open until the container ends).
- ``close`` closes the API client, which this runtime owns.

Where a job's objects live: the Runtime protocol names a pod by (job id, pod name), without a
namespace. The runtime remembers, from its last ``observe``, each pod's namespace and uid, and
from each ``create``, each job's namespace. When neither knows the job (a gateway that serves the
API but does not reconcile, or one that just restarted), the pods and services labelled with the
job's id are listed across namespaces. The memory is rebuilt by every ``observe``, so it holds
only live pods and jobs created since.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from kubernetes_asyncio.client import ApiClient

from gateway.backends.base import Gang, PodStatus, PodWatchers
from gateway.backends.kubernetes.client import Kube
from gateway.backends.kubernetes.creating import create_gang
from gateway.backends.kubernetes.deleting import delete_object, grace_period, object_path
from gateway.backends.kubernetes.informer import Informer
from gateway.backends.kubernetes.inventory import NodeCache, synced
from gateway.backends.kubernetes.observing import pod_status, slim_pod
from gateway.domain.jobs.spec import JobSpec, TerminationGrace
from gateway.domain.manifests.kubernetes import (
    HOSTNAME_KEY,
    LABEL_JOB_ID,
    LABEL_MANAGED,
    MANAGER,
    parent_name,
)
from gateway.domain.problems import FieldProblem
from gateway.errors import KubernetesInvalid, KubernetesNotFound, KubernetesUnavailable

__all__ = ["KubernetesRuntime"]

MANAGED = f"{LABEL_MANAGED}={MANAGER}"


class KubernetesRuntime(PodWatchers):
    """Muster's pods on a Kubernetes cluster; see the module docstring."""

    def __init__(
        self,
        api: ApiClient,
        *,
        cluster_domain: str | None = None,
        nodes: NodeCache | None = None,
        grace: TerminationGrace | None = None,
        **watch: Any,
    ) -> None:
        super().__init__()
        self.api = api
        self.cluster_domain = cluster_domain
        self.grace = grace if grace is not None else TerminationGrace()
        self._kube = Kube(api)
        self._nodes = nodes if nodes is not None else NodeCache(api, **watch)
        self.pods: Informer[dict[str, Any]] = Informer(
            self._kube,
            "/api/v1/pods",
            slim_pod,
            name="Muster's pods",
            label_selector=MANAGED,
            **watch,
        )
        self.pods.on_change(self._pod_changed)
        self._nodes.informer.on_change(lambda *_: self._changed())
        # (job id, pod name) -> (namespace, uid, grace period), as the informer has the pod.
        self._pods: dict[tuple[str, str], tuple[str, str | None, int | None]] = {}
        # job id -> namespace, from the informer and create().
        self._namespaces: dict[str, str] = {}

    def _pod_changed(
        self, key: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        for pod, present in ((old, False), (new, True)):
            if pod is None:
                continue
            metadata = pod["metadata"]
            job_id = (metadata.get("labels") or {}).get(LABEL_JOB_ID)
            if not isinstance(job_id, str):
                continue
            where = (job_id, metadata["name"])
            if present:
                namespace = metadata["namespace"]
                self._pods[where] = (namespace, metadata.get("uid") or None, grace_period(pod))
                self._namespaces[job_id] = namespace
            else:
                self._pods.pop(where, None)
        self._changed()

    @property
    def informers(self) -> tuple[Informer[Any], ...]:
        return (self._nodes.informer, self.pods)

    def health(self) -> str | None:
        """Why the runtime cannot trust its view of the cluster now (the API server unreachable,
        or silent for too long), or None."""
        for informer in self.informers:
            if not informer.synced.is_set():
                return f"{informer.name}: not listed yet" + (
                    f" ({informer.error})" if informer.error else ""
                )
            if not informer.connected or not informer.fresh:
                silent = informer.staleness() or 0.0
                why = informer.error or "no event or bookmark"
                return (
                    f"{informer.name}: the API server has not answered for {silent:.0f} s ({why})"
                )
        return None

    def refusal(self, tenant: str) -> str | None:
        """Every tenant's pods run here: namespaces and the cluster's policies separate them."""
        return None

    def unsupported(self, spec: JobSpec) -> list[FieldProblem]:
        """Pods carry every pod field the spec allows."""
        return []

    async def observe(self) -> Mapping[tuple[str, str], PodStatus]:
        nodes = await self._nodes.get()
        await synced(self.pods)
        trouble = self.health()
        if trouble is not None:
            raise KubernetesUnavailable(f"the cluster's state is not known now: {trouble}")
        blinking = [name for name in self._nodes.not_ready_since if not self._nodes.lost(name)]
        if blinking:  # NotReady within the grace: its pods are not lost yet
            nodes = {**nodes, **{name: replace(nodes[name], ready=True) for name in blinking}}
        found: dict[tuple[str, str], PodStatus] = {}
        for pod in self.pods.items.values():
            status = pod_status(pod, nodes)
            if status is not None:
                found[(status.job_id, status.name)] = status
        return found

    async def create(self, gang: Gang, names: tuple[str, ...]) -> None:
        self._namespaces[gang.job_id] = gang.namespace
        nodes = await self._nodes.get()
        planned = {p.node: nodes[p.node] for p in gang.placements if p.node in nodes}
        await create_gang(
            self._kube,
            gang,
            names,
            gpu_modes={name: node.gpu_mode for name, node in planned.items()},
            hostnames={name: node.labels.get(HOSTNAME_KEY, name) for name, node in planned.items()},
            cluster_domain=self.cluster_domain,
            grace=self.grace,
        )

    async def delete(self, job_id: str, name: str) -> None:
        seen = self._pods.get((job_id, name))
        if seen is not None:
            namespaces = [seen[0]]
        elif job_id in self._namespaces:
            namespaces = [self._namespaces[job_id]]
        else:
            namespaces = await self._find_namespaces(job_id, name)
        for namespace in namespaces:
            # Known from the listing, the pod is deleted as seen there; else it is read first.
            listed = seen is not None and seen[0] == namespace
            uid, grace = (seen[1], seen[2]) if seen is not None and listed else (None, None)
            await delete_object(
                self._kube, "pods", namespace, name, job_id=job_id, uid=uid, grace_seconds=grace
            )
            await delete_object(self._kube, "services", namespace, name, job_id=job_id)

    async def logs(self, job_id: str, name: str, *, follow: bool) -> AsyncIterator[bytes]:
        seen = self._pods.get((job_id, name))
        if seen is not None:
            namespace: str | None = seen[0]
        else:
            found = await self._find_namespaces(job_id, name, plurals=("pods",))
            namespace = found[0] if found else None
        if namespace is None:
            return
        query = {"follow": "true" if follow else "false"}
        try:
            async for chunk in self._kube.stream(
                object_path("pods", namespace, name) + "/log", query
            ):
                yield chunk
        except (KubernetesNotFound, KubernetesInvalid):
            # Gone, or no container has started yet (400): there is no log to show.
            return

    async def remove(self, job_id: str, job_name: str, namespace: str) -> None:
        """Delete the job's parent ConfigMap (if it is the job's): the garbage collector then
        deletes the pods and Services it owns, which the clean-pod policy kept."""
        await delete_object(
            self._kube, "configmaps", namespace, parent_name(job_name), job_id=job_id
        )

    async def close(self) -> None:
        await self.pods.stop()
        await self._nodes.close()
        await self.api.close()

    async def _find_namespaces(
        self, job_id: str, name: str, *, plurals: tuple[str, ...] = ("pods", "services")
    ) -> list[str]:
        """The namespaces holding a pod or service ``name`` labelled with ``job_id``."""
        found: set[str] = set()
        for plural in plurals:
            for obj in await self._kube.list(
                f"/api/v1/{plural}", label_selector=f"{LABEL_JOB_ID}={job_id}"
            ):
                metadata = obj.get("metadata") or {}
                labels = metadata.get("labels") or {}
                namespace = metadata.get("namespace")
                if (
                    metadata.get("name") == name
                    and labels.get(LABEL_JOB_ID) == job_id
                    and isinstance(namespace, str)
                ):
                    found.add(namespace)
        return sorted(found)
