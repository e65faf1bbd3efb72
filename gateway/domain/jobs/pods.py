"""From a job spec to its pods: deterministic names and the requests admission places.

Invariants: ``pod_name`` is a pure function of (job name, role, index), always a DNS-1035 label of
at most 63 characters, and distinct for distinct inputs of one job (a long name is cut and given a
hash suffix of the full name); ``pod_requests`` lists every pod of the gang in role, index order,
and is the one way from a spec to pods (a stored spec is read with ``spec.from_document``
first).
"""

from __future__ import annotations

import functools
import hashlib

from gateway.domain.jobs.pod_fields import parsed
from gateway.domain.jobs.spec import JobSpec, ReplicaSpec
from gateway.domain.scheduling.nodes import PodRequest, Requirement, Term, Toleration

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


@functools.lru_cache(maxsize=256)
def required_terms(node_affinity: str | None) -> tuple[Term, ...]:
    """The required nodeSelectorTerms of a replica's node affinity (canonical text, checked at
    submit), as placement matches them; none without one. Remembered: a cycle reads every
    queued job's spec, and jobs repeat a few affinities."""
    if node_affinity is None:
        return ()
    required = parsed(node_affinity).get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    return tuple(
        tuple(
            Requirement(
                key=r["key"],
                operator=r["operator"],
                values=tuple(r.get("values") or ()),
                field=kind == "matchFields",
            )
            for kind in ("matchExpressions", "matchFields")
            for r in term.get(kind) or ()
        )
        for term in required.get("nodeSelectorTerms") or ()
    )


def pod_requests(spec: JobSpec) -> tuple[PodRequest, ...]:
    pods: list[PodRequest] = []
    for replica in spec.replicas:
        selector = dict(replica.node_selector)
        tolerations = _tolerations(replica)
        affinity = required_terms(replica.node_affinity)
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
                    affinity=affinity,
                )
            )
    return tuple(pods)
