"""Tenants as recorded: what an admin sets on one, the tenant as stored, its status now, and the
audit log of every change to tenants.

These are what the database layer hands the API and ``muster serve`` (``gateway.db`` maps its
rows to them, and only it does).

Invariants: every value is frozen and keyword-only; amounts are in Muster's units (millicores,
bytes, GPU shares; ``gateway.domain.resources``); timestamps are timezone-aware, in UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.domain.scheduling.priority import DEFAULT_MAX_PRIORITY
from gateway.domain.scheduling.quota import Quota, TenantUsage

__all__ = ["AuditAction", "AuditEntry", "Tenant", "TenantSettings", "TenantStatus"]


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantSettings:
    """What an admin sets on a tenant: its Kubernetes namespace, quota, fair-share weight, and
    ``max_priority``, the highest priority its jobs may have
    (``gateway.domain.scheduling.priority``)."""

    namespace: str
    quota: Quota
    weight: float
    max_priority: int = DEFAULT_MAX_PRIORITY


@dataclass(frozen=True, kw_only=True, slots=True)
class Tenant:
    """A tenant as stored: its name, its settings, and when it was created and last changed."""

    name: str
    settings: TenantSettings
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantStatus:
    """A tenant with what its admitted and running jobs hold now, and how many jobs wait."""

    tenant: Tenant
    usage: TenantUsage
    queued_jobs: int


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
    """One change to a tenant: who made it, when, and the tenant's affected settings before and
    after, as documents (None before a creation and after a deletion; never a secret)."""

    id: int
    actor: str
    action: AuditAction
    tenant: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    created_at: datetime
