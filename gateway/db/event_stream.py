"""The event stream's pages: job events after a position, in transaction order.

An event's place in the stream is its ``EventPosition``, (txid, id): the id of the transaction
that wrote it, then its own id. Ids are taken from a sequence at insert, but transactions commit
in any order, so a cursor on ids alone passes events whose transaction commits later. A page only
holds rows whose txid is below the statement's snapshot xmin (every transaction with a smaller id
has finished), and every transaction that commits later has an id at or above it: no event ever
commits behind a cursor. The cost is latency: an event waits for every older writing transaction
to finish.

A page is a list of ``StreamedEvent`` values: each ``JobEvent`` with its position.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.mapping import job_event_of
from gateway.domain.lifecycle.records import JobEvent


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


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamedEvent:
    """A job event and its place in the stream (``position.id`` is the event's id)."""

    position: EventPosition
    event: JobEvent


async def events_after(
    engine: AsyncEngine,
    after: EventPosition,
    *,
    tenant: str | None,
    job_id: str | None,
    event_type: str | None,
    limit: int,
    tenants: Collection[str] | None = None,
) -> list[StreamedEvent]:
    """Committed job events positioned after ``after``, in stream order, filtered, for the
    event stream; ``tenants`` (when given) keeps only events of those tenants. Events of
    transactions still running, and of any younger transaction, wait for a later call (module
    docstring)."""
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
        rows = (await conn.execute(sql, params)).mappings().all()
    return [
        StreamedEvent(
            position=EventPosition(int(row["txid"]), int(row["id"])), event=job_event_of(row)
        )
        for row in rows
    ]


_NOW = text("SELECT CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text)")


async def stream_now(engine: AsyncEngine) -> EventPosition:
    """The position ``now``: (H, 0), H the horizon, the oldest transaction still running. A
    stream from it misses nothing written later:

    - every transaction below H has finished, so its events are all written, and all before
      (H, 0);
    - every transaction that had not finished (H itself, those above it still running) and every
      one that starts later has a txid of at least H, and event ids start at 1, so each of their
      events is after (H, 0), whenever it commits.

    It may stream a few events that committed before the call: those of transactions above H that
    finished while an older one was still open (a position cannot tell them from the ones still
    running). It never skips one."""
    async with engine.connect() as conn:
        horizon = await conn.scalar(_NOW)
    return EventPosition(int(horizon), 0)


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
