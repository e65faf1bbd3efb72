"""The admission queue as values: what one admission cycle reads and what it decides.

A `Snapshot` holds the nodes, Muster's holdings, the tenants with their quota and usage, the pending
jobs and the time; `admission.plan()` turns it into an `AdmissionPlan`. The database layer maps rows
to and from these values (`gateway.db.admission`).

Invariants of the values (`admission.py` keeps those of the decisions):

- Every value is frozen: a snapshot is never changed by planning it.
- Resource amounts are integers in Muster's units: CPU in millicores, memory in bytes, GPU in
  shares (`nodes.SHARES_PER_DEVICE` to a device).
- A job's pods are in the job's pod order, and an `Admission` lists its placements in that order.
- Queue positions in a `QueuedAt` are 1-based.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.domain.resources import Extended, Resources, sum_extended
from gateway.domain.scheduling.cohorts import CohortTerms
from gateway.domain.scheduling.nodes import GpuSlice, Holding, Node, PodRequest
from gateway.domain.scheduling.quota import Quota, TenantUsage


class PendingReason(StrEnum):
    WAITING_FOR_QUOTA = "WaitingForQuota"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    FRAGMENTED = "Fragmented"
    RESERVED = "Reserved"
    BACKOFF_AFTER_EVICTION = "BackoffAfterEviction"
    # It would fit once running gangs are preempted for it, and they are not preemptible yet.
    WAITING_FOR_RECLAIM = "WaitingForReclaim"
    # Not yet considered: earlier jobs of its tenant come first (see admission.py).
    QUEUED = "Queued"


class PreemptionPolicy(StrEnum):
    """Whether a tenant's waiting jobs may preempt its own running gangs."""

    NEVER = "never"
    LOWER_PRIORITY = "lower_priority"


#: Blocked jobs a cycle considers past the tenants' heads (``admission.py``).
DEFAULT_BACKFILL = 256


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantState:
    """A tenant as admission sees it: its fair-share weight, quota (nominal, in a cohort), what
    it holds now, and its cohort membership (None: it holds at most its quota)."""

    name: str
    weight: float = 1.0
    quota: Quota
    usage: TenantUsage = field(default_factory=TenantUsage)
    cohort: CohortTerms | None = None
    preemption_policy: PreemptionPolicy = PreemptionPolicy.NEVER


@dataclass(frozen=True, kw_only=True, slots=True)
class PendingJob:
    id: str
    tenant: str
    priority: int = 0
    submitted_at: float
    not_before: float | None = None  # set after an eviction: backoff until then
    pods: tuple[PodRequest, ...]
    # When the job last entered the queue (reset on requeue); starvation counts from here.
    # None means submitted_at.
    queued_since: float | None = None
    # A job of a non-preemptible priority class is never preempted, so it never borrows either.
    preemptible: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class Snapshot:
    now: float
    nodes: tuple[Node, ...]
    holdings: tuple[Holding, ...] = ()
    tenants: Mapping[str, TenantState]
    # The pending jobs, for a plan from scratch; the leader's cycles pass their AdmissionQueue.
    pending: tuple[PendingJob, ...] = ()
    starvation_seconds: float
    backfill: int = DEFAULT_BACKFILL
    # The admitted and running gangs, for preemption (their holdings are in ``holdings`` too).
    running: tuple[RunningGang, ...] = ()
    # A gang admitted less than this long ago is not preempted yet.
    min_runtime_seconds: float = 0.0


#: No resource at all.
NOTHING = Resources(cpu_millis=0, memory_bytes=0, gpu_shares=0)


@dataclass(frozen=True, kw_only=True, slots=True)
class Placement:
    """Where one pod of an admitted gang runs, and what it holds there.

    The one shape of a placement from the plan to the backends: admission makes it, the database
    stores it (``placements`` rows) and reads it back, the reconciler hands it to the runtime, and
    the manifests and the local backend build a replica from it.
    """

    pod_name: str
    role: str
    index: int
    node: str
    cpu_millis: int
    memory_bytes: int
    gpu: tuple[GpuSlice, ...] = ()
    #: What of it lies above the tenant's nominal quota, on quota its cohort lent.
    borrowed: Resources = NOTHING
    #: Extended resources it holds on the node (``rdma/hca``...), by name.
    extended: Extended = ()


class PreemptionReason(StrEnum):
    """Why a gang was preempted (the metrics' label, the event's data)."""

    RECLAIM = "Reclaim"  # its tenant borrowed quota that a cohort member reclaimed
    PRIORITY = "Priority"  # a job of its own tenant with a higher priority needed the room


@dataclass(frozen=True, kw_only=True, slots=True)
class RunningGang:
    """An admitted or running job as preemption sees it: what it holds, where, and how much of
    it is borrowed (``Placement.borrowed``)."""

    job_id: str
    tenant: str
    priority: int = 0
    preemptible: bool = True
    admitted_at: float
    placements: tuple[Placement, ...]

    @property
    def demand(self) -> Resources:
        return Resources(
            cpu_millis=sum(p.cpu_millis for p in self.placements),
            memory_bytes=sum(p.memory_bytes for p in self.placements),
            gpu_shares=sum(s.shares for p in self.placements for s in p.gpu),
            extended=sum_extended(p.extended for p in self.placements),
        )

    @property
    def borrows(self) -> bool:
        """Whether any of its pods holds quota its cohort lent."""
        return any(p.borrowed != NOTHING for p in self.placements)


@dataclass(frozen=True, kw_only=True, slots=True)
class Preemption:
    """A gang to stop so that ``preemptor`` (admitted in the same plan) fits."""

    job_id: str
    tenant: str
    preemptor: str
    preemptor_tenant: str
    reason: PreemptionReason


@dataclass(frozen=True, kw_only=True, slots=True)
class Admission:
    job_id: str
    tenant: str
    placements: tuple[Placement, ...]  # in the job's pod order


@dataclass(frozen=True, kw_only=True, slots=True)
class Waiting:
    """A job a cycle considered and did not admit, and why."""

    job_id: str
    reason: PendingReason
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class QueuedAt:
    """Where a queued job stands (1-based, overall and among its tenant's jobs); for a job that
    no cycle considers now (in backoff), the reason it waits."""

    job_id: str
    position: int
    tenant_position: int
    reason: PendingReason | None = None
    message: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class AdmissionPlan:
    admitted: tuple[Admission, ...]  # in the order they were admitted
    waiting: tuple[Waiting, ...]  # the jobs considered and not admitted, in the order taken
    reserved_nodes: tuple[str, ...] = ()  # sorted
    reserved_for: str | None = None  # the starving job the reservation holds nodes for
    # Gangs to stop, each for a preemptor that ``admitted`` holds, in the order decided.
    preempted: tuple[Preemption, ...] = ()
