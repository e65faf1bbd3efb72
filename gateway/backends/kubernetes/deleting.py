"""Deleting one object of a job, and only if it is that job's.

Pods and Services are named ``<job>-<role>-<index>``, so another job of the same name in the same
namespace could own an object of that name. A deletion therefore checks the object's
``muster.dev/job-id`` label first and then deletes with a uid precondition, so an object that was
replaced in between (by another job, or by this job's next attempt) is never the one removed.

A pod is deleted with ``gracePeriodSeconds`` set to its own ``spec.terminationGracePeriodSeconds``
(the replica's grace period, rendered into it at creation), as last seen in a listing or read
here: the API server then gives it exactly that, whatever default it would apply otherwise.
A pod whose grace is not known is deleted without one, and gets its own from the API server.

Invariants: deleting what is gone succeeds (404); a precondition that no longer holds (409)
also succeeds, since the object meant is gone; another job's object is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from gateway.backends.kubernetes.client import Kube
from gateway.domain.manifests.kubernetes import LABEL_JOB_ID
from gateway.errors import KubernetesConflict, KubernetesNotFound

__all__ = ["delete_object", "grace_period", "object_path"]

log = logging.getLogger(__name__)


def object_path(plural: str, namespace: str, name: str | None = None) -> str:
    """The core/v1 API path of a namespaced collection, or of one object in it."""
    path = f"/api/v1/namespaces/{namespace}/{plural}"
    return path if name is None else f"{path}/{name}"


def grace_period(obj: Mapping[str, Any]) -> int | None:
    """A pod's own ``spec.terminationGracePeriodSeconds``; None when it has none (or not a
    number of seconds)."""
    spec = obj.get("spec")
    seconds = spec.get("terminationGracePeriodSeconds") if isinstance(spec, Mapping) else None
    if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds >= 0:
        return seconds
    return None


async def delete_object(
    kube: Kube,
    plural: str,
    namespace: str,
    name: str,
    *,
    job_id: str,
    uid: str | None = None,
    grace_seconds: int | None = None,
) -> None:
    """Delete ``plural/name`` in ``namespace`` if it belongs to ``job_id``.

    ``uid`` is the object as last seen (from a listing), and ``grace_seconds`` a pod's own grace
    period as seen there; without ``uid`` the object is read first, and a pod's grace with it.
    """
    path = object_path(plural, namespace, name)
    if uid is None:
        try:
            existing = await kube.get(path)
        except KubernetesNotFound:
            return
        metadata: dict[str, Any] = existing.get("metadata") or {}
        owner = (metadata.get("labels") or {}).get(LABEL_JOB_ID)
        if owner != job_id:
            log.warning(
                "not deleting %s %s/%s for job %s: it belongs to %s",
                plural,
                namespace,
                name,
                job_id,
                f"job {owner}" if owner else "no Muster job",
            )
            return
        uid = metadata.get("uid")
        if grace_seconds is None:
            grace_seconds = grace_period(existing)
    options: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "propagationPolicy": "Background",
    }
    if uid:
        options["preconditions"] = {"uid": uid}
    if plural == "pods" and grace_seconds is not None:
        options["gracePeriodSeconds"] = grace_seconds
    try:
        await kube.delete(path, options)
    except KubernetesNotFound:
        return
    except KubernetesConflict:
        # The uid precondition failed: the object meant is gone and a new one holds the name.
        log.info("%s %s/%s was replaced before it could be deleted", plural, namespace, name)
