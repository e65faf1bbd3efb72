"""Job rows: submit, read, list, cancel, and the job's event history.

Every state change writes its job_events row in the same statement or transaction, so the history
and the state never disagree. A submit is one SQL statement (job and event together), which
keeps the time a tenant's row is locked by the queued-job counter as short as it can be. Callers
wake the admission loop afterwards through ``gateway.db.notify.Notifier``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain.admission import Quota
from gateway.domain.jobspec import JobSpec, to_document
from gateway.domain.problems import FieldProblem
from gateway.domain.states import EventType, JobState
from gateway.errors import BadRequest, Conflict, NotFound, TooManyRequests, ValidationFailed

NOTIFY_CHANNEL = "muster_jobs"
QUEUED_CAP_SQLSTATE = "MU429"
QUEUED_CAP_RETRY_AFTER = 30

JOB_COLUMNS = (
    "id, seq, tenant, name, framework, state, reason, message, priority, attempt, spec, labels, "
    "submitted_by, created_at, updated_at, queued_at, not_before, admitted_at, started_at, "
    "finished_at, queue_position, tenant_queue_position"
)

_SUBMIT = text(
    f"""
    WITH job AS (
        INSERT INTO jobs (id, tenant, name, framework, state, priority, spec, labels,
                          idempotency_key, request_hash, submitted_by)
        VALUES (:id, :tenant, :name, :framework, 'queued', :priority, :spec, :labels,
                :idempotency_key, :request_hash, :actor)
        ON CONFLICT (tenant, idempotency_key) DO NOTHING
        RETURNING {JOB_COLUMNS}
    ), event AS (
        INSERT INTO job_events (job_id, tenant, type, to_state, actor)
        SELECT id, tenant, 'submitted', 'queued', :actor FROM job
    )
    SELECT job.* FROM job
    """
).bindparams(bindparam("spec", type_=JSONB), bindparam("labels", type_=JSONB))


_QUOTA = text(
    "SELECT quota_cpu_millis, quota_memory_bytes, quota_gpu_shares, max_running_jobs "
    "FROM tenants WHERE name = :tenant"
)


def quota_of(row: RowMapping) -> Quota:
    return Quota(
        cpu_millis=row["quota_cpu_millis"],
        memory_bytes=row["quota_memory_bytes"],
        gpu_shares=row["quota_gpu_shares"],
        max_running_jobs=row["max_running_jobs"],
    )


_BY_KEY = text(
    f"SELECT {JOB_COLUMNS}, request_hash FROM jobs "
    "WHERE tenant = :tenant AND idempotency_key = :key"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Submitted:
    job: RowMapping
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
    """
    params = {
        "id": uuid.uuid4(),
        "tenant": spec.tenant,
        "name": spec.name,
        "framework": spec.framework.value,
        "priority": spec.priority,
        "spec": to_document(spec),
        "labels": dict(spec.labels),
        "idempotency_key": idempotency_key,
        "request_hash": body_hash if idempotency_key else None,
        "actor": actor,
    }
    try:
        # Autocommit: the insert is one statement, so the tenant row the queued-job counter
        # locks is held only while that statement runs and commits, never across round trips.
        async with engine.connect() as base:
            conn = await base.execution_options(isolation_level="AUTOCOMMIT")
            found = (await conn.execute(_QUOTA, {"tenant": spec.tenant})).mappings().first()
            if found is None:
                raise _no_tenant(spec.tenant)
            admissible(quota_of(found))
            row = (await conn.execute(_SUBMIT, params)).mappings().first()
            if row is not None:
                return Submitted(job=row, created=True)
            earlier = (
                (await conn.execute(_BY_KEY, {"tenant": spec.tenant, "key": idempotency_key}))
                .mappings()
                .one()
            )
    except IntegrityError as exc:
        if "fk_jobs_tenant_tenants" in str(exc.orig):
            raise _no_tenant(spec.tenant) from exc
        if "uq_jobs_live_name" in str(exc.orig) and idempotency_key is not None:
            # A concurrent retry with the same key won the race: answer with its job.
            winner = await _by_key(engine, spec.tenant, idempotency_key)
            if winner is not None:
                return _replay(winner, body_hash)
        if "uq_jobs_live_name" in str(exc.orig):
            raise Conflict(
                f"tenant {spec.tenant!r} already has a live job named {spec.name!r}; "
                "pick another name or wait until it ends"
            ) from exc
        raise
    except DBAPIError as exc:
        if _sqlstate(exc) == QUEUED_CAP_SQLSTATE:
            raise TooManyRequests(
                f"tenant {spec.tenant!r} has reached its limit of queued jobs",
                retry_after_seconds=QUEUED_CAP_RETRY_AFTER,
            ) from exc
        raise
    return _replay(earlier, body_hash)


def _replay(earlier: RowMapping, body_hash: str) -> Submitted:
    if earlier["request_hash"] != body_hash:
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return Submitted(job=earlier, created=False)


async def _by_key(engine: AsyncEngine, tenant: str, key: str) -> RowMapping | None:
    async with engine.connect() as conn:
        result = await conn.execute(_BY_KEY, {"tenant": tenant, "key": key})
        return result.mappings().first()


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(
        getattr(orig, "__cause__", None), "sqlstate", None
    )
    return str(code) if code else None


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
) -> Page:
    """One page in submit order (``seq``), which never changes, so cursors stay valid."""
    clauses = ["TRUE"]
    params: dict[str, Any] = {"limit": limit + 1}
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


async def cancel(engine: AsyncEngine, job_id: str, *, actor: str | None) -> RowMapping:
    """Cancel a live job; cancelling a cancelled job is a no-op; a finished job is a conflict."""
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
                    {"id": ident, "message": f"cancelled by {actor or 'a client'}"},
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
                INSERT INTO job_events (job_id, tenant, type, from_state, to_state, reason, actor)
                VALUES (:id, :tenant, :type, :from_state, 'cancelled', 'Cancelled', :actor)
                """
            ),
            {
                "id": ident,
                "tenant": row["tenant"],
                "type": EventType.CANCELLED.value,
                "from_state": state.value,
                "actor": actor,
            },
        )
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
