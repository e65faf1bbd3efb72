"""Cohorts: tenants that lend each other the quota they leave idle.

Admins create, replace and delete cohorts; a tenant joins one through its own settings
(``gateway.db.tenants``). What this module returns are values (``Cohort``, ``CohortStatus`` of
``gateway.domain.tenants``; ``gateway.db.mapping`` maps the rows).

Invariants: every write appends one audit_log row naming the cohort, in the same transaction; a
cohort with members is never deleted (409; the foreign key from tenants.cohort backs this even
against a tenant joining at the same moment); a cohort's view reads the cohort and its members'
usage in one snapshot.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.audit import write_audit
from gateway.db.mapping import cohort_of
from gateway.db.tenants import COHORT_MEMBERS, SNAPSHOT, held_of
from gateway.domain.tenants import AuditAction, Cohort, CohortStatus, cohort_status
from gateway.errors import Conflict, NotFound

#: A cohort's columns, and its members' names, of the cohorts row aliased c.
COHORT_COLUMNS = (
    "c.name, c.description, c.created_at, c.updated_at, "
    "ARRAY(SELECT t.name FROM tenants t WHERE t.cohort = c.name ORDER BY t.name) AS members"
)
_SELECT = text(f"SELECT {COHORT_COLUMNS} FROM cohorts c WHERE c.name = :name")
_LIST = text(f"SELECT {COHORT_COLUMNS} FROM cohorts c ORDER BY c.name")
_INSERT = text("INSERT INTO cohorts (name, description) VALUES (:name, :description)")
_UPDATE = text(
    "UPDATE cohorts SET description = :description, updated_at = now() WHERE name = :name"
)


def _audit_view(cohort: Cohort | None) -> dict[str, Any] | None:
    """What the audit log keeps of a cohort: what an admin sets on it (its members are each
    tenant's own setting, audited with the tenant)."""
    return None if cohort is None else {"description": cohort.description}


async def _select(conn: AsyncConnection, name: str) -> Cohort | None:
    row = (await conn.execute(_SELECT, {"name": name})).mappings().first()
    return None if row is None else cohort_of(row)


async def put(
    engine: AsyncEngine, name: str, *, description: str, actor: str
) -> tuple[Cohort, bool]:
    """Create or replace a cohort. Returns the cohort and whether it was created."""
    async with engine.begin() as conn:
        # Serialize writers of this cohort name, so create-or-replace has no race window.
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('cohort:' || :name))"), {"name": name}
        )
        before = await _select(conn, name)
        params = {"name": name, "description": description}
        await conn.execute(_INSERT if before is None else _UPDATE, params)
        cohort = await _select(conn, name)
        assert cohort is not None
        await write_audit(
            conn,
            actor=actor,
            action=AuditAction.CREATE if before is None else AuditAction.REPLACE,
            cohort=name,
            before=_audit_view(before),
            after=_audit_view(cohort),
        )
    return cohort, before is None


async def describe_in(conn: AsyncConnection, name: str, *, description: str, actor: str) -> Cohort:
    """Change an existing cohort's description in the caller's transaction (audited)."""
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('cohort:' || :name))"), {"name": name}
    )
    before = await _select(conn, name)
    if before is None:
        raise NotFound(f"cohort {name!r} does not exist")
    await conn.execute(_UPDATE, {"name": name, "description": description})
    cohort = await _select(conn, name)
    assert cohort is not None
    await write_audit(
        conn,
        actor=actor,
        action=AuditAction.UPDATE,
        cohort=name,
        before=_audit_view(before),
        after=_audit_view(cohort),
    )
    return cohort


async def get_in(conn: AsyncConnection, name: str) -> Cohort:
    """The cohort with its members as the caller's transaction sees them."""
    cohort = await _select(conn, name)
    if cohort is None:
        raise NotFound(f"cohort {name!r} does not exist")
    return cohort


async def list_all(engine: AsyncEngine) -> list[Cohort]:
    """Every cohort, by name, with its members."""
    async with engine.connect() as conn:
        return [cohort_of(row) for row in (await conn.execute(_LIST)).mappings()]


async def delete(engine: AsyncEngine, name: str, *, actor: str) -> None:
    """Delete a cohort; refused (409) while any tenant is a member."""
    try:
        async with engine.begin() as conn:
            # Locked first, members read after: a tenant that joined while this waited for
            # the lock is counted (a statement sees what committed before it began).
            locked = await conn.scalar(
                text("SELECT name FROM cohorts WHERE name = :name FOR UPDATE"), {"name": name}
            )
            before = None if locked is None else await _select(conn, name)
            if before is None:
                raise NotFound(f"cohort {name!r} does not exist")
            if before.members:
                raise _has_members(name, before.members)
            await conn.execute(text("DELETE FROM cohorts WHERE name = :name"), {"name": name})
            await write_audit(
                conn,
                actor=actor,
                action=AuditAction.DELETE,
                cohort=name,
                before=_audit_view(before),
                after=None,
            )
    except IntegrityError as exc:  # a member joined after the count: the foreign key says so
        if "fk_tenants_cohort_cohorts" not in str(exc.orig):
            raise
        raise _has_members(name, ()) from exc


def _has_members(name: str, members: tuple[str, ...]) -> Conflict:
    which = f" ({', '.join(members)})" if members else ""
    return Conflict(
        f"cohort {name!r} still has members{which}; move each out first "
        '(PATCH /v1/admin/tenants/{tenant} with "cohort": null)'
    )


async def status(engine: AsyncEngine, name: str) -> CohortStatus:
    """The cohort with each member's standing and its idle quota, as of one moment."""
    async with engine.connect() as conn:
        await conn.execute(SNAPSHOT)
        cohort = await _select(conn, name)
        if cohort is None:
            raise NotFound(f"cohort {name!r} does not exist")
        members = (await conn.execute(COHORT_MEMBERS, {"cohort": name})).mappings()
        held = held_of(members)
    return cohort_status(cohort, held)
