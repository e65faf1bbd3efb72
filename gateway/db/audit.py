"""The audit log: who changed which tenant, cohort or priority class, when, and its settings
before and after.

What it returns are values (``AuditEntry`` of ``gateway.domain.tenants``; ``gateway.db.mapping``
maps the rows).

Invariants: entries are only appended, each in the transaction of the change it records; an
entry names exactly one of a tenant, a cohort or a priority class (a CHECK keeps it so); it never
holds a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.mapping import audit_entry_of
from gateway.domain.tenants import AuditAction, AuditEntry

_INSERT = text(
    "INSERT INTO audit_log (actor, action, tenant, cohort, priority_class, before, after) "
    "VALUES (:actor, :action, :tenant, :cohort, :priority_class, :before, :after)"
).bindparams(bindparam("before", type_=JSONB), bindparam("after", type_=JSONB))


async def write_audit(
    conn: AsyncConnection,
    *,
    actor: str,
    action: AuditAction,
    tenant: str | None = None,
    cohort: str | None = None,
    priority_class: str | None = None,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> None:
    """Append one audit entry about a tenant, a cohort or a priority class (exactly one of
    them), in the caller's transaction."""
    params = {
        "actor": actor,
        "action": action.value,
        "tenant": tenant,
        "cohort": cohort,
        "priority_class": priority_class,
    }
    await conn.execute(_INSERT, {**params, "before": before, "after": after})


async def entries(
    engine: AsyncEngine,
    *,
    tenant: str | None,
    limit: int,
    before_id: int | None,
    cohort: str | None = None,
    priority_class: str | None = None,
) -> list[AuditEntry]:
    """Audit entries, newest first; only a tenant's, a cohort's or a priority class's when one
    is named."""
    clauses: list[str] = ["TRUE"]
    params: dict[str, Any] = {"limit": limit}
    if tenant is not None:
        clauses.append("tenant = :tenant")
        params["tenant"] = tenant
    if cohort is not None:
        clauses.append("cohort = :cohort")
        params["cohort"] = cohort
    if priority_class is not None:
        clauses.append("priority_class = :priority_class")
        params["priority_class"] = priority_class
    if before_id is not None:
        clauses.append("id < :before_id")
        params["before_id"] = before_id
    query = text(
        "SELECT id, actor, action, tenant, cohort, priority_class, before, after, created_at "
        "FROM audit_log "
        f"WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT :limit"
    )
    async with engine.connect() as conn:
        return [audit_entry_of(row) for row in (await conn.execute(query, params)).mappings()]
