"""Deleting one object of a job, and only if it is that job's.

Pods and Services are named ``<job>-<role>-<index>``, so another job of the same name in the same
namespace could own an object of that name. A deletion therefore checks the object's
``muster.dev/job-id`` label first and then deletes with a uid precondition, so an object that was
replaced in between (by another job, or by this job's next attempt) is never the one removed.

Invariants: deleting what is gone succeeds (404); a precondition that no longer holds (409)
also succeeds, since the object meant is gone; another job's object is left alone.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.backends.kubernetes.client import Kube
from gateway.domain.manifests.kubernetes import LABEL_JOB_ID
from gateway.errors import KubernetesConflict, KubernetesNotFound

__all__ = ["delete_object", "object_path"]

log = logging.getLogger(__name__)


def object_path(plural: str, namespace: str, name: str | None = None) -> str:
    """The core/v1 API path of a namespaced collection, or of one object in it."""
    path = f"/api/v1/namespaces/{namespace}/{plural}"
    return path if name is None else f"{path}/{name}"


async def delete_object(
    kube: Kube, plural: str, namespace: str, name: str, *, job_id: str, uid: str | None = None
) -> None:
    """Delete ``plural/name`` in ``namespace`` if it belongs to ``job_id``.

    ``uid`` is the object as last seen (from a listing); without it the object is read first.
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
    options: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "propagationPolicy": "Background",
    }
    if uid:
        options["preconditions"] = {"uid": uid}
    try:
        await kube.delete(path, options)
    except KubernetesNotFound:
        return
    except KubernetesConflict:
        # The uid precondition failed: the object meant is gone and a new one holds the name.
        log.info("%s %s/%s was replaced before it could be deleted", plural, namespace, name)
