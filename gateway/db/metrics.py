"""What /metrics reports about tenants and jobs, read from the database so that every replica
reports the same truth: queued jobs by waiting reason, quotas and current usage, webhook
deliveries, admission waits, and counters derived from job_events, which is append-only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.admission import load_holdings
from gateway.db.tenants import TENANTS_WITH_USAGE
from gateway.domain.scheduling.nodes import Holding


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
