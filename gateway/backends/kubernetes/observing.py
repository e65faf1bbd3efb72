"""What a Muster pod is doing, read from the Pod object: the phase the lifecycle decisions use.

``pod_status`` maps one pod (and the nodes as listed) to a ``PodStatus``:

- phase Pending, Running, Succeeded, Failed map to the ReplicaPhase of the same name; the exit
  code is the first terminated container's (``status.containerStatuses[*].state.terminated``),
  0 for a pod that succeeded without one;
- a pod that failed with no container exit code at all was failed by its node, not by its
  program (kubelet eviction under pressure, node shutdown, admission refusing it): it is reported
  MISSING on a lost node, so the gang is requeued as after a node loss rather than failed;
- phase Unknown (the node stopped reporting) is RUNNING on a lost node;
- the node is the pod's ``spec.nodeName``, or its planned node (the ``muster.dev/node``
  annotation) while unbound; it is lost when it is not listed or not Ready.

Pods that are terminating (``deletionTimestamp`` set) are left out: Muster (or someone) already
deleted them, and reporting them would make a restarted replica look failed twice. The reconciler
sees the replica missing and creates it once the name is free.

Pods without ``muster.dev/job-id`` are not Muster's and are left out; a missing or malformed
``muster.dev/attempt`` reads as -1, older than any attempt, so the pod is replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.backends.base import PodStatus
from gateway.domain.lifecycle.decisions import ReplicaPhase
from gateway.domain.manifests.kubernetes import (
    LABEL_ATTEMPT,
    LABEL_JOB_ID,
    LABEL_MANAGED,
    MANAGER,
    NODE_ANNOTATION,
)
from gateway.domain.scheduling.nodes import Node

__all__ = ["exit_code", "pod_node", "pod_status", "slim_pod"]

_PHASES = {
    "Pending": ReplicaPhase.PENDING,
    "Running": ReplicaPhase.RUNNING,
    "Succeeded": ReplicaPhase.SUCCEEDED,
    "Failed": ReplicaPhase.FAILED,
}


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: object) -> Iterable[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def exit_code(pod: Mapping[str, Any]) -> int | None:
    """The exit code of the pod's first terminated container, or None when none has ended."""
    for container in _items(_mapping(pod.get("status")).get("containerStatuses")):
        terminated = _mapping(_mapping(container.get("state")).get("terminated"))
        code = terminated.get("exitCode")
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    return None


def pod_node(pod: Mapping[str, Any]) -> str | None:
    """The node the pod is bound to, else the node Muster planned for it."""
    node = _mapping(pod.get("spec")).get("nodeName")
    if isinstance(node, str) and node:
        return node
    planned = _mapping(_mapping(pod.get("metadata")).get("annotations")).get(NODE_ANNOTATION)
    return planned if isinstance(planned, str) and planned else None


def pod_status(pod: Mapping[str, Any], nodes: Mapping[str, Node]) -> PodStatus | None:
    """The PodStatus of a Muster pod; None for a pod that is not Muster's or is terminating."""
    metadata = _mapping(pod.get("metadata"))
    labels = _mapping(metadata.get("labels"))
    job_id, name = labels.get(LABEL_JOB_ID), metadata.get("name")
    if labels.get(LABEL_MANAGED) != MANAGER or not isinstance(job_id, str) or not job_id:
        return None
    if not isinstance(name, str) or metadata.get("deletionTimestamp"):
        return None
    raw_attempt = labels.get(LABEL_ATTEMPT)
    attempt = int(raw_attempt) if isinstance(raw_attempt, str) and raw_attempt.isdigit() else -1
    node = pod_node(pod)
    listed = nodes.get(node) if node is not None else None
    # Unbound and without a planned node cannot happen for Muster's pods; it is no node loss.
    node_ready = listed.ready if listed is not None else node is None
    raw_phase = _mapping(pod.get("status")).get("phase") or "Pending"
    code = exit_code(pod)
    if raw_phase == "Unknown":
        phase, node_ready = ReplicaPhase.RUNNING, False
    elif raw_phase == "Failed" and code is None:
        phase, node_ready = ReplicaPhase.MISSING, False
    else:
        phase = _PHASES.get(raw_phase, ReplicaPhase.PENDING)
    if phase is ReplicaPhase.SUCCEEDED and code is None:
        code = 0
    if phase not in (ReplicaPhase.SUCCEEDED, ReplicaPhase.FAILED):
        code = None
    return PodStatus(
        job_id=job_id,
        name=name,
        attempt=attempt,
        phase=phase,
        exit_code=code,
        node_ready=node_ready,
    )


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """What Muster keeps of one of its pods in memory: the fields ``pod_status``, the grace
    period and the delete read, and nothing else; None for an object without a name or
    namespace."""
    metadata = _mapping(pod.get("metadata"))
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    spec, status = _mapping(pod.get("spec")), _mapping(pod.get("status"))
    annotations = _mapping(metadata.get("annotations"))
    kept_metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": metadata.get("uid"),
        "labels": dict(_mapping(metadata.get("labels"))),
    }
    if NODE_ANNOTATION in annotations:
        kept_metadata["annotations"] = {NODE_ANNOTATION: annotations[NODE_ANNOTATION]}
    if metadata.get("deletionTimestamp"):
        kept_metadata["deletionTimestamp"] = metadata["deletionTimestamp"]
    kept_spec = {
        key: spec[key] for key in ("nodeName", "terminationGracePeriodSeconds") if key in spec
    }
    code = exit_code(pod)
    kept_status: dict[str, Any] = {"phase": status.get("phase")}
    if code is not None:
        kept_status["containerStatuses"] = [{"state": {"terminated": {"exitCode": code}}}]
    return {"metadata": kept_metadata, "spec": kept_spec, "status": kept_status}
