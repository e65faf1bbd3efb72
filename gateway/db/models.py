"""The schema, as SQLAlchemy 2 typed models. Alembic's migrations must produce exactly this.

Invariants kept by the database itself, so that no bug in the shell can break them:
- job states and reasons are check-constrained to the domain's enums;
- quotas, attempts and resource amounts are never negative, fair-share weights are positive, a
  tenant's max_priority lies within the job spec's priority range;
- tenant and job names are DNS labels; at most one live (non-terminal) job per tenant and name;
- an idempotency key is unique per tenant;
- job_events is append-only: a trigger refuses UPDATE (see the initial migration);
- every job_events row records ``txid``, the id of the transaction that wrote it (a column default,
  so no writer can forget it; rows older than migration 0007 hold 0). The event stream orders by
  (txid, id) and only reads below the oldest running transaction, so no event can commit behind
  a client's cursor (see ``gateway.db.event_stream.events_after``);
- a submitted job takes one of its tenant's queue slots (0 <= slot < max_queued_jobs, chosen when
  it is submitted); a partial unique index makes each slot held by at most one queued job, so a
  tenant never has more than max_queued_jobs submitted jobs waiting. Slots are independent rows
  of one index, so concurrent submits of one tenant never wait for each other. A job requeued
  after an eviction waits without a slot: a requeue is never refused;
- at most one placement per job, attempt and pod;
- a tenant is in at most one cohort, and a cohort with members cannot be deleted (a foreign key
  without cascade); a tenant's borrowing and lending limits are never negative, and only a
  member of a cohort has any; an audit entry names exactly one of a tenant, a cohort or a
  priority class;
- a priority class's value lies within the job spec's priority range; a class granted to a
  tenant cannot be deleted (a foreign key without cascade), and a tenant's grants go with it;
- a webhook delivery (an outbox row) is leased to one delivery loop at a time through
  ``locked_until``/``locked_by``; its attempts are rows of webhook_attempts, numbered from 1.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from gateway.domain.jobs.spec import PRIORITY_RANGE
from gateway.domain.lifecycle.states import JobState
from gateway.domain.scheduling.priority import DEFAULT_MAX_PRIORITY

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATES_SQL = ", ".join(f"'{state.value}'" for state in JobState)
LIVE_STATES_SQL = "'queued', 'admitted', 'running'"
DNS_LABEL_SQL = "'^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'"
#: A cohort member's limits, per quota resource (``gateway.domain.scheduling.cohorts.Limits``).
COHORT_LIMIT_COLUMNS = tuple(
    f"{kind}_limit_{resource}"
    for kind in ("borrowing", "lending")
    for resource in ("cpu_millis", "memory_bytes", "gpu_shares")
)


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (``xid8``, PostgreSQL 13+), which SQLAlchemy lacks.

    Only the schema uses it: queries cast it to text in SQL, since not every asyncpg release has a
    codec for it.
    """

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "XID8"


# Reflection (alembic's schema comparison) looks column types up here; an unknown one would be
# reported as NullType with a warning.
ischema_names.setdefault("xid8", Xid8)


class Base(DeclarativeBase):
    """The declarative base of every table: constraint names follow ``NAMING``, JSON columns
    are JSONB."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class Tenant(Base):
    """A tenant: its namespace, quota, fair-share weight and priority ceiling, and its webhook
    signing secrets (the previous one kept through the overlap after a rotation)."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint(f"name ~ {DNS_LABEL_SQL}", name="name_dns_label"),
        CheckConstraint(f"namespace ~ {DNS_LABEL_SQL}", name="namespace_dns_label"),
        CheckConstraint(
            "quota_cpu_millis >= 0 AND quota_memory_bytes >= 0 AND quota_gpu_shares >= 0 "
            "AND max_running_jobs >= 0 AND max_queued_jobs >= 0",
            name="quota_non_negative",
        ),
        CheckConstraint("weight > 0", name="weight_positive"),
        CheckConstraint(
            f"max_priority BETWEEN {PRIORITY_RANGE[0]} AND {PRIORITY_RANGE[1]}",
            name="max_priority_in_range",
        ),
        CheckConstraint(
            " AND ".join(f"{column} >= 0" for column in COHORT_LIMIT_COLUMNS),
            name="cohort_limits_non_negative",
        ),
        CheckConstraint(
            f"cohort IS NOT NULL OR num_nonnulls({', '.join(COHORT_LIMIT_COLUMNS)}) = 0",
            name="cohort_limits_need_a_cohort",
        ),
        CheckConstraint(
            "preemption_policy IN ('never', 'lower_priority')", name="preemption_policy_known"
        ),
        CheckConstraint("jsonb_typeof(pod_policy) = 'object'", name="pod_policy_object"),
        CheckConstraint("jsonb_typeof(quota_extended) = 'object'", name="quota_extended_object"),
    )

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(63), nullable=False, unique=True)
    quota_cpu_millis: Mapped[int] = mapped_column(BigInteger, nullable=False)
    quota_memory_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    quota_gpu_shares: Mapped[int] = mapped_column(BigInteger, nullable=False)
    max_running_jobs: Mapped[int] = mapped_column(Integer, nullable=False)
    max_queued_jobs: Mapped[int] = mapped_column(Integer, nullable=False)
    # A limit per extended resource the quota names ({"rdma/hca": 8}); a name absent: no limit.
    quota_extended: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    weight: Mapped[float] = mapped_column(Double, nullable=False, server_default=text("1"))
    # The highest priority the tenant's jobs may have; an admin grants it
    # (gateway.domain.scheduling.priority).
    max_priority: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text(str(DEFAULT_MAX_PRIORITY))
    )
    # The cohort the tenant lends to and borrows from (gateway.domain.scheduling.cohorts); a
    # cohort with members cannot be deleted.
    cohort: Mapped[str | None] = mapped_column(String(63), ForeignKey("cohorts.name"), index=True)
    # Per quota resource, how far above nominal it may go and how much of its nominal quota it
    # lends out; NULL: no limit. Only a member of a cohort has any.
    borrowing_limit_cpu_millis: Mapped[int | None] = mapped_column(BigInteger)
    borrowing_limit_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    borrowing_limit_gpu_shares: Mapped[int | None] = mapped_column(BigInteger)
    lending_limit_cpu_millis: Mapped[int | None] = mapped_column(BigInteger)
    lending_limit_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    lending_limit_gpu_shares: Mapped[int | None] = mapped_column(BigInteger)
    # Whether the tenant's waiting jobs may preempt its own running gangs of lower priority
    # (gateway.domain.scheduling.preemption): 'never' or 'lower_priority'.
    preemption_policy: Mapped[str] = mapped_column(
        Text, nullable=False, server_default=text("'never'")
    )
    # What the tenant's pods may reach (gateway.domain.jobs.policy.policy_document); a key left
    # out has its default, so '{}' is the default policy.
    pod_policy: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    webhook_secret: Mapped[str] = mapped_column(Text, nullable=False)
    # The secret before the last rotation; deliveries are signed with both for an overlap.
    previous_webhook_secret: Mapped[str | None] = mapped_column(Text)
    webhook_secret_rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Cohort(Base):
    """Tenants that lend each other the quota they leave idle; its members are the tenants that
    name it."""

    __tablename__ = "cohorts"
    __table_args__ = (
        CheckConstraint(f"name ~ {DNS_LABEL_SQL}", name="name_dns_label"),
        CheckConstraint("length(description) <= 1024", name="description_length"),
    )

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    description: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("''"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class PriorityClass(Base):
    """A priority class: jobs that name it run at its value, and may be preempted only when it
    is preemptible (``gateway.domain.scheduling.priority``)."""

    __tablename__ = "priority_classes"
    __table_args__ = (
        CheckConstraint(f"name ~ {DNS_LABEL_SQL}", name="name_dns_label"),
        CheckConstraint(
            f"value BETWEEN {PRIORITY_RANGE[0]} AND {PRIORITY_RANGE[1]}", name="value_in_range"
        ),
        CheckConstraint("length(description) <= 1024", name="description_length"),
    )

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, nullable=False)
    preemptible: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    description: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("''"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class TenantPriorityClass(Base):
    """A priority class an admin granted a tenant: its jobs may name it. A class granted to any
    tenant cannot be deleted."""

    __tablename__ = "tenant_priority_classes"

    tenant: Mapped[str] = mapped_column(
        String(63), ForeignKey("tenants.name", ondelete="CASCADE"), primary_key=True
    )
    priority_class: Mapped[str] = mapped_column(
        String(63), ForeignKey("priority_classes.name"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = _now()


class TenantGrant(Base):
    """An admin-managed role: members of a group, or one user, get a role in a tenant."""

    __tablename__ = "tenant_grants"
    __table_args__ = (
        CheckConstraint("kind IN ('group', 'user')", name="kind_known"),
        CheckConstraint("role IN ('viewer', 'submitter', 'tenant-admin')", name="role_known"),
        CheckConstraint("length(name) BETWEEN 1 AND 256", name="name_length"),
    )

    tenant: Mapped[str] = mapped_column(
        String(63), ForeignKey("tenants.name", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = _now()


class Job(Base):
    """A job: its stored spec, its state and attempt (changed only by
    ``gateway.db.transitions``), its queue slot while it waits from a submit, its place in the
    queue as of the last admission cycle, and when it changed state."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"state IN ({STATES_SQL})", name="state_known"),
        CheckConstraint(f"name ~ {DNS_LABEL_SQL}", name="name_dns_label"),
        CheckConstraint("attempt >= 0", name="attempt_non_negative"),
        CheckConstraint("queue_slot >= 0", name="queue_slot_non_negative"),
        CheckConstraint(
            "preemptions >= 0 AND preemptions <= attempt", name="preemptions_within_attempts"
        ),
        CheckConstraint(
            "(state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL)",
            name="finished_iff_terminal",
        ),
        UniqueConstraint("tenant", "idempotency_key"),
        Index(
            "uq_jobs_live_name",
            "tenant",
            "name",
            unique=True,
            postgresql_where=text(f"state IN ({LIVE_STATES_SQL})"),
        ),
        Index(
            "uq_jobs_queue_slot",
            "tenant",
            "queue_slot",
            unique=True,
            postgresql_where=text("state = 'queued' AND queue_slot IS NOT NULL"),
        ),
        Index("ix_jobs_state_seq", "state", "seq"),
        Index(
            "ix_jobs_to_clean_up",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL AND cleaned_up_at IS NULL"),
        ),
        Index("ix_jobs_tenant_seq", "tenant", "seq"),
        # The live jobs of a class, which keep it from being deleted.
        Index(
            "ix_jobs_live_priority_class",
            "priority_class",
            postgresql_where=text(f"priority_class IS NOT NULL AND state IN ({LIVE_STATES_SQL})"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    # A monotonic sequence gives lists a stable order and cursors something to point at.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), nullable=False, unique=True)
    tenant: Mapped[str] = mapped_column(
        ForeignKey("tenants.name", onupdate="CASCADE", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    framework: Mapped[str] = mapped_column(String(16), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, nullable=False)
    # The priority class the job was submitted with (no foreign key: a finished job keeps the
    # name of a class deleted since), and whether it may be preempted: resolved from the class
    # at submit, like its priority, so a later change to the class changes only new jobs.
    priority_class: Mapped[str | None] = mapped_column(Text)
    preemptible: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    # Where a queued job stood in the last admission cycle (1-based); NULL once it leaves the queue.
    queue_position: Mapped[int | None] = mapped_column(Integer)
    tenant_queue_position: Mapped[int | None] = mapped_column(Integer)
    queue_slot: Mapped[int | None] = mapped_column(Integer)
    # Pod restarts spent in the current attempt, counted against run_policy.backoff_limit.
    restarts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    # How many of its attempts ended in a preemption: those are not counted against the requeue
    # limit, and a job preempted again backs off.
    preemptions: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    spec: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    labels: Mapped[dict[str, Any]] = mapped_column(nullable=False, server_default=text("'{}'"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    submitted_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    queued_at: Mapped[datetime] = _now()
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    admitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When its Kubernetes objects were deleted, its TTL after finishing having passed.
    cleaned_up_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobEvent(Base):
    """One entry of a job's history, append-only, positioned in the event stream by the
    transaction that wrote it (``txid``) and its id."""

    __tablename__ = "job_events"
    __table_args__ = (
        CheckConstraint(f"to_state IS NULL OR to_state IN ({STATES_SQL})", name="to_state_known"),
        Index("ix_job_events_job_id_id", "job_id", "id"),
        Index("ix_job_events_tenant_id", "tenant", "id"),
        Index("ix_job_events_txid_id", "txid", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(nullable=False, server_default=text("'{}'"))
    created_at: Mapped[datetime] = _now()
    # The writing transaction's id: the stream's order, and its horizon (see the module docstring).
    txid: Mapped[int] = mapped_column(
        Xid8(), nullable=False, server_default=func.pg_current_xact_id()
    )


class Placement(Base):
    """Where one pod of one attempt of a job runs: its node and GPU device slices."""

    __tablename__ = "placements"
    __table_args__ = (
        UniqueConstraint("job_id", "attempt", "pod_name"),
        CheckConstraint(
            "cpu_millis >= 0 AND memory_bytes >= 0 AND gpu_shares >= 0 AND replica_index >= 0",
            name="amounts_non_negative",
        ),
        CheckConstraint(
            "borrowed_cpu_millis >= 0 AND borrowed_cpu_millis <= cpu_millis"
            " AND borrowed_memory_bytes >= 0 AND borrowed_memory_bytes <= memory_bytes"
            " AND borrowed_gpu_shares >= 0 AND borrowed_gpu_shares <= gpu_shares",
            name="borrowed_within_held",
        ),
        CheckConstraint("jsonb_typeof(extended) = 'object'", name="extended_object"),
        Index("ix_placements_live_node", "node", postgresql_where=text("released_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    pod_name: Mapped[str] = mapped_column(String(63), nullable=False)
    role: Mapped[str] = mapped_column(String(63), nullable=False)
    replica_index: Mapped[int] = mapped_column(Integer, nullable=False)
    node: Mapped[str] = mapped_column(String(253), nullable=False)
    cpu_millis: Mapped[int] = mapped_column(BigInteger, nullable=False)
    memory_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    gpu_shares: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # What of it lies above the tenant's nominal quota, on quota its cohort lent (0: none).
    borrowed_cpu_millis: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    borrowed_memory_bytes: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    borrowed_gpu_shares: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    # [{"device": 0, "shares": 50}, ...]: CUDA_VISIBLE_DEVICES follows from the device indices.
    gpu: Mapped[list[Any]] = mapped_column(nullable=False, server_default=text("'[]'"))
    # Extended resources it holds by name ({"rdma/hca": 1}); never borrowed.
    extended: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookOutbox(Base):
    """One event to deliver; written in the same transaction as the state change it reports."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'delivered', 'dead', 'disabled')", name="status_known"
        ),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index(
            "ix_webhook_outbox_due", "next_attempt_at", postgresql_where=text("status = 'pending'")
        ),
        Index("ix_webhook_outbox_job_id", "job_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    tenant: Mapped[str] = mapped_column(String(63), nullable=False)
    event_type: Mapped[str] = mapped_column(String(32), nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    # Attempts of the current retry schedule (a redelivery starts a new one), counted at claim.
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = _now()
    # The lease of the delivery loop that is sending it now: no other loop claims the row until
    # locked_until passes, and only the holder of locked_by may record the attempt's result.
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    locked_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class WebhookAttempt(Base):
    """One POST of a delivery (or its refusal by the SSRF guard): when, how long, and the answer."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        CheckConstraint(
            "outcome IN ('delivered', 'failed', 'gone', 'refused')", name="outcome_known"
        ),
        CheckConstraint("number >= 1 AND duration_ms >= 0", name="number_and_duration_valid"),
        Index("ix_webhook_attempts_delivery_id_id", "delivery_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_outbox.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    duration_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)


class AuditEntry(Base):
    """Who changed what in a tenant's, a cohort's or a priority class's settings, and when, with
    the values before and after. An entry names one of them."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_tenant_id", "tenant", "id"),
        Index("ix_audit_log_cohort_id", "cohort", "id"),
        Index("ix_audit_log_priority_class_id", "priority_class", "id"),
        CheckConstraint("num_nonnulls(tenant, cohort, priority_class) = 1", name="one_subject"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    actor: Mapped[str] = mapped_column(Text, nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    tenant: Mapped[str | None] = mapped_column(String(63))
    cohort: Mapped[str | None] = mapped_column(String(63))
    priority_class: Mapped[str | None] = mapped_column(String(63))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()


class SignInCode(Base):
    """A dashboard sign-in code that has been redeemed (its ``jti``): a code is redeemed once,
    whichever replica sees it first. Kept a day past its expiry, then deleted."""

    __tablename__ = "sign_in_codes"
    __table_args__ = (Index("ix_sign_in_codes_expires_at", "expires_at"),)

    jti: Mapped[str] = mapped_column(Text, primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    spent_at: Mapped[datetime] = _now()
