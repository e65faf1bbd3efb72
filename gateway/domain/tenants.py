"""Tenants as recorded: what an admin sets on one, the tenant as stored, its status now, the
cohorts tenants may share their quota in, the priority classes admins grant them, and the audit
log of every change to tenants, cohorts and priority classes.

These are what the database layer hands the API and ``muster serve`` (``gateway.db`` maps its
rows to them, and only it does).

Invariants: every value is frozen and keyword-only; amounts are in Muster's units (millicores,
bytes, GPU shares; ``gateway.domain.resources``); timestamps are timezone-aware, in UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.domain.jobs.policy import PodPolicy
from gateway.domain.resources import Resources
from gateway.domain.scheduling.cohorts import CohortTerms, Member, Standing, idle_quota, standings
from gateway.domain.scheduling.priority import DEFAULT_MAX_PRIORITY, PriorityClass
from gateway.domain.scheduling.queueing import PreemptionPolicy
from gateway.domain.scheduling.quota import Quota, TenantUsage

__all__ = [
    "AuditAction",
    "AuditEntry",
    "Cohort",
    "CohortMember",
    "CohortStatus",
    "PriorityClassRecord",
    "Tenant",
    "TenantSettings",
    "TenantStatus",
    "cohort_status",
    "standings_of",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantSettings:
    """What an admin sets on a tenant: its Kubernetes namespace, quota (its nominal quota in a
    cohort), fair-share weight, ``max_priority``, the highest priority its jobs without a
    priority class may have, the ``priority_classes`` its jobs may name (by name, in order;
    ``gateway.domain.scheduling.priority``), and its ``cohort`` with its borrowing and lending
    limits (None: in no cohort; ``gateway.domain.scheduling.cohorts``), and its
    ``preemption_policy``: whether its jobs may preempt its own gangs of lower priority
    (``gateway.domain.scheduling.preemption``), and its ``pod_policy``: what its pods may reach
    (``gateway.domain.jobs.policy``)."""

    namespace: str
    quota: Quota
    weight: float
    max_priority: int = DEFAULT_MAX_PRIORITY
    cohort: CohortTerms | None = None
    priority_classes: tuple[str, ...] = ()
    preemption_policy: PreemptionPolicy = PreemptionPolicy.NEVER
    pod_policy: PodPolicy = field(default_factory=PodPolicy)


@dataclass(frozen=True, kw_only=True, slots=True)
class Tenant:
    """A tenant as stored: its name, its settings, and when it was created and last changed."""

    name: str
    settings: TenantSettings
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantStatus:
    """A tenant with what its admitted and running jobs hold now, how many jobs wait, and its
    ``standing``: its nominal quota and what it borrows from and lends to its cohort now."""

    tenant: Tenant
    usage: TenantUsage
    queued_jobs: int
    standing: Standing


@dataclass(frozen=True, kw_only=True, slots=True)
class Cohort:
    """A cohort as stored: its name, an admin's description, when it was created and last
    changed, and the names of its members (the tenants that name it), in order."""

    name: str
    description: str
    members: tuple[str, ...]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class CohortMember:
    """A member of a cohort as its cohort's view shows it: its terms and its standing now."""

    name: str
    terms: CohortTerms
    standing: Standing


@dataclass(frozen=True, kw_only=True, slots=True)
class CohortStatus:
    """A cohort with each member's standing, and its idle quota: what its members could still
    lend now (``gateway.domain.scheduling.cohorts.idle_quota``)."""

    cohort: Cohort
    members: tuple[CohortMember, ...]
    idle: Resources


def standings_of(
    held: Mapping[str, tuple[TenantSettings, TenantUsage]],
) -> dict[str, Standing]:
    """Each tenant's nominal quota and what it borrows and lends now, from every tenant's
    settings and usage (a cohort's standings need all of its members). A tenant of no cohort
    neither borrows nor lends, even when it holds more than a quota lowered below its usage."""
    members = {
        name: Member(quota=settings.quota, usage=usage, terms=settings.cohort)
        for name, (settings, usage) in held.items()
    }
    return standings(members)


def cohort_status(
    cohort: Cohort, held: Mapping[str, tuple[TenantSettings, TenantUsage]]
) -> CohortStatus:
    """The cohort's view from its members' settings and usage (by name; a tenant that is not a
    member of ``cohort`` is left out)."""
    members = {
        name: (settings, usage)
        for name, (settings, usage) in held.items()
        if settings.cohort is not None and settings.cohort.cohort == cohort.name
    }
    standing = standings_of(members)
    return CohortStatus(
        cohort=cohort,
        members=tuple(
            CohortMember(name=name, terms=settings.cohort, standing=standing[name])
            for name, (settings, _) in sorted(members.items())
            if settings.cohort is not None
        ),
        idle=idle_quota(
            Member(quota=settings.quota, usage=usage, terms=settings.cohort)
            for settings, usage in members.values()
        ),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class PriorityClassRecord:
    """A priority class as stored: the class, an admin's description, the tenants it is
    granted to (by name, in order), and when it was created and last changed."""

    priority_class: PriorityClass
    description: str
    tenants: tuple[str, ...]
    created_at: datetime
    updated_at: datetime


class AuditAction(StrEnum):
    """What an audit entry records."""

    CREATE = "create"
    REPLACE = "replace"
    UPDATE = "update"
    DELETE = "delete"
    GRANTS = "grants"
    ROTATE_WEBHOOK_SECRET = "rotate-webhook-secret"


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditEntry:
    """One change to a tenant, a cohort or a priority class (the entry names one of them, the
    others are None): who made it, when, and the affected settings before and after, as
    documents (None before a creation and after a deletion; never a secret)."""

    id: int
    actor: str
    action: AuditAction
    tenant: str | None
    cohort: str | None = None
    priority_class: str | None = None
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    created_at: datetime
