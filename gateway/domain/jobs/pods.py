"""From a job spec to its pods: deterministic names and the requests admission places.

Invariants: ``pod_name`` is a pure function of (job name, role, index), always a DNS-1035 label of
at most 63 characters, and distinct for distinct inputs of one job (a long name is cut and given a
hash suffix of the full name); ``pod_requests`` lists every pod of the gang in role, index order,
and is the one way from a spec to pods (a stored spec is read with ``spec.from_document``
first).
"""

from __future__ import annotations

import hashlib

from gateway.domain.jobs.spec import JobSpec, ReplicaSpec
from gateway.domain.scheduling.nodes import PodRequest, Toleration

MAX_NAME = 63
SPREAD_ROLES = frozenset({"ps"})


def pod_name(job: str, role: str, index: int) -> str:
    """``<job>-<role>-<index>``, shortened with a hash suffix when longer than 63 characters."""
    full = f"{job}-{role}-{index}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    tail = f"-{role}-{index}-{digest}"
    head = job[: MAX_NAME - len(tail)].rstrip("-")
    return f"{head}{tail}"


def _tolerations(replica: ReplicaSpec) -> tuple[Toleration, ...]:
    return tuple(
        Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
        for t in replica.tolerations
    )


def pod_requests(spec: JobSpec) -> tuple[PodRequest, ...]:
    pods: list[PodRequest] = []
    for replica in spec.replicas:
        selector = dict(replica.node_selector)
        tolerations = _tolerations(replica)
        for index in range(replica.count):
            pods.append(
                PodRequest(
                    name=pod_name(spec.name, replica.role, index),
                    role=replica.role,
                    index=index,
                    cpu_millis=replica.resources.cpu_millis,
                    memory_bytes=replica.resources.memory_bytes,
                    gpu_shares=replica.resources.gpu_shares,
                    node_selector=selector,
                    tolerations=tolerations,
                    spread=replica.role in SPREAD_ROLES,
                    extended=replica.resources.extended,
                )
            )
    return tuple(pods)
