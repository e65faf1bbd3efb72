"""Priority classes: admins define them; a tenant is granted some through its own settings
(``gateway.db.tenants``), and its jobs name one at submit (``gateway.db.careful_submit``).

What this module returns are values (``PriorityClassRecord`` of ``gateway.domain.tenants``;
``gateway.db.mapping`` maps the rows).

Invariants: every write appends one audit_log row naming the class, in the same transaction; a
class is never deleted while it is granted to a tenant (409; the foreign key from
tenant_priority_classes backs this even against a grant made at the same moment) or named by a
queued, admitted or running job (409; a submit holds the class's row from its read of the grant
to its commit, and the delete locks the row before it counts the jobs). A change to a class
changes only the jobs submitted after it: a job's priority and preemptibility are its own,
resolved at submit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.audit import write_audit
from gateway.db.mapping import priority_class_record_of
from gateway.domain.scheduling.priority import PriorityClass
from gateway.domain.tenants import AuditAction, PriorityClassRecord
from gateway.errors import Conflict, NotFound

#: A class's columns, and the names of the tenants it is granted to, of the row aliased c.
CLASS_COLUMNS = (
    "c.name, c.value, c.preemptible, c.description, c.created_at, c.updated_at, "
    "ARRAY(SELECT g.tenant FROM tenant_priority_classes g WHERE g.priority_class = c.name "
    "ORDER BY g.tenant) AS tenants"
)
_SELECT = text(f"SELECT {CLASS_COLUMNS} FROM priority_classes c WHERE c.name = :name")
_LIST = text(f"SELECT {CLASS_COLUMNS} FROM priority_classes c ORDER BY c.value DESC, c.name")
_INSERT = text(
    "INSERT INTO priority_classes (name, value, preemptible, description) "
    "VALUES (:name, :value, :preemptible, :description)"
)
_UPDATE = text(
    "UPDATE priority_classes SET value = :value, preemptible = :preemptible, "
    "description = :description, updated_at = now() WHERE name = :name"
)
_LOCK = text("SELECT name FROM priority_classes WHERE name = :name FOR UPDATE")
# The live jobs that name the class (the partial index ix_jobs_live_priority_class).
_LIVE_JOBS = text(
    "SELECT count(*) FROM jobs WHERE priority_class = :name "
    "AND state IN ('queued', 'admitted', 'running')"
)
_DELETE = text("DELETE FROM priority_classes WHERE name = :name")


def _audit_view(record: PriorityClassRecord | None) -> dict[str, Any] | None:
    """What the audit log keeps of a class: what an admin sets on it (its grants are each
    tenant's own setting, audited with the tenant)."""
    if record is None:
        return None
    return {
        "value": record.priority_class.value,
        "preemptible": record.priority_class.preemptible,
        "description": record.description,
    }


async def _select(conn: AsyncConnection, name: str) -> PriorityClassRecord | None:
    row = (await conn.execute(_SELECT, {"name": name})).mappings().first()
    return None if row is None else priority_class_record_of(row)


async def put(
    engine: AsyncEngine, priority_class: PriorityClass, *, description: str, actor: str
) -> tuple[PriorityClassRecord, bool]:
    """Create or replace a class. Returns it and whether it was created. Jobs submitted with it
    before keep the value and preemptibility they were given."""
    name = priority_class.name
    async with engine.begin() as conn:
        # Serialize writers of this class name, so create-or-replace has no race window.
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('priority-class:' || :name))"),
            {"name": name},
        )
        before = await _select(conn, name)
        params = {
            "name": name,
            "value": priority_class.value,
            "preemptible": priority_class.preemptible,
            "description": description,
        }
        await conn.execute(_INSERT if before is None else _UPDATE, params)
        record = await _select(conn, name)
        assert record is not None
        await write_audit(
            conn,
            actor=actor,
            action=AuditAction.CREATE if before is None else AuditAction.REPLACE,
            priority_class=name,
            before=_audit_view(before),
            after=_audit_view(record),
        )
    return record, before is None


async def get(engine: AsyncEngine, name: str) -> PriorityClassRecord:
    async with engine.connect() as conn:
        record = await _select(conn, name)
    if record is None:
        raise missing(name)
    return record


async def list_all(engine: AsyncEngine) -> list[PriorityClassRecord]:
    """Every class, highest value first (then by name), with the tenants granted it."""
    async with engine.connect() as conn:
        return [priority_class_record_of(row) for row in (await conn.execute(_LIST)).mappings()]


async def delete(engine: AsyncEngine, name: str, *, actor: str) -> None:
    """Delete a class; refused (409) while it is granted to a tenant or named by a live job."""
    try:
        async with engine.begin() as conn:
            # Locked first, grants and jobs read after: a submit that holds the class (it read
            # a grant of it) commits before this reads the jobs, and one that comes later finds
            # no grant (none is left, or this refuses).
            locked = await conn.scalar(_LOCK, {"name": name})
            before = None if locked is None else await _select(conn, name)
            if before is None:
                raise missing(name)
            if before.tenants:
                raise _granted(name, before.tenants)
            live = int(await conn.scalar(_LIVE_JOBS, {"name": name}) or 0)
            if live:
                raise Conflict(
                    f"priority class {name!r} is named by {live} queued or running jobs; "
                    "delete it once they have ended (or cancel them)"
                )
            await conn.execute(_DELETE, {"name": name})
            await write_audit(
                conn,
                actor=actor,
                action=AuditAction.DELETE,
                priority_class=name,
                before=_audit_view(before),
                after=None,
            )
    except IntegrityError as exc:  # granted after the read: the foreign key says so
        if "fk_tenant_priority_classes_priority_class" not in str(exc.orig):
            raise
        raise _granted(name, ()) from exc


def missing(name: str) -> NotFound:
    return NotFound(f"priority class {name!r} does not exist")


def _granted(name: str, tenants: tuple[str, ...]) -> Conflict:
    which = f" ({', '.join(tenants)})" if tenants else ""
    return Conflict(
        f"priority class {name!r} is still granted to tenants{which}; take it from each first "
        '(PATCH /v1/admin/tenants/{tenant} with "priority_classes" without it)'
    )
