"""Tenant rows and the audit log of every change to them.

Invariant: every write to a tenant's settings appends one audit_log row (who, when, before, after)
in the same transaction.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.domain.problems import FieldProblem
from gateway.errors import NotFound, ValidationFailed

TENANT_COLUMNS = (
    "name, namespace, quota_cpu_millis, quota_memory_bytes, quota_gpu_shares, max_running_jobs, "
    "max_queued_jobs, weight, queued_jobs, created_at, updated_at"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantValues:
    """What an admin sets on a tenant, in Muster's units."""

    namespace: str
    quota_cpu_millis: int
    quota_memory_bytes: int
    quota_gpu_shares: int
    max_running_jobs: int
    max_queued_jobs: int
    weight: float

    def as_params(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "quota_cpu_millis": self.quota_cpu_millis,
            "quota_memory_bytes": self.quota_memory_bytes,
            "quota_gpu_shares": self.quota_gpu_shares,
            "max_running_jobs": self.max_running_jobs,
            "max_queued_jobs": self.max_queued_jobs,
            "weight": self.weight,
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
            before = await _select(conn, name, lock=True)
            if before is None:
                row = (
                    (
                        await conn.execute(
                            text(
                                f"""
                            INSERT INTO tenants (name, namespace, quota_cpu_millis,
                                quota_memory_bytes, quota_gpu_shares, max_running_jobs,
                                max_queued_jobs, weight, webhook_secret)
                            VALUES (:name, :namespace, :quota_cpu_millis, :quota_memory_bytes,
                                :quota_gpu_shares, :max_running_jobs, :max_queued_jobs, :weight,
                                :secret)
                            ON CONFLICT (name) DO NOTHING
                            RETURNING {TENANT_COLUMNS}
                            """
                            ),
                            {"name": name, "secret": new_webhook_secret(), **values.as_params()},
                        )
                    )
                    .mappings()
                    .first()
                )
                if row is None:  # created concurrently between our SELECT and INSERT
                    return await put(engine, name, values, actor=actor)
                created = True
            else:
                row = (
                    (
                        await conn.execute(
                            text(
                                f"""
                            UPDATE tenants SET namespace = :namespace,
                                quota_cpu_millis = :quota_cpu_millis,
                                quota_memory_bytes = :quota_memory_bytes,
                                quota_gpu_shares = :quota_gpu_shares,
                                max_running_jobs = :max_running_jobs,
                                max_queued_jobs = :max_queued_jobs, weight = :weight,
                                updated_at = now()
                            WHERE name = :name RETURNING {TENANT_COLUMNS}
                            """
                            ),
                            {"name": name, **values.as_params()},
                        )
                    )
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
            raise ValidationFailed(
                [
                    FieldProblem(
                        pointer="/namespace",
                        detail=f"namespace {values.namespace!r} belongs to another tenant",
                    )
                ]
            ) from exc
        raise
    return row, created


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
