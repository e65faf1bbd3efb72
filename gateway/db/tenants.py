"""Tenant rows and the audit log of every change to them.

Invariant: every write to a tenant's settings appends one audit_log row (who, when, before, after)
in the same transaction.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.domain.problems import FieldProblem
from gateway.domain.scheduling.priority import DEFAULT_MAX_PRIORITY
from gateway.domain.scheduling.quota import RESOURCES, Quota, TenantUsage
from gateway.errors import Conflict, NotFound, ValidationFailed

TENANT_COLUMNS = (
    "name, namespace, quota_cpu_millis, quota_memory_bytes, quota_gpu_shares, max_running_jobs, "
    "max_queued_jobs, weight, max_priority, created_at, updated_at"
)


_UPDATE = text(
    f"""
    UPDATE tenants SET namespace = :namespace, quota_cpu_millis = :quota_cpu_millis,
        quota_memory_bytes = :quota_memory_bytes, quota_gpu_shares = :quota_gpu_shares,
        max_running_jobs = :max_running_jobs, max_queued_jobs = :max_queued_jobs,
        weight = :weight, max_priority = :max_priority, updated_at = now()
    WHERE name = :name RETURNING {TENANT_COLUMNS}
    """
)


#: The tenants column of each quota resource (``gateway.domain.scheduling.quota.RESOURCES``).
QUOTA_COLUMNS = {resource: f"quota_{resource}" for resource in RESOURCES}


def quota_of(row: Mapping[Any, Any]) -> Quota:
    """A tenants row's quota: the one place rows become a ``Quota``."""
    return Quota(
        cpu_millis=row[QUOTA_COLUMNS["cpu_millis"]],
        memory_bytes=row[QUOTA_COLUMNS["memory_bytes"]],
        gpu_shares=row[QUOTA_COLUMNS["gpu_shares"]],
        max_running_jobs=row["max_running_jobs"],
        max_queued_jobs=row["max_queued_jobs"],
    )


def usage_of(row: Mapping[Any, Any]) -> TenantUsage:
    """What a ``TENANTS_WITH_USAGE`` row says the tenant holds now."""
    return TenantUsage(
        cpu_millis=int(row["used_cpu"]),
        memory_bytes=int(row["used_memory"]),
        gpu_shares=int(row["used_gpu"]),
        running_jobs=int(row["running_jobs"]),
    )


def could_ever_hold_sql(tenant: str, demand: str) -> str:
    """The SQL form of ``Quota.could_ever_hold``: a condition on the tenants row aliased
    ``tenant`` and a row ``demand`` with cpu_millis, memory_bytes and gpu_shares columns. Made from
    the quota's resource list, and held to the Python rule by a test."""
    held = " AND ".join(f"{tenant}.{QUOTA_COLUMNS[r]} >= {demand}.{r}" for r in RESOURCES)
    return f"{tenant}.max_queued_jobs > 0 AND {tenant}.max_running_jobs > 0 AND {held}"


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantValues:
    """What an admin sets on a tenant, in Muster's units; ``max_priority`` is the highest
    priority its jobs may have (``gateway.domain.scheduling.priority``)."""

    namespace: str
    quota: Quota
    weight: float
    max_priority: int = DEFAULT_MAX_PRIORITY

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> TenantValues:
        """A tenants row's values."""
        return cls(
            namespace=row["namespace"],
            quota=quota_of(row),
            weight=float(row["weight"]),
            max_priority=row["max_priority"],
        )

    def as_params(self) -> dict[str, Any]:
        quota = self.quota
        return {
            "namespace": self.namespace,
            **{column: getattr(quota, r) for r, column in QUOTA_COLUMNS.items()},
            "max_running_jobs": quota.max_running_jobs,
            "max_queued_jobs": quota.max_queued_jobs,
            "weight": self.weight,
            "max_priority": self.max_priority,
        }


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _audit_view(row: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    keys = (
        "namespace",
        "quota_cpu_millis",
        "quota_memory_bytes",
        "quota_gpu_shares",
        "max_running_jobs",
        "max_queued_jobs",
        "weight",
        "max_priority",
    )
    return {key: row[key] for key in keys}


async def _select(conn: AsyncConnection, name: str, *, lock: bool) -> RowMapping | None:
    suffix = " FOR UPDATE" if lock else ""
    result = await conn.execute(
        text(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE name = :name{suffix}"), {"name": name}
    )
    return result.mappings().first()


async def _audit(
    conn: AsyncConnection,
    *,
    actor: str,
    action: str,
    tenant: str,
    before: RowMapping | None,
    after: RowMapping | None,
) -> None:
    statement = text(
        "INSERT INTO audit_log (actor, action, tenant, before, after) "
        "VALUES (:actor, :action, :tenant, :before, :after)"
    ).bindparams(bindparam("before", type_=JSONB), bindparam("after", type_=JSONB))
    await conn.execute(
        statement,
        {
            "actor": actor,
            "action": action,
            "tenant": tenant,
            "before": _audit_view(before),
            "after": _audit_view(after),
        },
    )


async def put(
    engine: AsyncEngine, name: str, values: TenantValues, *, actor: str
) -> tuple[RowMapping, bool]:
    """Create or replace a tenant. Returns the row and whether it was created."""
    try:
        async with engine.begin() as conn:
            # Serialize writers of this tenant name, so create-or-replace has no race window.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext('tenant:' || :name))"), {"name": name}
            )
            before = await _select(conn, name, lock=True)
            if before is None:
                row = (
                    (
                        await conn.execute(
                            text(
                                f"""
                            INSERT INTO tenants (name, namespace, quota_cpu_millis,
                                quota_memory_bytes, quota_gpu_shares, max_running_jobs,
                                max_queued_jobs, weight, max_priority, webhook_secret)
                            VALUES (:name, :namespace, :quota_cpu_millis, :quota_memory_bytes,
                                :quota_gpu_shares, :max_running_jobs, :max_queued_jobs, :weight,
                                :max_priority, :secret)
                            RETURNING {TENANT_COLUMNS}
                            """
                            ),
                            {"name": name, "secret": new_webhook_secret(), **values.as_params()},
                        )
                    )
                    .mappings()
                    .one()
                )
                created = True
            else:
                row = (
                    (await conn.execute(_UPDATE, {"name": name, **values.as_params()}))
                    .mappings()
                    .one()
                )
                created = False
            await _audit(
                conn,
                actor=actor,
                action="create" if created else "replace",
                tenant=name,
                before=before,
                after=row,
            )
    except IntegrityError as exc:
        if "uq_tenants_namespace" in str(exc.orig):
            raise _namespace_taken(values.namespace) from exc
        raise
    return row, created


def _namespace_taken(namespace: str) -> ValidationFailed:
    return ValidationFailed(
        [
            FieldProblem(
                pointer="/namespace", detail=f"namespace {namespace!r} belongs to another tenant"
            )
        ]
    )


async def get(engine: AsyncEngine, name: str) -> RowMapping:
    async with engine.connect() as conn:
        row = await _select(conn, name, lock=False)
    if row is None:
        raise NotFound(f"tenant {name!r} does not exist")
    return row


async def list_all(engine: AsyncEngine) -> Sequence[RowMapping]:
    async with engine.connect() as conn:
        result = await conn.execute(text(f"SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name"))
        return result.mappings().all()


# Every tenant with what its live placements hold and how many jobs hold resources. Admission
# and GET /v1/tenants/{tenant} both read usage through this one query.
TENANTS_WITH_USAGE = f"""
    SELECT {", ".join(f"t.{c.strip()}" for c in TENANT_COLUMNS.split(","))},
           COALESCE(u.cpu, 0) AS used_cpu, COALESCE(u.memory, 0) AS used_memory,
           COALESCE(u.gpu, 0) AS used_gpu, COALESCE(r.running, 0) AS running_jobs,
           COALESCE(r.queued, 0) AS queued_jobs
    FROM tenants t
    LEFT JOIN (
        SELECT j.tenant, sum(p.cpu_millis) AS cpu, sum(p.memory_bytes) AS memory,
               sum(p.gpu_shares) AS gpu
        FROM placements p JOIN jobs j ON j.id = p.job_id
        WHERE p.released_at IS NULL GROUP BY j.tenant
    ) u ON u.tenant = t.name
    LEFT JOIN (
        SELECT tenant, count(*) FILTER (WHERE state <> 'queued') AS running,
               count(*) FILTER (WHERE state = 'queued') AS queued
        FROM jobs WHERE state IN ('queued', 'admitted', 'running') GROUP BY tenant
    ) r ON r.tenant = t.name
"""
_STATUS = text(TENANTS_WITH_USAGE + " WHERE t.name = :name")


async def status(engine: AsyncEngine, name: str) -> RowMapping:
    """The tenant with its current usage and job counts."""
    async with engine.connect() as conn:
        row = (await conn.execute(_STATUS, {"name": name})).mappings().first()
    if row is None:
        raise NotFound(f"tenant {name!r} does not exist")
    return row


async def patch(
    engine: AsyncEngine,
    name: str,
    merge: Callable[[Mapping[Any, Any]], TenantValues],
    *,
    actor: str,
) -> RowMapping:
    """Change some of a tenant's settings: ``merge`` maps the current row to the new values."""
    async with engine.begin() as conn:
        before = await _select(conn, name, lock=True)
        if before is None:
            raise NotFound(f"tenant {name!r} does not exist")
        values = merge(before)
        try:
            async with conn.begin_nested():
                result = await conn.execute(_UPDATE, {"name": name, **values.as_params()})
                row = result.mappings().one()
        except IntegrityError as exc:
            raise _namespace_taken(values.namespace) from exc
        await _audit(conn, actor=actor, action="update", tenant=name, before=before, after=row)
    return row


async def delete(engine: AsyncEngine, name: str, *, actor: str) -> None:
    """Delete a tenant with its finished jobs; refused while it has queued or active jobs."""
    async with engine.begin() as conn:
        before = await _select(conn, name, lock=True)
        if before is None:
            raise NotFound(f"tenant {name!r} does not exist")
        live = await conn.scalar(
            text(
                "SELECT count(*) FROM jobs WHERE tenant = :name "
                "AND state IN ('queued', 'admitted', 'running')"
            ),
            {"name": name},
        )
        if live:
            raise Conflict(
                f"tenant {name!r} still has {live} queued or running jobs; cancel them first"
            )
        await conn.execute(text("DELETE FROM tenants WHERE name = :name"), {"name": name})
        await _audit(conn, actor=actor, action="delete", tenant=name, before=before, after=None)


async def audit(
    engine: AsyncEngine, *, tenant: str | None, limit: int, before_id: int | None
) -> Sequence[RowMapping]:
    """Audit entries, newest first."""
    clauses: list[str] = ["TRUE"]
    params: dict[str, Any] = {"limit": limit}
    if tenant is not None:
        clauses.append("tenant = :tenant")
        params["tenant"] = tenant
    if before_id is not None:
        clauses.append("id < :before_id")
        params["before_id"] = before_id
    query = text(
        "SELECT id, actor, action, tenant, before, after, created_at FROM audit_log "
        f"WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT :limit"
    )
    async with engine.connect() as conn:
        return (await conn.execute(query, params)).mappings().all()


async def create_first(engine: AsyncEngine, name: str, values: TenantValues, *, actor: str) -> bool:
    """Create ``name`` only if there is no tenant at all yet. Returns whether it was created."""
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('tenant:' || :name))"), {"name": name}
        )
        if await conn.scalar(text("SELECT EXISTS (SELECT 1 FROM tenants)")):
            return False
        row = (
            (
                await conn.execute(
                    text(
                        f"""
                    INSERT INTO tenants (name, namespace, quota_cpu_millis, quota_memory_bytes,
                        quota_gpu_shares, max_running_jobs, max_queued_jobs, weight,
                        max_priority, webhook_secret)
                    VALUES (:name, :namespace, :quota_cpu_millis, :quota_memory_bytes,
                        :quota_gpu_shares, :max_running_jobs, :max_queued_jobs, :weight,
                        :max_priority, :secret)
                    RETURNING {TENANT_COLUMNS}
                    """
                    ),
                    {"name": name, "secret": new_webhook_secret(), **values.as_params()},
                )
            )
            .mappings()
            .one()
        )
        await _audit(conn, actor=actor, action="create", tenant=name, before=None, after=row)
    return True


async def owning(engine: AsyncEngine, namespace: str) -> str | None:
    """The tenant whose Kubernetes namespace this is, if any."""
    async with engine.connect() as conn:
        name: str | None = await conn.scalar(
            text("SELECT name FROM tenants WHERE namespace = :ns"), {"ns": namespace}
        )
    return name
