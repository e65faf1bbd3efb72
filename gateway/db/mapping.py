"""Rows to domain values: one function per value type, the one place each kind of row becomes
a value of ``gateway.domain``.

Every module of ``gateway.db`` maps what it reads through these before it returns, so the API,
the loops and webhook delivery see values, never rows (a module may still read its own
bookkeeping columns: a page's seq, a row's attempt, an Idempotency-Key's request hash). A row is
whatever the statement gave: a SQLAlchemy ``RowMapping``, an asyncpg ``Record``, or a webhook
snapshot read back (``gateway.db.webhooks.job_from_snapshot``); each function names the columns
it reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.domain.access import Grant, GrantKind, Role
from gateway.domain.jobs.policy import PodPolicy, policy_of
from gateway.domain.jobs.spec import CallbackEvent, CleanPodPolicy, Framework
from gateway.domain.lifecycle.records import ActiveJob, Job, JobEvent, PodOwner, QueuePlace
from gateway.domain.lifecycle.states import EventType, JobState
from gateway.domain.resources import Extended, Resources
from gateway.domain.scheduling.cohorts import CohortTerms, Limits, Standing
from gateway.domain.scheduling.nodes import GpuSlice, Holding
from gateway.domain.scheduling.priority import PriorityClass
from gateway.domain.scheduling.queueing import Placement, PreemptionPolicy, TenantState
from gateway.domain.scheduling.quota import RESOURCES, Quota, TenantUsage
from gateway.domain.tenants import (
    AuditAction,
    AuditEntry,
    Cohort,
    PriorityClassRecord,
    Tenant,
    TenantSettings,
    TenantStatus,
)
from gateway.domain.webhooks import AttemptOutcome, Delivery, DeliveryAttempt, DeliveryStatus

#: A row of any statement: its columns by name.
Row = Mapping[Any, Any]

# -- jobs ----------------------------------------------------------------------------------------

# Members by stored value: a dict lookup costs a tenth of the enum's call, and every submit's
# answer is made here. An unknown value raises KeyError.
_STATES = {state.value: state for state in JobState}
_FRAMEWORKS = {framework.value: framework for framework in Framework}

#: A job's priority class and whether it may be preempted: read with
#: ``gateway.db.transitions.JOB_COLUMNS`` wherever a whole job is read.
CLASS_COLUMNS = "priority_class, preemptible"


def job_of(
    row: Row,
    *,
    spec: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    classed: tuple[str | None, bool] | None = None,
) -> Job:
    """A job row (``gateway.db.transitions.JOB_COLUMNS`` and ``CLASS_COLUMNS``, or a webhook
    snapshot's columns).

    A submit's row comes back without the spec, labels and priority class it wrote: its caller
    passes them (``classed``: the class's name, or None, and whether the job is preemptible).
    """
    state = _STATES[row["state"]]
    position = row["queue_position"]
    priority_class, preemptible = (
        (row["priority_class"], row["preemptible"]) if classed is None else classed
    )
    return Job(
        id=str(row["id"]),
        tenant=row["tenant"],
        name=row["name"],
        framework=_FRAMEWORKS[row["framework"]],
        state=state,
        reason=row["reason"],
        message=row["message"],
        priority=row["priority"],
        priority_class=priority_class,
        preemptible=preemptible,
        attempt=row["attempt"],
        labels=row["labels"] if labels is None else labels,
        spec=row["spec"] if spec is None else spec,
        submitted_by=row["submitted_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        admitted_at=row["admitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        # A position is of the last cycle that saw the job queued; it means nothing once the
        # job left the queue (a queued job that failed keeps the columns).
        queue=None
        if state is not JobState.QUEUED or position is None
        else QueuePlace(position=position, tenant_position=row["tenant_queue_position"]),
    )


def job_event_of(row: Row) -> JobEvent:
    """A job_events row (id, job_id, tenant, type, from_state, to_state, reason, message, actor,
    data, created_at)."""
    from_state, to_state = row["from_state"], row["to_state"]
    return JobEvent(
        id=row["id"],
        job_id=str(row["job_id"]),
        tenant=row["tenant"],
        type=EventType(row["type"]),
        from_state=None if from_state is None else JobState(from_state),
        to_state=None if to_state is None else JobState(to_state),
        reason=row["reason"],
        message=row["message"],
        actor=row["actor"],
        data=row["data"],
        created_at=row["created_at"],
    )


def active_job_of(row: Row, placements: Sequence[Placement]) -> ActiveJob:
    """An admitted or running job's row (with its tenant's namespace) and its live placements."""
    return ActiveJob(
        id=str(row["id"]),
        name=row["name"],
        tenant=row["tenant"],
        state=JobState(row["state"]),
        attempt=row["attempt"],
        restarts=row["restarts"],
        spec=row["spec"],
        admitted_at=row["admitted_at"],
        started_at=row["started_at"],
        namespace=row["namespace"],
        placements=tuple(placements),
    )


def pod_owner_of(row: Row) -> PodOwner:
    """A job's id, state and attempt, and its spec's clean_pod_policy."""
    policy = row["clean_pod_policy"]
    return PodOwner(
        id=str(row["id"]),
        state=JobState(row["state"]),
        attempt=row["attempt"],
        # A stored spec always has one (to_document writes every default); if not, the default.
        clean_pod_policy=CleanPodPolicy.RUNNING if policy is None else CleanPodPolicy(policy),
    )


# -- placements ----------------------------------------------------------------------------------


def gpu_slices(raw: Sequence[Mapping[str, int]]) -> tuple[GpuSlice, ...]:
    """A placements row's gpu column: ``[{"device": d, "shares": s}, ...]``."""
    return tuple(GpuSlice(device=int(s["device"]), shares=int(s["shares"])) for s in raw)


def placement_of(row: Row) -> Placement:
    """A placements row as the plan made it."""
    return Placement(
        pod_name=row["pod_name"],
        role=row["role"],
        index=row["replica_index"],
        node=row["node"],
        cpu_millis=row["cpu_millis"],
        memory_bytes=row["memory_bytes"],
        gpu=gpu_slices(row["gpu"]),
        borrowed=Resources(
            cpu_millis=row["borrowed_cpu_millis"],
            memory_bytes=row["borrowed_memory_bytes"],
            gpu_shares=row["borrowed_gpu_shares"],
        ),
        extended=extended_of(row["extended"]),
    )


def extended_of(raw: Mapping[str, Any] | None) -> Extended:
    """A JSON object of extended amounts (``{"rdma/hca": 1}``) as Muster's sorted pairs."""
    if not raw:
        return ()
    return tuple(sorted((str(name), int(amount)) for name, amount in raw.items() if amount))


def holding_of(row: Row) -> Holding:
    """What a live placements row holds on its node."""
    return Holding(
        node=row["node"],
        cpu_millis=row["cpu_millis"],
        memory_bytes=row["memory_bytes"],
        gpu=gpu_slices(row["gpu"]),
        extended=extended_of(row["extended"]),
    )


# -- tenants -------------------------------------------------------------------------------------

#: The tenants column of each quota resource (``gateway.domain.scheduling.quota.RESOURCES``).
QUOTA_COLUMNS = {resource: f"quota_{resource}" for resource in RESOURCES}


def quota_of(row: Row) -> Quota:
    """A tenants row's quota."""
    return Quota(
        cpu_millis=row[QUOTA_COLUMNS["cpu_millis"]],
        memory_bytes=row[QUOTA_COLUMNS["memory_bytes"]],
        gpu_shares=row[QUOTA_COLUMNS["gpu_shares"]],
        max_running_jobs=row["max_running_jobs"],
        max_queued_jobs=row["max_queued_jobs"],
        extended=tuple(sorted((str(n), int(v)) for n, v in row["quota_extended"].items())),
    )


def usage_of(row: Row) -> TenantUsage:
    """What a ``TENANTS_WITH_USAGE`` row says the tenant holds now."""
    return TenantUsage(
        cpu_millis=int(row["used_cpu"]),
        memory_bytes=int(row["used_memory"]),
        gpu_shares=int(row["used_gpu"]),
        running_jobs=int(row["running_jobs"]),
        extended=extended_of(row["used_extended"]),
    )


#: The tenants columns of a cohort member's limits, by kind and quota resource.
BORROWING_COLUMNS = {resource: f"borrowing_limit_{resource}" for resource in RESOURCES}
LENDING_COLUMNS = {resource: f"lending_limit_{resource}" for resource in RESOURCES}


def _limits_of(row: Row, columns: Mapping[str, str]) -> Limits:
    return Limits(**{resource: row[column] for resource, column in columns.items()})


def cohort_terms_of(row: Row) -> CohortTerms | None:
    """A tenants row's cohort and limits (cohort, borrowing_limit_*, lending_limit_*); None
    when it is in no cohort."""
    cohort = row["cohort"]
    if cohort is None:
        return None
    return CohortTerms(
        cohort=cohort,
        borrowing_limit=_limits_of(row, BORROWING_COLUMNS),
        lending_limit=_limits_of(row, LENDING_COLUMNS),
    )


def tenant_settings_of(row: Row) -> TenantSettings:
    """What an admin set on a tenants row, with ``priority_classes``, an array of the names of
    the classes it is granted (``gateway.db.tenants.tenant_columns``)."""
    return TenantSettings(
        namespace=row["namespace"],
        quota=quota_of(row),
        weight=float(row["weight"]),
        max_priority=row["max_priority"],
        cohort=cohort_terms_of(row),
        priority_classes=tuple(sorted(row["priority_classes"] or ())),
        preemption_policy=PreemptionPolicy(row["preemption_policy"]),
        pod_policy=pod_policy_of(row["pod_policy"]),
    )


def pod_policy_of(stored: str | Mapping[str, Any]) -> PodPolicy:
    """A tenants row's pod_policy (jsonb, which text statements read as text)."""
    return policy_of(orjson.loads(stored) if isinstance(stored, str) else stored)


def tenant_of(row: Row) -> Tenant:
    """A tenants row (``gateway.db.tenants.TENANT_COLUMNS``)."""
    return Tenant(
        name=row["name"],
        settings=tenant_settings_of(row),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def tenant_status_of(row: Row, standing: Standing) -> TenantStatus:
    """A ``TENANTS_WITH_USAGE`` row, with the tenant's standing in its cohort (which needs the
    other members' rows: ``gateway.domain.tenants.standings_of``)."""
    return TenantStatus(
        tenant=tenant_of(row),
        usage=usage_of(row),
        queued_jobs=int(row["queued_jobs"]),
        standing=standing,
    )


def tenant_state_of(row: Row) -> TenantState:
    """A ``TENANTS_WITH_USAGE`` row as admission sees the tenant."""
    return TenantState(
        name=row["name"],
        weight=float(row["weight"]),
        quota=quota_of(row),
        usage=usage_of(row),
        cohort=cohort_terms_of(row),
        preemption_policy=PreemptionPolicy(row["preemption_policy"]),
    )


def cohort_of(row: Row) -> Cohort:
    """A cohorts row (``gateway.db.cohorts.COHORT_COLUMNS``) with ``members``, an array of its
    members' names."""
    return Cohort(
        name=row["name"],
        description=row["description"],
        members=tuple(sorted(row["members"] or ())),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def priority_class_of(row: Row) -> PriorityClass:
    """A priority_classes row's name, value and preemptible."""
    return PriorityClass(name=row["name"], value=row["value"], preemptible=row["preemptible"])


def priority_class_record_of(row: Row) -> PriorityClassRecord:
    """A priority_classes row (``gateway.db.priority_classes.CLASS_COLUMNS``) with ``tenants``,
    an array of the names of the tenants it is granted to."""
    return PriorityClassRecord(
        priority_class=priority_class_of(row),
        description=row["description"],
        tenants=tuple(sorted(row["tenants"] or ())),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def audit_entry_of(row: Row) -> AuditEntry:
    """An audit_log row."""
    return AuditEntry(
        id=row["id"],
        actor=row["actor"],
        action=AuditAction(row["action"]),
        tenant=row["tenant"],
        cohort=row["cohort"],
        priority_class=row["priority_class"],
        before=row["before"],
        after=row["after"],
        created_at=row["created_at"],
    )


def grant_of(row: Row) -> Grant:
    """A tenant_grants row."""
    return Grant(
        tenant=row["tenant"], kind=GrantKind(row["kind"]), name=row["name"], role=Role(row["role"])
    )


# -- webhook deliveries --------------------------------------------------------------------------


def delivery_attempt_of(row: Row) -> DeliveryAttempt:
    """A webhook_attempts row."""
    return DeliveryAttempt(
        number=row["number"],
        attempted_at=row["attempted_at"],
        duration_ms=row["duration_ms"],
        status_code=row["status_code"],
        error=row["error"],
        outcome=AttemptOutcome(row["outcome"]),
    )


def delivery_of(row: Row, attempts: Sequence[DeliveryAttempt] = ()) -> Delivery:
    """A webhook_outbox row (``gateway.db.webhooks.DELIVERY_COLUMNS``) with its attempts."""
    return Delivery(
        id=str(row["id"]),
        job_id=str(row["job_id"]),
        event_type=CallbackEvent(row["event_type"]),
        url=row["url"],
        status=DeliveryStatus(row["status"]),
        attempt_count=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        delivered_at=row["delivered_at"],
        attempts=tuple(attempts),
    )
