"""Creating a gang's objects: the job's parent ConfigMap, then a headless Service and a Pod per
replica, exactly as ``gateway.domain.manifests.kubernetes`` renders them.

Steps of ``create_gang``:

1. get or create the parent ConfigMap and take its uid, which every pod and service names as its
   owner (so deleting the parent garbage-collects the job);
2. for each replica asked for, concurrently: create its Service, then its Pod, pinned to the
   planned node and rendered for that node's GPU mode;
3. report every name another job holds, after all the others were created.

Creating is idempotent. When a create finds the name taken (409 AlreadyExists), the existing
object is read:

- it carries this job's ``muster.dev/job-id`` (and, for a pod, this attempt's
  ``muster.dev/attempt``): success, nothing is written;
- it is a pod of this job that is still terminating, or of an earlier attempt: it is not this
  attempt's replica. An earlier attempt's pod is deleted (given its own grace period); either
  way the pod is created on a later reconcile pass, once the name is free (the reconciler sees
  it missing until then);
- anything else (another job's, or no Muster job's): ``KubernetesNameTaken``, naming both jobs;
  the object is never overwritten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from gateway.backends.base import Gang
from gateway.backends.kubernetes.client import Kube
from gateway.backends.kubernetes.deleting import delete_object, grace_period, object_path
from gateway.domain.jobs.spec import TerminationGrace
from gateway.domain.manifests.kubernetes import (
    LABEL_ATTEMPT,
    LABEL_JOB_ID,
    Owner,
    parent_manifest,
    parent_owner,
    pod_manifest,
    service_manifest,
)
from gateway.domain.scheduling.nodes import SHARES_PER_DEVICE, GpuMode
from gateway.domain.scheduling.queueing import Placement
from gateway.errors import (
    KubernetesAlreadyExists,
    KubernetesConflict,
    KubernetesError,
    KubernetesNameTaken,
    KubernetesNotFound,
)

__all__ = ["create_gang", "ensure_parent", "fallback_gpu_mode"]

log = logging.getLogger(__name__)


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _labels(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    labels = _metadata(obj).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def fallback_gpu_mode(placement: Placement) -> GpuMode:
    """The GPU mode for a pod whose planned node is no longer listed. Such a pod cannot be
    scheduled, and its gang is evicted for the lost node; this only keeps the render valid."""
    shares = sum(s.shares for s in placement.gpu)
    if not shares:
        return GpuMode.NONE
    return GpuMode.DEVICE_PLUGIN if shares % SHARES_PER_DEVICE == 0 else GpuMode.SHARED


async def ensure_parent(kube: Kube, gang: Gang) -> Owner:
    """Get or create the job's parent ConfigMap; the owner reference to it."""
    manifest = parent_manifest(
        job_id=gang.job_id,
        job_name=gang.spec.name,
        tenant=gang.spec.tenant,
        namespace=gang.namespace,
    )
    name = manifest["metadata"]["name"]
    path = object_path("configmaps", gang.namespace, name)
    try:
        # Create first: a new job's parent does not exist, so this is one call, not two.
        parent = await kube.create(object_path("configmaps", gang.namespace), manifest)
    except KubernetesAlreadyExists:
        # A later attempt, or a gateway that was leader a moment ago, made it.
        parent = await kube.get(path)
    owner_job = _labels(parent).get(LABEL_JOB_ID)
    if owner_job != gang.job_id:
        raise KubernetesNameTaken(
            kind="ConfigMap",
            namespace=gang.namespace,
            name=name,
            job_id=gang.job_id,
            owner_job_id=owner_job,
        )
    if _metadata(parent).get("deletionTimestamp"):
        # Pods owned by it would be garbage-collected as soon as they are created.
        raise KubernetesConflict(
            f"ConfigMap {gang.namespace}/{name} of job {gang.job_id} is being deleted; "
            "its pods are created once it is gone",
            status=409,
        )
    uid = _metadata(parent).get("uid")
    if not isinstance(uid, str) or not uid:
        raise KubernetesError(f"ConfigMap {gang.namespace}/{name} came back without a uid")
    return parent_owner(job_name=gang.spec.name, uid=uid)


async def create_gang(
    kube: Kube,
    gang: Gang,
    names: tuple[str, ...],
    *,
    gpu_modes: Mapping[str, GpuMode],
    cluster_domain: str | None,
    grace: TerminationGrace,
    hostnames: Mapping[str, str] | None = None,
) -> None:
    """Create the Service and Pod of each replica in ``names``; see the module docstring.
    ``hostnames``: each node's ``kubernetes.io/hostname`` label, which pods are pinned by (the
    node's name where it has none)."""
    by_name = {p.pod_name: p for p in gang.placements}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise ValueError(f"job {gang.job_id} has no placement for {', '.join(unknown)}")
    if not names:
        return
    # 1. The parent.
    owner = await ensure_parent(kube, gang)
    # 2. Every replica, concurrently (the client's rate limit paces them).
    outcomes = await asyncio.gather(
        *(
            _create_replica(
                kube,
                gang,
                by_name[name],
                owner=owner,
                gpu_mode=gpu_modes.get(by_name[name].node) or fallback_gpu_mode(by_name[name]),
                cluster_domain=cluster_domain,
                grace=grace,
                hostname=(hostnames or {}).get(by_name[name].node, by_name[name].node),
            )
            for name in names
        ),
        return_exceptions=True,
    )
    # 3. Report: an API failure first (the pass is retried), then names held by other jobs.
    taken = [o for o in outcomes if isinstance(o, KubernetesNameTaken)]
    failures = [o for o in outcomes if isinstance(o, BaseException) and o not in taken]
    for problem in [*failures[1:], *taken[1:]]:
        log.warning("creating job %s: %s", gang.job_id, problem)
    if failures:
        raise failures[0]
    if taken:
        raise taken[0]


async def _create_replica(
    kube: Kube,
    gang: Gang,
    placement: Placement,
    *,
    owner: Owner,
    gpu_mode: GpuMode,
    cluster_domain: str | None,
    grace: TerminationGrace,
    hostname: str,
) -> None:
    service = service_manifest(
        gang.spec,
        role=placement.role,
        index=placement.index,
        job_id=gang.job_id,
        tenant=gang.spec.tenant,
        namespace=gang.namespace,
        owner=owner,
    )
    # A Service held by another job raises KubernetesNameTaken here: no pod behind another job's
    # address.
    await _create(kube, "services", service, gang, attempt=None)
    pod = pod_manifest(
        gang.spec,
        placement,
        gpu_mode=gpu_mode,
        job_id=gang.job_id,
        tenant=gang.spec.tenant,
        namespace=gang.namespace,
        attempt=gang.attempt,
        owner=owner,
        cluster_domain=cluster_domain,
        grace=grace,
        hostname=hostname,
    )
    await _create(kube, "pods", pod, gang, attempt=gang.attempt)


async def _create(
    kube: Kube, plural: str, manifest: dict[str, Any], gang: Gang, *, attempt: int | None
) -> None:
    """Create one object; on a name clash decide as the module docstring says."""
    name: str = manifest["metadata"]["name"]
    namespace = gang.namespace
    try:
        await kube.create(object_path(plural, namespace), manifest)
        return
    except KubernetesAlreadyExists:
        pass
    try:
        existing = await kube.get(object_path(plural, namespace, name))
    except KubernetesNotFound:
        log.info("%s %s/%s vanished while being created; retrying later", plural, namespace, name)
        return
    owner_job = _labels(existing).get(LABEL_JOB_ID)
    if owner_job != gang.job_id:
        raise KubernetesNameTaken(
            kind=manifest["kind"],
            namespace=namespace,
            name=name,
            job_id=gang.job_id,
            owner_job_id=owner_job if isinstance(owner_job, str) else None,
        )
    if attempt is None:
        return  # a Service serves every attempt of its replica
    if _metadata(existing).get("deletionTimestamp"):
        log.info("pod %s/%s is still terminating; it is created again once gone", namespace, name)
        return
    found = _attempt(_labels(existing).get(LABEL_ATTEMPT))
    if found == attempt:
        return
    if found < attempt:
        log.info(
            "deleting pod %s/%s of job %s: attempt %s, the job is at attempt %s",
            namespace,
            name,
            gang.job_id,
            found,
            attempt,
        )
        uid = _metadata(existing).get("uid")
        await delete_object(
            kube,
            plural,
            namespace,
            name,
            job_id=gang.job_id,
            uid=uid if isinstance(uid, str) else None,
            grace_seconds=grace_period(existing),
        )
    else:
        log.warning(
            "pod %s/%s of job %s is of attempt %s, later than this gateway's %s; left alone",
            namespace,
            name,
            gang.job_id,
            found,
            attempt,
        )


def _attempt(value: object) -> int:
    """The attempt label as a number; -1 when missing or malformed (older than any attempt)."""
    return int(value) if isinstance(value, str) and value.isdigit() else -1
