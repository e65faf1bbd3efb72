"""The job spec as typed values: what a checked spec is, and the document Muster stores for it.

``gateway.domain.jobs.check`` turns a client's JSON into these values; ``to_document`` turns
them back into JSON.

Invariants:
- Values are frozen and keyword-only; a ``JobSpec`` is complete: every default is filled in,
  every amount is an integer in Muster's units (see ``gateway.domain.resources``), and replicas
  are in a stable order (by role name). One default waits for the submit: a spec that names a
  ``priority_class`` and no ``priority`` has priority None until its submit gives it the
  class's value (``gateway.domain.scheduling.priority.resolve``); a stored spec always has one.
- ``to_document`` of a ``JobSpec`` is a spec that ``check_job_spec`` accepts and maps to an equal
  ``JobSpec``, and ``from_document`` reads it back to an equal ``JobSpec`` without the check:
  what is stored can always be read back, one way. A document stored before a replica had a
  ``termination_grace_period_seconds`` reads back as None there (the gateway's default), and one
  stored before replicas had pod fields (``gateway.domain.jobs.pod_fields``) reads back without
  any.
- A replica's grace period (how long it has between SIGTERM and SIGKILL when it is stopped) is
  its own, else the gateway's default, and never more than the most an admin allows:
  ``TerminationGrace.of`` is that rule's one home, for every backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.domain.jobs.pod_fields import (
    PodFields,
    canonical,
    parsed,
    pod_fields_document,
    pod_fields_of,
)
from gateway.domain.resources import (
    GPU_SHARES_PER_DEVICE,
    Resources,
    cached_cpu_millis,
    cached_gpu_shares,
    cached_memory_bytes,
    extended_amount,
    format_cpu,
    format_extended,
    format_gpu,
    format_memory,
    sum_extended,
    times,
)

DEFAULT_CPU = "1"
DEFAULT_MEMORY = "1Gi"
DEFAULT_PORT = 2222
PRIORITY_RANGE = (-1000, 1000)
#: The grace period of a replica that gives none (Kubernetes' own default) and the most a replica
#: may ask for, unless settings say otherwise.
#: Seconds after a job finished when its Kubernetes objects are removed, by default (a week).
DEFAULT_TTL_SECONDS_AFTER_FINISHED = 7 * 24 * 3600
DEFAULT_TERMINATION_GRACE_SECONDS = 30
MAX_TERMINATION_GRACE_SECONDS = 300


class Framework(StrEnum):
    TENSORFLOW = "tensorflow"
    PYTORCH = "pytorch"
    GENERIC = "generic"


class RestartPolicy(StrEnum):
    NEVER = "Never"
    ON_FAILURE = "OnFailure"
    ALWAYS = "Always"
    EXIT_CODE = "ExitCode"


class CleanPodPolicy(StrEnum):
    RUNNING = "Running"
    ALL = "All"
    NONE = "None"


class SuccessPolicy(StrEnum):
    DEFAULT = "Default"
    ALL_WORKERS = "AllWorkers"


class CallbackEvent(StrEnum):
    ADMITTED = "job.admitted"
    RUNNING = "job.running"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"
    REQUEUED = "job.requeued"
    PREEMPTED = "job.preempted"


DEFAULT_CALLBACK_EVENTS = (CallbackEvent.SUCCEEDED, CallbackEvent.FAILED, CallbackEvent.CANCELLED)


@dataclass(frozen=True, kw_only=True, slots=True)
class SpecLimits:
    """Caps that come from settings, passed in so the core reads no configuration itself."""

    max_replicas: int = 512
    max_priority: int = PRIORITY_RANGE[1]
    max_termination_grace_seconds: int = MAX_TERMINATION_GRACE_SECONDS


@dataclass(frozen=True, kw_only=True, slots=True)
class Toleration:
    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplicaSpec:
    role: str
    count: int
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    resources: Resources
    exclusive_cpus: bool = False
    restart_policy: RestartPolicy = RestartPolicy.NEVER
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    port: int = DEFAULT_PORT
    #: Seconds between SIGTERM and SIGKILL when the replica is stopped; None: the gateway's.
    termination_grace_period_seconds: int | None = None
    #: Volumes, mounts, service account, security contexts, init containers... (none by default).
    pod: PodFields = field(default_factory=PodFields)
    #: Kubernetes' NodeAffinity object, as canonical JSON text: placement honours its required
    #: terms, and the pods carry it merged with Muster's pinning. None: none.
    node_affinity: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TerminationGrace:
    """How long a stopped replica has between SIGTERM and SIGKILL: its own grace period, else
    ``default_seconds``, and never more than ``max_seconds``. Both come from settings and are
    passed to the backends, which apply this as a replica starts (a Kubernetes pod carries it in
    its spec, a local replica in its record) and honour what the replica started with when it
    is stopped: lowering the cap caps the replicas of jobs submitted before, as they start."""

    default_seconds: int = DEFAULT_TERMINATION_GRACE_SECONDS
    max_seconds: int = MAX_TERMINATION_GRACE_SECONDS

    def of(self, replica: ReplicaSpec) -> int:
        asked = replica.termination_grace_period_seconds
        return min(self.default_seconds if asked is None else asked, self.max_seconds)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunPolicy:
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ready_timeout_seconds: int = 600
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.RUNNING
    success_policy: SuccessPolicy = SuccessPolicy.DEFAULT
    #: Seconds after the job finished when its Kubernetes objects (the parent ConfigMap, and
    #: through it what the clean-pod policy kept) are deleted; None: the gateway's default.
    ttl_seconds_after_finished: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Callback:
    url: str
    events: tuple[CallbackEvent, ...] = DEFAULT_CALLBACK_EVENTS


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSpec:
    name: str
    tenant: str
    framework: Framework
    priority: int | None = 0
    #: The priority class the job names (None: none); its value becomes the job's priority.
    priority_class: str | None = None
    replicas: tuple[ReplicaSpec, ...]
    run_policy: RunPolicy = field(default_factory=RunPolicy)
    callback: Callback | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def pod_count(self) -> int:
        return sum(replica.count for replica in self.replicas)

    def replica(self, role: str) -> ReplicaSpec | None:
        return next((r for r in self.replicas if r.role == role), None)

    def total(self) -> Resources:
        """What the whole gang asks for, summed over every pod."""
        return Resources(
            cpu_millis=sum(r.resources.cpu_millis * r.count for r in self.replicas),
            memory_bytes=sum(r.resources.memory_bytes * r.count for r in self.replicas),
            gpu_shares=sum(r.resources.gpu_shares * r.count for r in self.replicas),
            extended=sum_extended(times(r.resources.extended, r.count) for r in self.replicas),
        )


def to_document(spec: JobSpec) -> dict[str, Any]:
    """The spec as JSON with every default filled in: what Muster stores and returns. A priority
    left to the class (None, before the submit resolves it) is left out."""
    priority = {} if spec.priority is None else {"priority": spec.priority}
    return {
        "name": spec.name,
        "tenant": spec.tenant,
        "framework": spec.framework.value,
        **priority,
        "priority_class": spec.priority_class,
        "replicas": {r.role: _replica_document(r) for r in spec.replicas},
        "run_policy": {
            "backoff_limit": spec.run_policy.backoff_limit,
            "active_deadline_seconds": spec.run_policy.active_deadline_seconds,
            "ready_timeout_seconds": spec.run_policy.ready_timeout_seconds,
            "clean_pod_policy": spec.run_policy.clean_pod_policy.value,
            "success_policy": spec.run_policy.success_policy.value,
            "ttl_seconds_after_finished": spec.run_policy.ttl_seconds_after_finished,
        },
        "callback": None
        if spec.callback is None
        else {"url": spec.callback.url, "events": [e.value for e in spec.callback.events]},
        "labels": dict(spec.labels),
    }


def from_document(document: Mapping[str, Any]) -> JobSpec:
    """The ``JobSpec`` a stored document holds: the one reader of stored specs.

    A stored document is ``to_document``'s output for a spec checked at submit, so it is read,
    not checked again (the reconciler and every admission cycle read specs; a check is for
    untrusted input). Quantities are parsed through the memo of ``gateway.domain.resources``.
    A document stored before priority classes has no ``priority_class``: it names none.
    """
    run = document["run_policy"]
    callback = document["callback"]
    return JobSpec(
        name=document["name"],
        tenant=document["tenant"],
        framework=Framework(document["framework"]),
        priority=document.get("priority"),
        priority_class=document.get("priority_class"),
        replicas=tuple(
            _replica_of(role, document["replicas"][role]) for role in sorted(document["replicas"])
        ),
        run_policy=RunPolicy(
            backoff_limit=run["backoff_limit"],
            active_deadline_seconds=run["active_deadline_seconds"],
            ready_timeout_seconds=run["ready_timeout_seconds"],
            clean_pod_policy=CleanPodPolicy(run["clean_pod_policy"]),
            success_policy=SuccessPolicy(run["success_policy"]),
            # Absent from documents stored before jobs had a TTL: the gateway's default.
            ttl_seconds_after_finished=run.get("ttl_seconds_after_finished"),
        ),
        callback=None
        if callback is None
        else Callback(
            url=callback["url"], events=tuple(CallbackEvent(e) for e in callback["events"])
        ),
        labels=tuple(sorted(document["labels"].items())),
    )


_OWN_RESOURCES = frozenset({"cpu", "memory", "gpu"})


def _replica_of(role: str, doc: Mapping[str, Any]) -> ReplicaSpec:
    resources = doc["resources"]
    return ReplicaSpec(
        role=role,
        count=doc["count"],
        image=doc["image"],
        command=tuple(doc["command"]),
        args=tuple(doc["args"]),
        env=tuple(sorted(doc["env"].items())),
        resources=Resources(
            cpu_millis=cached_cpu_millis(resources["cpu"]),
            memory_bytes=cached_memory_bytes(resources["memory"]),
            gpu_shares=cached_gpu_shares(resources["gpu"]),
            extended=tuple(
                (name, extended_amount(name, resources[name]))
                for name in sorted(resources)
                if name not in _OWN_RESOURCES
            ),
        ),
        exclusive_cpus=doc["exclusive_cpus"],
        restart_policy=RestartPolicy(doc["restart_policy"]),
        node_selector=tuple(sorted(doc["node_selector"].items())),
        tolerations=tuple(
            Toleration(
                key=t.get("key"),
                operator=t.get("operator", "Equal"),
                value=t.get("value"),
                effect=t.get("effect"),
                toleration_seconds=t.get("tolerationSeconds"),
            )
            for t in doc["tolerations"]
        ),
        port=doc["port"],
        # Absent from documents stored before replicas had a grace period of their own.
        termination_grace_period_seconds=doc.get("termination_grace_period_seconds"),
        # Absent from documents stored before replicas had pod fields, and when none is set.
        pod=pod_fields_of(doc),
        node_affinity=None if doc.get("node_affinity") is None else canonical(doc["node_affinity"]),
    )


def _replica_document(r: ReplicaSpec) -> dict[str, Any]:
    return {
        "count": r.count,
        "image": r.image,
        "command": list(r.command),
        "args": list(r.args),
        "env": dict(r.env),
        "resources": {
            "cpu": format_cpu(r.resources.cpu_millis),
            "memory": format_memory(r.resources.memory_bytes),
            "gpu": format_gpu(r.resources.gpu_shares),
            **{name: format_extended(name, amount) for name, amount in r.resources.extended},
        },
        "exclusive_cpus": r.exclusive_cpus,
        "restart_policy": r.restart_policy.value,
        "node_selector": dict(r.node_selector),
        "tolerations": [_toleration_document(t) for t in r.tolerations],
        "port": r.port,
        "termination_grace_period_seconds": r.termination_grace_period_seconds,
        **pod_fields_document(r.pod),
        **({} if r.node_affinity is None else {"node_affinity": parsed(r.node_affinity)}),
    }


def _toleration_document(t: Toleration) -> dict[str, Any]:
    doc: dict[str, Any] = {"operator": t.operator}
    for key, value in (
        ("key", t.key),
        ("value", t.value),
        ("effect", t.effect),
        ("tolerationSeconds", t.toleration_seconds),
    ):
        if value is not None:
            doc[key] = value
    return doc


def whole_devices(shares: int) -> int:
    """The number of whole devices a request of ``shares`` takes (0 for a fraction)."""
    return shares // GPU_SHARES_PER_DEVICE if shares % GPU_SHARES_PER_DEVICE == 0 else 0
