"""``Runtime`` over the Kubernetes API: Muster's pods in every tenant namespace.

- ``observe`` lists the pods labelled ``app.kubernetes.io/managed-by=muster`` in all namespaces
  (checked again on each object: the selector only trims the transfer) and maps each through
  ``observing.pod_status``, with node readiness from the ``NodeCache``.
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

from kubernetes_asyncio.client import ApiClient

from gateway.backends.base import Gang, PodStatus, PodWatchers
from gateway.backends.kubernetes.client import Kube
from gateway.backends.kubernetes.creating import create_gang
from gateway.backends.kubernetes.deleting import delete_object, grace_period, object_path
from gateway.backends.kubernetes.inventory import NodeCache
from gateway.backends.kubernetes.observing import pod_status
from gateway.domain.jobs.spec import JobSpec, TerminationGrace
from gateway.domain.manifests.kubernetes import LABEL_JOB_ID, LABEL_MANAGED, MANAGER
from gateway.domain.problems import FieldProblem
from gateway.errors import KubernetesInvalid, KubernetesNotFound

__all__ = ["KubernetesRuntime"]

MANAGED = f"{LABEL_MANAGED}={MANAGER}"


class KubernetesRuntime(PodWatchers):
    """Muster's pods on a Kubernetes cluster; see the module docstring. Pods are polled
    (``observe``): no ``on_change`` callback is called yet."""

    def __init__(
        self,
        api: ApiClient,
        *,
        cluster_domain: str | None = None,
        nodes: NodeCache | None = None,
        grace: TerminationGrace | None = None,
    ) -> None:
        super().__init__()
        self.api = api
        self.cluster_domain = cluster_domain
        self.grace = grace if grace is not None else TerminationGrace()
        self._kube = Kube(api)
        self._nodes = nodes if nodes is not None else NodeCache(api)
        # (job id, pod name) -> (namespace, uid, grace period), from the last observe().
        self._pods: dict[tuple[str, str], tuple[str, str | None, int | None]] = {}
        # job id -> namespace, from observe() and create().
        self._namespaces: dict[str, str] = {}

    def refusal(self, tenant: str) -> str | None:
        """Every tenant's pods run here: namespaces and the cluster's policies separate them."""
        return None

    def unsupported(self, spec: JobSpec) -> list[FieldProblem]:
        """Pods carry every pod field the spec allows."""
        return []

    async def observe(self) -> Mapping[tuple[str, str], PodStatus]:
        pods = await self._kube.list("/api/v1/pods", label_selector=MANAGED)
        nodes = await self._nodes.get()
        found: dict[tuple[str, str], PodStatus] = {}
        where: dict[tuple[str, str], tuple[str, str | None, int | None]] = {}
        namespaces: dict[str, str] = {}
        for pod in pods:
            status = pod_status(pod, nodes)
            if status is None:
                continue
            metadata = pod.get("metadata") or {}
            namespace = metadata.get("namespace")
            if not isinstance(namespace, str):
                continue
            key = (status.job_id, status.name)
            found[key] = status
            where[key] = (namespace, metadata.get("uid") or None, grace_period(pod))
            namespaces[status.job_id] = namespace
        self._pods = where
        self._namespaces = namespaces
        return found

    async def create(self, gang: Gang, names: tuple[str, ...]) -> None:
        self._namespaces[gang.job_id] = gang.namespace
        nodes = await self._nodes.get()
        await create_gang(
            self._kube,
            gang,
            names,
            gpu_modes={name: node.gpu_mode for name, node in nodes.items()},
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

    async def close(self) -> None:
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
