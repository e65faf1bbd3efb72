"""Tenant grants: which groups and users hold which role in a tenant.

Invariants: a tenant's grants are replaced as a whole, in one transaction that also appends an
audit_log row (action ``grants``) with the grants before and after; grants go with their tenant
(ON DELETE CASCADE).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.mapping import grant_of
from gateway.domain.access import Grant, GrantKind, Role
from gateway.errors import NotFound

GrantMap = dict[str, dict[str, str]]  # {"groups": {name: role}, "users": {name: role}}


def as_map(grants: Sequence[Grant]) -> GrantMap:
    """Grants -> the API's shape: ``{"groups": {name: role}, "users": {name: role}}``."""
    document: GrantMap = {"groups": {}, "users": {}}
    for grant in grants:
        section = "groups" if grant.kind is GrantKind.GROUP else "users"
        document[section][grant.name] = grant.role.value
    return document


def from_map(tenant: str, document: Mapping[str, Mapping[str, str]]) -> list[Grant]:
    """The API's shape (schema-valid) -> grants of one tenant."""
    return [
        Grant(tenant=tenant, kind=kind, name=name, role=Role(role))
        for section, kind in (("groups", GrantKind.GROUP), ("users", GrantKind.USER))
        for name, role in sorted(document.get(section, {}).items())
    ]


async def all_grants(engine: AsyncEngine) -> list[Grant]:
    """Every grant of every tenant (a few rows per tenant: cached whole by the authenticator)."""
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT tenant, kind, name, role FROM tenant_grants"))
        return [grant_of(row) for row in result.mappings()]


async def _of(conn: AsyncConnection, tenant: str) -> list[Grant]:
    result = await conn.execute(
        text(
            "SELECT tenant, kind, name, role FROM tenant_grants WHERE tenant = :tenant "
            "ORDER BY kind, name"
        ),
        {"tenant": tenant},
    )
    return [grant_of(row) for row in result.mappings()]


async def of_tenant(engine: AsyncEngine, tenant: str) -> list[Grant]:
    async with engine.connect() as conn:
        if await conn.scalar(text("SELECT 1 FROM tenants WHERE name = :t"), {"t": tenant}) is None:
            raise NotFound(f"tenant {tenant!r} does not exist")
        return await _of(conn, tenant)


async def replace(engine: AsyncEngine, tenant: str, grants: Sequence[Grant], *, actor: str) -> None:
    """Make ``grants`` the tenant's whole set of grants."""
    async with engine.begin() as conn:
        locked = await conn.scalar(
            text("SELECT 1 FROM tenants WHERE name = :t FOR UPDATE"), {"t": tenant}
        )
        if locked is None:
            raise NotFound(f"tenant {tenant!r} does not exist")
        before = await _of(conn, tenant)
        await conn.execute(text("DELETE FROM tenant_grants WHERE tenant = :t"), {"t": tenant})
        if grants:
            await conn.execute(
                text(
                    "INSERT INTO tenant_grants (tenant, kind, name, role) "
                    "VALUES (:tenant, :kind, :name, :role)"
                ),
                [
                    {"tenant": tenant, "kind": g.kind.value, "name": g.name, "role": g.role.value}
                    for g in grants
                ],
            )
        await conn.execute(
            text(
                "INSERT INTO audit_log (actor, action, tenant, before, after) "
                "VALUES (:actor, 'grants', :tenant, :before, :after)"
            ).bindparams(bindparam("before", type_=JSONB), bindparam("after", type_=JSONB)),
            {
                "actor": actor,
                "tenant": tenant,
                "before": as_map(before),
                "after": as_map(list(grants)),
            },
        )
