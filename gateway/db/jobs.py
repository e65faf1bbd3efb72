"""Jobs: read, list, cancel, and the job's event history (submits: ``gateway.db.submits``).

What it returns are values (``Job``, ``JobEvent``; ``gateway.db.mapping`` maps the rows).

Every state change writes its job_events row (and its webhook outbox row, when the job's callback
subscribed to the event) in the same statement or transaction, so the history, the callbacks and
the state never disagree. Callers wake the admission loop afterwards through
``gateway.db.notify.Notifier`` (``Channel.JOBS``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.mapping import CLASS_COLUMNS, job_event_of, job_of
from gateway.db.transitions import JOB_COLUMNS, Change, move
from gateway.domain.lifecycle.records import Job, JobEvent
from gateway.domain.lifecycle.states import JobState
from gateway.errors import BadRequest, Conflict, NotFound

#: A whole job: what ``job_of`` reads.
_COLUMNS = f"{JOB_COLUMNS}, {CLASS_COLUMNS}"


def _parse_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError as exc:
        raise NotFound(f"job {job_id!r} does not exist") from exc


async def get(engine: AsyncEngine, job_id: str) -> Job:
    async with engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    text(f"SELECT {_COLUMNS} FROM jobs WHERE id = :id"),
                    {"id": _parse_id(job_id)},
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"job {job_id} does not exist")
    return job_of(row)


@dataclass(frozen=True, kw_only=True, slots=True)
class Page:
    """One page of jobs, in its list's order (submit order, or queue order for the queue);
    ``next_cursor`` is None on the last page."""

    items: tuple[Job, ...]
    next_cursor: str | None


#: A page cursor: ``s`` and a position (the OpenAPI document's ``Cursor`` pattern says the same).
CURSOR = re.compile(r"s[0-9]{1,18}")


def encode_cursor(seq: int) -> str:
    """The cursor of the page after ``seq``: any cursor of this shape is a valid position (a
    list from one that is past the end is empty), so a client can never hold a bad one."""
    return f"s{seq}"


def decode_cursor(cursor: str) -> int:
    if not CURSOR.fullmatch(cursor):
        raise BadRequest(f"cursor {cursor!r} is not one this server gave out (s and digits)")
    return int(cursor[1:])


async def list_jobs(
    engine: AsyncEngine,
    *,
    state: JobState | None,
    tenant: str | None,
    labels: Mapping[str, str],
    limit: int,
    after: int | None,
    tenants: Collection[str] | None = None,
    id_prefix: str | None = None,
    newest_first: bool = False,
) -> Page:
    """One page in submit order (``seq``), which never changes, so cursors stay valid; oldest
    first, or newest first (a cursor is then the position the next page starts below).

    ``tenants`` limits the page to those tenants' jobs (None: every tenant's); ``id_prefix`` to
    jobs whose id starts with it (how the CLI takes a short id)."""
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
        clauses.append("seq < :after" if newest_first else "seq > :after")
        params["after"] = after
    if id_prefix is not None:
        # A range over the uuid's text: the prefix padded with the lowest and highest digits.
        clauses.append("CAST(id AS text) LIKE :id_prefix")
        params["id_prefix"] = id_prefix.lower() + "%"
    query = text(
        f"SELECT {_COLUMNS} FROM jobs WHERE {' AND '.join(clauses)} "
        f"ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT :limit"
    )
    if labels:
        query = query.bindparams(bindparam("labels", type_=JSONB))
    async with engine.connect() as conn:
        rows = (await conn.execute(query, params)).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=tuple(map(job_of, rows)),
        next_cursor=encode_cursor(rows[-1]["seq"]) if more else None,
    )


#: A queue page's cursor: ``q``, the last job's queue position (2147483647 for a job without
#: one), ``-`` and its seq (the OpenAPI document's ``QueueCursor`` pattern says the same). Every
#: value of this shape is a position (the digits' bounds keep both numbers within bigint).
QUEUE_CURSOR = re.compile(r"q([0-9]{1,10})-([0-9]{1,18})")
#: Where a queued job without a position yet stands: after every job with one.
_UNPLACED = 2_147_483_647


def encode_queue_cursor(position: int | None, seq: int) -> str:
    return f"q{_UNPLACED if position is None else position}-{seq}"


def decode_queue_cursor(cursor: str) -> tuple[int, int]:
    """The (position, seq) a queue page resumes after."""
    match = QUEUE_CURSOR.fullmatch(cursor)
    if match is None:
        raise BadRequest(
            f"cursor {cursor!r} is not one this server gave out (q, digits, -, digits)"
        )
    return int(match[1]), int(match[2])


async def list_queue(
    engine: AsyncEngine,
    *,
    tenant: str | None,
    limit: int,
    after: tuple[int, int] | None,
    tenants: Collection[str] | None = None,
) -> Page:
    """One page of the queued jobs in queue order: the position the last admission cycle gave
    each (``queue_position``; jobs it has not placed yet last), then submit order (``seq``).

    ``tenants`` limits the page to those tenants' jobs (None: every tenant's). Positions change
    between cycles, so a client paging through a queue that moves may see a job twice or miss
    one that moved ahead of its cursor; within one cycle's positions every job comes once."""
    clauses = ["state = 'queued'"]
    params: dict[str, Any] = {"limit": limit + 1, "unplaced": _UNPLACED}
    if tenants is not None:
        clauses.append("tenant = ANY(:tenants)")
        params["tenants"] = sorted(tenants)
    if tenant is not None:
        clauses.append("tenant = :tenant")
        params["tenant"] = tenant
    if after is not None:
        # bigint: a cursor's position may be above any integer column's.
        clauses.append(
            "(COALESCE(queue_position, :unplaced), seq)"
            " > (CAST(:after_position AS bigint), CAST(:after_seq AS bigint))"
        )
        params["after_position"], params["after_seq"] = after
    query = text(
        f"SELECT {_COLUMNS} FROM jobs WHERE {' AND '.join(clauses)} "
        "ORDER BY COALESCE(queue_position, :unplaced), seq LIMIT :limit"
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query, params)).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    return Page(
        items=tuple(map(job_of, rows)),
        next_cursor=(
            encode_queue_cursor(last["queue_position"], last["seq"])
            if more and last is not None
            else None
        ),
    )


async def cancel(
    engine: AsyncEngine, job_id: str, *, actor: str | None, reason: str | None = None
) -> Job:
    """Cancel a live job; cancelling a cancelled job is a no-op; a finished job is a conflict.

    The job's message and the event say who cancelled it, and why when ``reason`` is given."""
    message = f"cancelled by {actor or 'a client'}" + (f": {reason}" if reason else "")
    ident = _parse_id(job_id)
    async with engine.begin() as conn:
        row = (
            (
                await conn.execute(
                    text(f"SELECT {_COLUMNS} FROM jobs WHERE id = :id FOR UPDATE"), {"id": ident}
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"job {job_id} does not exist")
        state = JobState(row["state"])
        if state is JobState.CANCELLED:
            return job_of(row)
        if state.terminal:
            raise Conflict(f"job {job_id} already {state.value}; it cannot be cancelled")
        # The row is locked: the move cannot miss. The cluster backend deletes the pods; their
        # resources are no longer Muster's to plan (the move releases the placements).
        await move(
            conn,
            JobState.CANCELLED,
            [
                Change(
                    job_id=str(ident),
                    from_state=state,
                    attempt=row["attempt"],
                    reason="Cancelled",
                    message=message,
                    actor=actor,
                )
            ],
            now=time.time(),
        )
        after = await conn.execute(
            text(f"SELECT {_COLUMNS} FROM jobs WHERE id = :id"), {"id": ident}
        )
        return job_of(after.mappings().one())


async def events(engine: AsyncEngine, job_id: str) -> tuple[JobEvent, ...]:
    """The job's history, oldest first."""
    ident = _parse_id(job_id)
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT 1 FROM jobs WHERE id = :id"), {"id": ident})
        if not exists:
            raise NotFound(f"job {job_id} does not exist")
        rows = (
            (
                await conn.execute(
                    text(
                        "SELECT id, job_id, tenant, type, from_state, to_state, reason, message, "
                        "actor, data, created_at FROM job_events WHERE job_id = :id ORDER BY id"
                    ),
                    {"id": ident},
                )
            )
            .mappings()
            .all()
        )
    return tuple(map(job_event_of, rows))
