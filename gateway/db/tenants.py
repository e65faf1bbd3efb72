"""Tenants: their settings, their status, and their standing in their cohorts.

What it returns are values (``Tenant``, ``TenantStatus`` of ``gateway.domain.tenants``;
``gateway.db.mapping`` maps the rows). Each change is audited through ``gateway.db.audit``.

Invariants: every write to a tenant's settings appends one audit_log row (who, when, before,
after) in the same transaction; a tenant names only a cohort that exists (a foreign key: naming
another is a 422 at /cohort), and is granted only priority classes that exist (naming another
is a 422 at /priority_classes, and writes nothing); its grants of priority classes
(tenant_priority_classes) are part of its settings, read with every tenants row and written in
the transaction of its row; a status's standing is computed over all of its cohort's members,
read in the same snapshot.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.audit import write_audit
from gateway.db.mapping import (
    BORROWING_COLUMNS,
    LENDING_COLUMNS,
    QUOTA_COLUMNS,
    Row,
    tenant_of,
    tenant_settings_of,
    tenant_status_of,
    usage_of,
)
from gateway.domain.jobs.policy import policy_document
from gateway.domain.problems import FieldProblem
from gateway.domain.scheduling.cohorts import Limits
from gateway.domain.scheduling.quota import RESOURCES, TenantUsage
from gateway.domain.tenants import (
    AuditAction,
    Tenant,
    TenantSettings,
    TenantStatus,
    standings_of,
)
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.jsontext import json_text

#: The columns a tenant's settings are written to (besides its name and secret).
_SETTINGS_COLUMNS = (
    "namespace",
    *QUOTA_COLUMNS.values(),
    "quota_extended",
    "max_running_jobs",
    "max_queued_jobs",
    "weight",
    "max_priority",
    "preemption_policy",
    "pod_policy",
    "cohort",
    *BORROWING_COLUMNS.values(),
    *LENDING_COLUMNS.values(),
)
#: Columns whose parameters are JSON text, cast to jsonb.
_JSON_COLUMNS = frozenset({"pod_policy", "quota_extended"})


def _value(column: str) -> str:
    return f"CAST(:{column} AS jsonb)" if column in _JSON_COLUMNS else f":{column}"


_TENANT_FIELDS = ("name", *_SETTINGS_COLUMNS, "created_at", "updated_at")


def tenant_columns(alias: str) -> str:
    """A tenant's columns, of the tenants row aliased ``alias``, with ``priority_classes``: the
    names of the classes it is granted, in order (what ``gateway.db.mapping.tenant_of`` reads)."""
    return ", ".join(f"{alias}.{column}" for column in _TENANT_FIELDS) + (
        ", ARRAY(SELECT g.priority_class FROM tenant_priority_classes g "
        f"WHERE g.tenant = {alias}.name ORDER BY g.priority_class) AS priority_classes"
    )


TENANT_COLUMNS = tenant_columns("tenants")


_INSERT = text(
    f"""
    INSERT INTO tenants (name, {", ".join(_SETTINGS_COLUMNS)}, webhook_secret)
    VALUES (:name, {", ".join(_value(c) for c in _SETTINGS_COLUMNS)}, :secret)
    """
)
_UPDATE = text(
    f"""
    UPDATE tenants SET {", ".join(f"{c} = {_value(c)}" for c in _SETTINGS_COLUMNS)},
        updated_at = now()
    WHERE name = :name
    """
)
# A tenant's grants of priority classes: which of ``classes`` do not exist, then the grants
# taken back and those added (the foreign key refuses a class deleted in the meantime).
_UNKNOWN_CLASSES = text(
    "SELECT c FROM unnest(CAST(:classes AS text[])) AS c "
    "WHERE NOT EXISTS (SELECT 1 FROM priority_classes p WHERE p.name = c) ORDER BY c"
)
_REVOKE = text(
    "DELETE FROM tenant_priority_classes "
    "WHERE tenant = :name AND NOT priority_class = ANY(CAST(:classes AS text[]))"
)
_GRANT = text(
    "INSERT INTO tenant_priority_classes (tenant, priority_class) "
    "SELECT :name, unnest(CAST(:classes AS text[])) ON CONFLICT DO NOTHING"
)


def could_ever_hold_sql(tenant: str, demand: str) -> str:
    """The SQL form of ``Quota.could_ever_hold``: a condition on the tenants row aliased
    ``tenant`` and a row ``demand`` with cpu_millis, memory_bytes and gpu_shares columns and an
    ``extended`` object of extended amounts by name. Made from
    the quota's resource list, and held to the Python rule by a test.

    Per resource, as ``Quota.ceiling``: a tenant in no cohort holds at most its quota; a member
    its quota plus its borrowing limit, or anything with no limit (the difference, not the sum,
    is compared: a sum of two large amounts could overflow a bigint)."""

    def held(resource: str) -> str:
        need, nominal = f"{demand}.{resource}", f"{tenant}.{QUOTA_COLUMNS[resource]}"
        limit = f"{tenant}.{BORROWING_COLUMNS[resource]}"
        return (
            f"(({tenant}.cohort IS NULL AND {need} <= {nominal}) OR ({tenant}.cohort IS NOT NULL "
            f"AND ({limit} IS NULL OR {need} - {nominal} <= {limit})))"
        )

    holds = " AND ".join(held(r) for r in RESOURCES)
    # Extended resources are never borrowed: a named limit is the most, in a cohort or not.
    extended = (
        f"NOT EXISTS (SELECT 1 FROM jsonb_each_text({demand}.extended) d "
        f"WHERE {tenant}.quota_extended ? d.key "
        f"AND CAST(d.value AS numeric) > CAST({tenant}.quota_extended ->> d.key AS numeric))"
    )
    return (
        f"{tenant}.max_queued_jobs > 0 AND {tenant}.max_running_jobs > 0 AND {holds} AND {extended}"
    )


def _limit_params(limits: Limits | None, columns: Mapping[str, str]) -> dict[str, int | None]:
    return {column: None if limits is None else limits.of(r) for r, column in columns.items()}


def _params(settings: TenantSettings) -> dict[str, Any]:
    """A tenant's settings as the parameters of its columns (the reverse of
    ``gateway.db.mapping.tenant_settings_of``)."""
    quota, terms = settings.quota, settings.cohort
    return {
        "namespace": settings.namespace,
        **{column: getattr(quota, r) for r, column in QUOTA_COLUMNS.items()},
        "quota_extended": json_text(dict(quota.extended)),
        "max_running_jobs": quota.max_running_jobs,
        "max_queued_jobs": quota.max_queued_jobs,
        "weight": settings.weight,
        "max_priority": settings.max_priority,
        "preemption_policy": settings.preemption_policy.value,
        "pod_policy": json_text(policy_document(settings.pod_policy)),
        "cohort": None if terms is None else terms.cohort,
        **_limit_params(None if terms is None else terms.borrowing_limit, BORROWING_COLUMNS),
        **_limit_params(None if terms is None else terms.lending_limit, LENDING_COLUMNS),
    }


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _audit_view(tenant: Tenant | None) -> dict[str, Any] | None:
    """What the audit log keeps of a tenant: its settings, by column, and its priority classes."""
    if tenant is None:
        return None
    return {
        **_params(tenant.settings),
        "pod_policy": policy_document(tenant.settings.pod_policy),
        "quota_extended": dict(tenant.settings.quota.extended),
        "priority_classes": list(tenant.settings.priority_classes),
    }


async def _select(conn: AsyncConnection, name: str, *, lock: bool) -> Tenant | None:
    suffix = " FOR UPDATE" if lock else ""
    result = await conn.execute(
        text(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE name = :name{suffix}"), {"name": name}
    )
    row = result.mappings().first()
    return None if row is None else tenant_of(row)


async def _create(conn: AsyncConnection, name: str, settings: TenantSettings) -> Tenant:
    """Insert the tenant, with a new webhook signing secret, and its grants."""
    params = {"name": name, "secret": new_webhook_secret(), **_params(settings)}
    await conn.execute(_INSERT, params)
    return await _grant(conn, name, settings)


async def _update(conn: AsyncConnection, name: str, settings: TenantSettings) -> Tenant:
    await conn.execute(_UPDATE, {"name": name, **_params(settings)})
    return await _grant(conn, name, settings)


async def _grant(conn: AsyncConnection, name: str, settings: TenantSettings) -> Tenant:
    """Make the tenant's grants of priority classes ``settings``'s (a 422 naming each class that
    does not exist, before anything is granted); the tenant as it is now."""
    classes = list(settings.priority_classes)
    unknown = (await conn.execute(_UNKNOWN_CLASSES, {"classes": classes})).scalars().all()
    if unknown:
        raise _unknown_classes(unknown)
    await conn.execute(_REVOKE, {"name": name, "classes": classes})
    await conn.execute(_GRANT, {"name": name, "classes": classes})
    tenant = await _select(conn, name, lock=False)
    assert tenant is not None
    return tenant


async def _audit(
    conn: AsyncConnection,
    *,
    actor: str,
    action: AuditAction,
    tenant: str,
    before: Tenant | None,
    after: Tenant | None,
) -> None:
    await write_audit(
        conn,
        actor=actor,
        action=action,
        tenant=tenant,
        before=_audit_view(before),
        after=_audit_view(after),
    )


async def put(
    engine: AsyncEngine, name: str, settings: TenantSettings, *, actor: str
) -> tuple[Tenant, bool]:
    """Create or replace a tenant. Returns the tenant and whether it was created."""
    try:
        async with engine.begin() as conn:
            # Serialize writers of this tenant name, so create-or-replace has no race window.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext('tenant:' || :name))"), {"name": name}
            )
            before = await _select(conn, name, lock=True)
            if before is None:
                tenant = await _create(conn, name, settings)
            else:
                tenant = await _update(conn, name, settings)
            await _audit(
                conn,
                actor=actor,
                action=AuditAction.CREATE if before is None else AuditAction.REPLACE,
                tenant=name,
                before=before,
                after=tenant,
            )
    except IntegrityError as exc:
        refusal = _refusal(exc, settings)
        if refusal is None:
            raise
        raise refusal from exc
    return tenant, before is None


def _refusal(exc: IntegrityError, settings: TenantSettings) -> ValidationFailed | None:
    """What a tenant write the database refused means: a namespace another tenant has, or a
    cohort that does not exist (a 422 naming the field); None for anything else (a bug)."""
    if "uq_tenants_namespace" in str(exc.orig):
        namespace = settings.namespace
        detail = f"namespace {namespace!r} belongs to another tenant"
        return ValidationFailed([FieldProblem(pointer="/namespace", detail=detail)])
    if "fk_tenants_cohort_cohorts" in str(exc.orig) and settings.cohort is not None:
        return unknown_cohort(settings.cohort.cohort)
    if "fk_tenant_priority_classes_priority_class" in str(exc.orig):
        detail = "a priority class it names was deleted meanwhile; read the classes and retry"
        return ValidationFailed([FieldProblem(pointer="/priority_classes", detail=detail)])
    return None


def _unknown_classes(names: Sequence[str]) -> ValidationFailed:
    listed = ", ".join(repr(name) for name in names)
    which = (
        f"priority class {listed} does not"
        if len(names) == 1
        else f"priority classes {listed} do not"
    )
    detail = f"{which} exist (an admin creates classes: PUT /v1/admin/priority-classes/{{name}})"
    return ValidationFailed([FieldProblem(pointer="/priority_classes", detail=detail)])


def unknown_cohort(name: str) -> ValidationFailed:
    detail = f"cohort {name!r} does not exist (an admin creates it: PUT /v1/admin/cohorts/{name})"
    return ValidationFailed([FieldProblem(pointer="/cohort", detail=detail)])


async def get(engine: AsyncEngine, name: str) -> Tenant:
    async with engine.connect() as conn:
        tenant = await _select(conn, name, lock=False)
    if tenant is None:
        raise NotFound(f"tenant {name!r} does not exist")
    return tenant


async def list_all(engine: AsyncEngine) -> list[Tenant]:
    """Every tenant, by name."""
    async with engine.connect() as conn:
        result = await conn.execute(text(f"SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name"))
        return [tenant_of(row) for row in result.mappings()]


# Every tenant with what its live placements hold and how many jobs hold resources. Admission,
# /metrics and GET /v1/tenants/{tenant} all read usage through this one query (admission in the
# form without the queued count).
def _tenants_with_usage(*, count_queued: bool) -> str:
    """Every tenant with what its live placements hold and its running jobs (admitted or running)
    and, when ``count_queued``, its queued jobs (a scan of the queue: admission does without)."""
    states = "'queued', 'admitted', 'running'" if count_queued else "'admitted', 'running'"
    queued = ", count(*) FILTER (WHERE state = 'queued') AS queued" if count_queued else ""
    return f"""
    SELECT {tenant_columns("t")},
           COALESCE(u.cpu, 0) AS used_cpu, COALESCE(u.memory, 0) AS used_memory,
           COALESCE(u.gpu, 0) AS used_gpu, COALESCE(r.running, 0) AS running_jobs,
           COALESCE(x.extended, '{{}}'::jsonb) AS used_extended
           {", COALESCE(r.queued, 0) AS queued_jobs" if count_queued else ""}
    FROM tenants t
    LEFT JOIN (
        SELECT j.tenant, sum(p.cpu_millis) AS cpu, sum(p.memory_bytes) AS memory,
               sum(p.gpu_shares) AS gpu
        FROM placements p JOIN jobs j ON j.id = p.job_id
        WHERE p.released_at IS NULL GROUP BY j.tenant
    ) u ON u.tenant = t.name
    LEFT JOIN (
        SELECT tenant, jsonb_object_agg(name, amount) AS extended FROM (
            SELECT j.tenant, e.key AS name, sum(CAST(e.value AS bigint)) AS amount
            FROM placements p JOIN jobs j ON j.id = p.job_id
                 CROSS JOIN LATERAL jsonb_each_text(p.extended) e
            WHERE p.released_at IS NULL AND p.extended <> '{{}}'::jsonb
            GROUP BY j.tenant, e.key
        ) held GROUP BY tenant
    ) x ON x.tenant = t.name
    LEFT JOIN (
        SELECT tenant, count(*) FILTER (WHERE state <> 'queued') AS running{queued}
        FROM jobs WHERE state IN ({states}) GROUP BY tenant
    ) r ON r.tenant = t.name
"""


TENANTS_WITH_USAGE = _tenants_with_usage(count_queued=True)
#: What admission reads: no count of queued jobs, so its cost follows the running jobs only.
#: Each row carries the tenant's cohort terms, so admission lends and borrows within cohorts.
TENANTS_FOR_ADMISSION = _tenants_with_usage(count_queued=False)
_STATUS = text(TENANTS_WITH_USAGE + " WHERE t.name = :name")
#: A cohort's members with their usage (no queued counts: standings need none).
COHORT_MEMBERS = text(TENANTS_FOR_ADMISSION + " WHERE t.cohort = :cohort ORDER BY t.name")
SNAPSHOT = text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")


def held_of(rows: Iterable[Row]) -> dict[str, tuple[TenantSettings, TenantUsage]]:
    """``TENANTS_WITH_USAGE`` (or ``TENANTS_FOR_ADMISSION``) rows: each tenant's settings and
    usage by name, what standings are computed from."""
    return {row["name"]: (tenant_settings_of(row), usage_of(row)) for row in rows}


def statuses_of(rows: Iterable[Row]) -> list[TenantStatus]:
    """``TENANTS_WITH_USAGE`` rows as statuses, in their order, with standings: the rows hold
    every member of each cohort that any of them belongs to."""
    rows = list(rows)
    standing = standings_of(held_of(rows))
    return [tenant_status_of(row, standing[row["name"]]) for row in rows]


async def status(engine: AsyncEngine, name: str) -> TenantStatus:
    """The tenant with its current usage and job counts, and its standing in its cohort."""
    async with engine.connect() as conn:
        await conn.execute(SNAPSHOT)  # the tenant and its cohort's members, as of one moment
        row = (await conn.execute(_STATUS, {"name": name})).mappings().first()
        if row is None:
            raise NotFound(f"tenant {name!r} does not exist")
        members = []
        if row["cohort"] is not None:
            found = await conn.execute(COHORT_MEMBERS, {"cohort": row["cohort"]})
            members = [member for member in found.mappings() if member["name"] != name]
    standing = standings_of(held_of([row, *members]))
    return tenant_status_of(row, standing[name])


async def patch(
    engine: AsyncEngine,
    name: str,
    merge: Callable[[TenantSettings], TenantSettings],
    *,
    actor: str,
) -> Tenant:
    """Change some of a tenant's settings: ``merge`` maps its current settings to the new ones."""
    async with engine.begin() as conn:
        return await patch_in(conn, name, merge, actor=actor)


async def patch_in(
    conn: AsyncConnection,
    name: str,
    merge: Callable[[TenantSettings], TenantSettings],
    *,
    actor: str,
) -> Tenant:
    """``patch`` in the caller's transaction (several tenants at once, or a dry run that the
    caller rolls back)."""
    before = await _select(conn, name, lock=True)
    if before is None:
        raise NotFound(f"tenant {name!r} does not exist")
    settings = merge(before.settings)
    try:
        async with conn.begin_nested():
            tenant = await _update(conn, name, settings)
    except IntegrityError as exc:
        refusal = _refusal(exc, settings)
        if refusal is None:
            raise
        raise refusal from exc
    await _audit(
        conn, actor=actor, action=AuditAction.UPDATE, tenant=name, before=before, after=tenant
    )
    return tenant


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
        # The delete cascades through every finished job of the tenant, its events, placements
        # and deliveries: it may take longer than a request's statement may.
        await conn.execute(text("SET LOCAL statement_timeout = 0"))
        await conn.execute(text("DELETE FROM tenants WHERE name = :name"), {"name": name})
        await _audit(
            conn, actor=actor, action=AuditAction.DELETE, tenant=name, before=before, after=None
        )


async def create_first(
    engine: AsyncEngine, name: str, settings: TenantSettings, *, actor: str
) -> bool:
    """Create ``name`` only if there is no tenant at all yet. Returns whether it was created."""
    async with engine.begin() as conn:
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('tenant:' || :name))"), {"name": name}
        )
        if await conn.scalar(text("SELECT EXISTS (SELECT 1 FROM tenants)")):
            return False
        tenant = await _create(conn, name, settings)
        await _audit(
            conn, actor=actor, action=AuditAction.CREATE, tenant=name, before=None, after=tenant
        )
    return True


async def owning(engine: AsyncEngine, namespace: str) -> str | None:
    """The tenant whose Kubernetes namespace this is, if any."""
    async with engine.connect() as conn:
        name: str | None = await conn.scalar(
            text("SELECT name FROM tenants WHERE namespace = :ns"), {"ns": namespace}
        )
    return name
