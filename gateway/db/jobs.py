"""Job rows: submit, read, list, cancel, and the job's event history.

Every state change writes its job_events row (and its webhook outbox row, when the job's callback
subscribed to the event) in the same statement or transaction, so the history, the callbacks and
the state never disagree. A submit is one SQL statement (job, event and queue slot together);
max_queued_jobs is kept by queue slots (see ``gateway.db.models``), so submits of one tenant never
wait for each other. Callers wake the admission loop afterwards through
``gateway.db.notify.Notifier``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import random
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import RowMapping, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db import webhooks
from gateway.db.engine import driver_connection
from gateway.domain.jobspec import CallbackEvent, JobSpec, to_document
from gateway.domain.problems import FieldProblem
from gateway.domain.queueing import Quota
from gateway.domain.states import EventType, JobState
from gateway.errors import BadRequest, Conflict, NotFound, TooManyRequests, ValidationFailed

NOTIFY_CHANNEL = "muster_jobs"

JOB_COLUMNS = (
    "id, seq, tenant, name, framework, state, reason, message, priority, attempt, spec, labels, "
    "submitted_by, created_at, updated_at, queued_at, not_before, admitted_at, started_at, "
    "finished_at, queue_position, tenant_queue_position"
)

# Submits run on the driver connection directly (positional asyncpg SQL): this is the hottest
# path in Muster, and SQLAlchemy's statement layer cost several times the round trip itself.
_RETURNED = [c.strip() for c in JOB_COLUMNS.split(",") if c.strip() not in ("spec", "labels")]
_SUBMIT = f"""
    WITH job AS (
        INSERT INTO jobs (id, tenant, name, framework, state, priority, spec, labels,
                          idempotency_key, request_hash, submitted_by, queue_slot)
        VALUES ($1, $2, $3, $4, 'queued', $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11)
        ON CONFLICT (tenant, idempotency_key) DO NOTHING
        RETURNING {", ".join(_RETURNED)}
    ), event AS (
        INSERT INTO job_events (job_id, tenant, type, to_state, actor)
        SELECT id, tenant, 'submitted', 'queued', $10 FROM job
    )
    SELECT * FROM job
"""
# The same insert, for a tenant that exists and whose quota holds the whole job, in a random slot.
_SUBMIT_FAST = f"""
    WITH tenant AS (
        SELECT name, max_queued_jobs FROM tenants
        WHERE name = $2 AND max_queued_jobs > 0 AND max_running_jobs > 0
          AND quota_cpu_millis >= $11 AND quota_memory_bytes >= $12 AND quota_gpu_shares >= $13
    ), job AS (
        INSERT INTO jobs (id, tenant, name, framework, state, priority, spec, labels,
                          idempotency_key, request_hash, submitted_by, queue_slot)
        SELECT $1, tenant.name, $3, $4, 'queued', $5, $6::jsonb, $7::jsonb, $8, $9, $10,
               floor(random() * tenant.max_queued_jobs)::int
        FROM tenant
        ON CONFLICT (tenant, idempotency_key) DO NOTHING
        RETURNING {", ".join(_RETURNED)}
    ), event AS (
        INSERT INTO job_events (job_id, tenant, type, to_state, actor)
        SELECT id, tenant, 'submitted', 'queued', $10 FROM job
    )
    SELECT * FROM job
"""
UNBOUNDED = Quota(cpu_millis=2**62, memory_bytes=2**62, gpu_shares=2**62, max_running_jobs=2**30)
_QUOTA = (
    "SELECT quota_cpu_millis, quota_memory_bytes, quota_gpu_shares, max_running_jobs, "
    "max_queued_jobs FROM tenants WHERE name = $1"
)
# A free slot, searched upwards from a random start and wrapping around; the count first, so a
# tenant at its cap is refused without a scan.
_SLOTS_TAKEN = (
    "SELECT count(*) FROM jobs WHERE tenant = $1 AND state = 'queued' AND queue_slot IS NOT NULL"
)
_FREE_SLOT = """
    SELECT s FROM (
        SELECT s FROM generate_series($2::int, $3::int - 1) AS s
        UNION ALL SELECT s FROM generate_series(0, $2::int - 1) AS s
    ) candidates
    WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE tenant = $1 AND state = 'queued'
                      AND queue_slot = candidates.s)
    LIMIT 1
"""
SLOT_TRIES = 6
QUEUED_CAP_RETRY_AFTER = 30

_BY_KEY = text(
    f"SELECT {JOB_COLUMNS}, request_hash FROM jobs "
    "WHERE tenant = :tenant AND idempotency_key = :key"
)


def quota_of(row: Mapping[str, Any]) -> Quota:
    return Quota(
        cpu_millis=row["quota_cpu_millis"],
        memory_bytes=row["quota_memory_bytes"],
        gpu_shares=row["quota_gpu_shares"],
        max_running_jobs=row["max_running_jobs"],
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Submitted:
    job: Mapping[Any, Any]
    created: bool


def request_hash(body: Mapping[str, Any]) -> str:
    """A digest of the body's meaning: key order and whitespace do not change it."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def submit(
    engine: AsyncEngine,
    spec: JobSpec,
    *,
    body_hash: str,
    idempotency_key: str | None,
    actor: str | None,
    admissible: Callable[[Quota], None],
) -> Submitted:
    """Insert a queued job with its 'submitted' event, or return the job an earlier retry made.

    ``admissible`` sees the tenant's quota first and raises to refuse a job that can never run.
    Each statement commits on its own: the insert (job, event and queue slot) is one statement.
    """
    document = to_document(spec)
    labels = dict(spec.labels)
    args = [
        uuid.uuid4(),
        spec.tenant,
        spec.name,
        spec.framework.value,
        spec.priority,
        json.dumps(document),
        json.dumps(labels),
        idempotency_key,
        body_hash if idempotency_key else None,
        actor,
    ]
    # The node part of the "can it ever run" check needs no database.
    admissible(UNBOUNDED)
    total = spec.total()
    async with driver_connection(engine) as conn:
        # 1. The common case in one round trip: the tenant exists, the job is within its quota,
        #    and a random queue slot is free. Anything else takes the careful path below.
        with contextlib.suppress(asyncpg.UniqueViolationError):
            row = await conn.fetchrow(
                _SUBMIT_FAST, *args, total.cpu_millis, total.memory_bytes, total.gpu_shares
            )
            if row is not None:
                return Submitted(job={**row, "spec": document, "labels": labels}, created=True)
        # 2. The careful path: say why, or find a slot, or answer an earlier retry.
        found = await conn.fetchrow(_QUOTA, spec.tenant)
        if found is None:
            raise _no_tenant(spec.tenant)
        admissible(quota_of(found))
        cap: int = found["max_queued_jobs"]
        for attempt in range(SLOT_TRIES):
            slot = await _pick_slot(conn, spec.tenant, cap, search=attempt >= SLOT_TRIES // 2)
            if slot is None:
                break
            try:
                row = await conn.fetchrow(_SUBMIT, *args, slot)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "uq_jobs_queue_slot":
                    continue  # another submit took this slot a moment ago
                if exc.constraint_name == "uq_jobs_live_name":
                    return await _live_name_taken(engine, spec, idempotency_key, body_hash, exc)
                raise
            except asyncpg.ForeignKeyViolationError as exc:
                raise _no_tenant(spec.tenant) from exc
            if row is None:  # the Idempotency-Key was used before
                break
            return Submitted(job={**row, "spec": document, "labels": labels}, created=True)
    if idempotency_key is not None:
        earlier = await _by_key(engine, spec.tenant, idempotency_key)
        if earlier is not None:
            return _replay(earlier, body_hash)
    raise TooManyRequests(
        f"tenant {spec.tenant!r} has {cap} queued jobs, its limit; retry when some are admitted",
        retry_after_seconds=QUEUED_CAP_RETRY_AFTER,
    )


async def _pick_slot(
    conn: asyncpg.Connection, tenant: str, cap: int, *, search: bool
) -> int | None:
    """A queue slot below ``cap`` to try: at random first, then by searching for a free one."""
    if cap <= 0:
        return None
    start = random.randrange(cap)
    if not search:
        return start
    if await conn.fetchval(_SLOTS_TAKEN, tenant) >= cap:
        return None
    found: int | None = await conn.fetchval(_FREE_SLOT, tenant, start, cap)
    return found


async def _live_name_taken(
    engine: AsyncEngine,
    spec: JobSpec,
    idempotency_key: str | None,
    body_hash: str,
    exc: Exception,
) -> Submitted:
    if idempotency_key is not None:
        # A concurrent retry with the same key won the race: answer with its job.
        winner = await _by_key(engine, spec.tenant, idempotency_key)
        if winner is not None:
            return _replay(winner, body_hash)
    raise Conflict(
        f"tenant {spec.tenant!r} already has a live job named {spec.name!r}; "
        "pick another name or wait until it ends"
    ) from exc


def _replay(earlier: RowMapping, body_hash: str) -> Submitted:
    if earlier["request_hash"] != body_hash:
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return Submitted(job=earlier, created=False)


async def _by_key(engine: AsyncEngine, tenant: str, key: str) -> RowMapping | None:
    async with engine.connect() as conn:
        result = await conn.execute(_BY_KEY, {"tenant": tenant, "key": key})
        return result.mappings().first()


def _no_tenant(tenant: str) -> ValidationFailed:
    return ValidationFailed(
        [FieldProblem(pointer="/tenant", detail=f"tenant {tenant!r} does not exist")]
    )


def _parse_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError as exc:
        raise NotFound(f"job {job_id!r} does not exist") from exc


async def get(engine: AsyncEngine, job_id: str) -> RowMapping:
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id"),
                    {"id": _parse_id(job_id)},
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"job {job_id} does not exist")
    return row


@dataclass(frozen=True, kw_only=True, slots=True)
class Page:
    items: Sequence[RowMapping]
    next_cursor: str | None


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("s"):
            raise ValueError(raw)
        seq = int(raw[1:])
        if not 0 <= seq < 2**63:
            raise ValueError(raw)
        return seq
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"cursor {cursor!r} is not one this server gave out") from exc


async def list_jobs(
    engine: AsyncEngine,
    *,
    state: JobState | None,
    tenant: str | None,
    labels: Mapping[str, str],
    limit: int,
    after: int | None,
    tenants: Collection[str] | None = None,
) -> Page:
    """One page in submit order (``seq``), which never changes, so cursors stay valid.

    ``tenants`` limits the page to those tenants' jobs (None: every tenant's)."""
    clauses = ["TRUE"]
    params: dict[str, Any] = {"limit": limit + 1}
    if tenants is not None:
        clauses.append("tenant = ANY(:tenants)")
        params["tenants"] = sorted(tenants)
    if state is not None:
        clauses.append("state = :state")
        params["state"] = state.value
    if tenant is not None:
        clauses.append("tenant = :tenant")
        params["tenant"] = tenant
    if labels:
        clauses.append("labels @> :labels")
        params["labels"] = dict(labels)
    if after is not None:
        clauses.append("seq > :after")
        params["after"] = after
    query = text(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT :limit"
    )
    if labels:
        query = query.bindparams(bindparam("labels", type_=JSONB))
    async with engine.connect() as conn:
        rows = (await conn.execute(query, params)).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=rows, next_cursor=encode_cursor(rows[-1]["seq"]) if more else None)


async def cancel(
    engine: AsyncEngine, job_id: str, *, actor: str | None, reason: str | None = None
) -> RowMapping:
    """Cancel a live job; cancelling a cancelled job is a no-op; a finished job is a conflict.

    The job's message and the event say who cancelled it, and why when ``reason`` is given."""
    message = f"cancelled by {actor or 'a client'}" + (f": {reason}" if reason else "")
    ident = _parse_id(job_id)
    async with engine.begin() as conn:
        row = (
            (
                await conn.execute(
                    text(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id FOR UPDATE"), {"id": ident}
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"job {job_id} does not exist")
        state = JobState(row["state"])
        if state is JobState.CANCELLED:
            return row
        if state.terminal:
            raise Conflict(f"job {job_id} already {state.value}; it cannot be cancelled")
        updated = (
            (
                await conn.execute(
                    text(
                        f"""
                    UPDATE jobs SET state = 'cancelled', reason = 'Cancelled',
                        message = :message, finished_at = now(), updated_at = now(),
                        queue_position = NULL, tenant_queue_position = NULL
                    WHERE id = :id RETURNING {JOB_COLUMNS}
                    """
                    ),
                    {"id": ident, "message": message},
                )
            )
            .mappings()
            .one()
        )
        # The cluster backend deletes the pods; their resources are no longer Muster's to plan.
        await conn.execute(
            text(
                "UPDATE placements SET released_at = now() WHERE job_id = :id "
                "AND released_at IS NULL"
            ),
            {"id": ident},
        )
        await conn.execute(
            text(
                """
                INSERT INTO job_events
                    (job_id, tenant, type, from_state, to_state, reason, message, actor)
                VALUES
                    (:id, :tenant, :type, :from_state, 'cancelled', 'Cancelled', :message, :actor)
                """
            ),
            {
                "id": ident,
                "tenant": row["tenant"],
                "type": EventType.CANCELLED.value,
                "from_state": state.value,
                "message": message,
                "actor": actor,
            },
        )
        await webhooks.enqueue(conn, ident, CallbackEvent.CANCELLED)
    return updated


async def events(engine: AsyncEngine, job_id: str) -> Sequence[RowMapping]:
    ident = _parse_id(job_id)
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT 1 FROM jobs WHERE id = :id"), {"id": ident})
        if not exists:
            raise NotFound(f"job {job_id} does not exist")
        rows = (
            (
                await conn.execute(
                    text(
                        "SELECT id, job_id, type, from_state, to_state, reason, message, actor, "
                        "data, created_at FROM job_events WHERE job_id = :id ORDER BY id"
                    ),
                    {"id": ident},
                )
            )
            .mappings()
            .all()
        )
    return rows
