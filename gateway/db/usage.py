"""Figures for observability, read from the database so every replica reports the same truth.

- ``metric_counts``: what /metrics reports about tenants and jobs (queued jobs by waiting reason,
  quotas and current usage, and counters derived from job_events, which is append-only).
- ``tenant_usage``: resources consumed by a tenant's jobs in a time window, from placements. A
  placement holds its resources from ``started_at`` (``created_at`` if it never started) until
  ``released_at`` (now while it is live); each interval is clipped to the window. GPU shares count
  fractionally: 50 shares for an hour is half a GPU-hour.
- ``events_after``: the event stream's pages. An event's place in the stream is its
  ``EventPosition``, (txid, id): the id of the transaction that wrote it, then its own id. Ids
  are taken from a sequence at insert, but transactions commit in any order, so a cursor on ids
  alone passes events whose transaction commits later. A page only holds rows whose txid is below
  the statement's snapshot xmin (every transaction with a smaller id has finished), and every
  transaction that commits later has an id at or above it: no event ever commits behind a
  cursor. The cost is latency: an event waits for every older writing transaction to finish.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.admission import load_holdings
from gateway.db.tenants import TENANTS_WITH_USAGE
from gateway.domain.scheduling.nodes import Holding
from gateway.errors import NotFound


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricCounts:
    tenants: Sequence[RowMapping]
    pending: Sequence[RowMapping]  # tenant, reason, jobs
    events: Sequence[RowMapping]  # tenant, type, reason, events
    holdings: tuple[Holding, ...]
    deliveries: Sequence[RowMapping]  # outcome, attempts
    waits: Sequence[float]  # seconds from queued (submit or requeue) to admitted, per admission


_PENDING = text(
    "SELECT tenant, COALESCE(reason, 'Pending') AS reason, count(*) AS jobs "
    "FROM jobs WHERE state = 'queued' GROUP BY 1, 2 ORDER BY 1, 2"
)
_EVENTS = text(
    "SELECT tenant, type, COALESCE(reason, '') AS reason, count(*) AS events FROM job_events "
    "WHERE type IN ('admitted', 'succeeded', 'failed', 'cancelled', 'requeued') "
    "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
)
_TENANTS = text(TENANTS_WITH_USAGE + " ORDER BY t.name")
_DELIVERIES = text(
    "SELECT outcome, count(*) AS attempts FROM webhook_attempts GROUP BY 1 ORDER BY 1"
)
# Each admission's wait: from the job's latest submitted or requeued event before it.
_WAITS = text(
    """
    SELECT extract(epoch FROM a.created_at - q.created_at) AS wait
    FROM job_events a
    CROSS JOIN LATERAL (
        SELECT created_at FROM job_events q
        WHERE q.job_id = a.job_id AND q.type IN ('submitted', 'requeued') AND q.id < a.id
        ORDER BY q.id DESC LIMIT 1
    ) q
    WHERE a.type = 'admitted'
    """
)


async def metric_counts(engine: AsyncEngine) -> MetricCounts:
    """Everything /metrics needs from the database, read in one repeatable-read snapshot."""
    async with engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        tenants = (await conn.execute(_TENANTS)).mappings().all()
        pending = (await conn.execute(_PENDING)).mappings().all()
        events = (await conn.execute(_EVENTS)).mappings().all()
        holdings = await load_holdings(conn)
        deliveries = (await conn.execute(_DELIVERIES)).mappings().all()
        waits = [max(0.0, float(row[0])) for row in await conn.execute(_WAITS)]
    return MetricCounts(
        tenants=tenants,
        pending=pending,
        events=events,
        holdings=holdings,
        deliveries=deliveries,
        waits=waits,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Consumption:
    cpu_core_hours: float
    memory_gib_hours: float
    gpu_hours: float


@dataclass(frozen=True, kw_only=True, slots=True)
class JobConsumption:
    job_id: str
    name: str
    consumed: Consumption


_USAGE = text(
    """
    WITH spans AS (
        SELECT p.job_id, p.cpu_millis, p.memory_bytes, p.gpu_shares,
               GREATEST(
                   0,
                   EXTRACT(EPOCH FROM (
                       LEAST(COALESCE(p.released_at, now()), :until)
                       - GREATEST(COALESCE(p.started_at, p.created_at), :since)
                   ))
               ) / 3600.0 AS hours
        FROM placements p JOIN jobs j ON j.id = p.job_id
        WHERE j.tenant = :tenant
          AND COALESCE(p.started_at, p.created_at) < :until
          AND (p.released_at IS NULL OR p.released_at > :since)
    )
    SELECT s.job_id, j.name,
           sum(s.cpu_millis / 1000.0 * s.hours) AS cpu_core_hours,
           sum(s.memory_bytes / 1073741824.0 * s.hours) AS memory_gib_hours,
           sum(s.gpu_shares / 100.0 * s.hours) AS gpu_hours
    FROM spans s JOIN jobs j ON j.id = s.job_id
    GROUP BY s.job_id, j.name, j.seq
    ORDER BY j.seq
    """
)


async def tenant_usage(
    engine: AsyncEngine, tenant: str, since: datetime, until: datetime
) -> list[JobConsumption]:
    """What each of the tenant's jobs consumed in [since, until); jobs that used nothing are left
    out. Raises NotFound for an unknown tenant."""
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT 1 FROM tenants WHERE name = :t"), {"t": tenant})
        if not exists:
            raise NotFound(f"tenant {tenant!r} does not exist")
        rows = (
            await conn.execute(_USAGE, {"tenant": tenant, "since": since, "until": until})
        ).mappings()
        return [
            JobConsumption(
                job_id=str(row["job_id"]),
                name=row["name"],
                consumed=Consumption(
                    cpu_core_hours=float(row["cpu_core_hours"]),
                    memory_gib_hours=float(row["memory_gib_hours"]),
                    gpu_hours=float(row["gpu_hours"]),
                ),
            )
            for row in rows
        ]


class EventPosition(NamedTuple):
    """Where an event stands in the stream, compared as a tuple: its transaction, then its id."""

    txid: int
    id: int


# Before every event: rows written before migration 0007 hold txid 0, ids start at 1.
STREAM_START = EventPosition(0, 0)

# Transaction ids travel as text: not every asyncpg release has a codec for xid8.
_EVENT_COLUMNS = (
    "id, CAST(txid AS text) AS txid, job_id, tenant, type, from_state, to_state, reason, "
    "message, actor, data, created_at"
)
# Only rows of transactions older than every running one: nothing can commit before them later.
_BELOW_HORIZON = "txid < pg_snapshot_xmin(pg_current_snapshot())"


def event_position(row: RowMapping) -> EventPosition:
    """The stream position of a row that ``events_after`` returned."""
    return EventPosition(int(row["txid"]), int(row["id"]))


async def events_after(
    engine: AsyncEngine,
    after: EventPosition,
    *,
    tenant: str | None,
    job_id: str | None,
    event_type: str | None,
    limit: int,
    tenants: Collection[str] | None = None,
) -> Sequence[RowMapping]:
    """Committed job_events rows positioned after ``after``, in stream order, filtered, for the
    event stream; ``tenants`` (when given) keeps only rows of those tenants. Rows of transactions
    still running, and of any younger transaction, wait for a later call (module docstring)."""
    if tenants is not None and not tenants:
        return []
    clauses = [
        "(txid, id) > (CAST(CAST(:after_txid AS text) AS xid8), :after_id)",
        _BELOW_HORIZON,
    ]
    params: dict[str, object] = {
        "after_txid": str(after.txid),
        "after_id": after.id,
        "limit": limit,
    }
    if tenants is not None:
        clauses.append("tenant = ANY(CAST(:tenants AS text[]))")
        params["tenants"] = sorted(set(tenants))
    if tenant is not None:
        clauses.append("tenant = :tenant")
        params["tenant"] = tenant
    if job_id is not None:
        clauses.append("job_id = CAST(:job_id AS uuid)")
        params["job_id"] = job_id
    if event_type is not None:
        clauses.append("type = :type")
        params["type"] = event_type
    # ORDER BY names the columns qualified: a bare txid would be the text output column, which
    # sorts "1000" before "999" while the cursor above compares xid8 numbers.
    sql = text(
        f"SELECT {_EVENT_COLUMNS} FROM job_events WHERE {' AND '.join(clauses)} "
        "ORDER BY job_events.txid, job_events.id LIMIT :limit"
    )
    async with engine.connect() as conn:
        return (await conn.execute(sql, params)).mappings().all()


_RESUME = text(
    """
    SELECT CAST((SELECT txid FROM job_events WHERE id = :id) AS text) AS txid,
           CAST((SELECT min(CAST(CAST(txid AS text) AS numeric)) FROM job_events WHERE id > :id)
                AS text) AS next_txid,
           CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text) AS horizon
    """
)


async def position_of_event(engine: AsyncEngine, event_id: int) -> EventPosition:
    """Where to resume the stream after the event with this plain id (the Last-Event-ID before
    positions, and the ids of a job's event list), so that no event is skipped:

    - after that event's own position, if it exists;
    - if it does not (never committed, or deleted with its job), after (T, event_id), T the
      smallest txid of the events with higher ids: every one of them is after that position;
    - never after a transaction that is still running (the horizon H, position (H, 0)): the
      client cannot have seen its events, whatever their ids. Such a resume may repeat events.
    """
    async with engine.connect() as conn:
        row = (await conn.execute(_RESUME, {"id": event_id})).one()
    unfinished = EventPosition(int(row.horizon), 0)
    txid = row.txid if row.txid is not None else row.next_txid
    if txid is None:
        return unfinished
    return min(EventPosition(int(txid), event_id), unfinished)
