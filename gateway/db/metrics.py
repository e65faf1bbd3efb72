"""What /metrics reports about tenants and jobs, read from the database so that every replica
reports the same truth: queued jobs by waiting reason, quotas, current usage and what each
tenant borrows and lends in its cohort, webhook deliveries, admission waits, and counters
derived from job_events, which is append-only."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.admission import load_holdings
from gateway.db.tenants import TENANTS_WITH_USAGE, statuses_of
from gateway.domain.lifecycle.states import EventType
from gateway.domain.scheduling.nodes import Holding
from gateway.domain.tenants import TenantStatus
from gateway.domain.webhooks import AttemptOutcome


@dataclass(frozen=True, kw_only=True, slots=True)
class QueuedCount:
    """How many of a tenant's jobs wait for one reason ('Pending' before any cycle saw them)."""

    tenant: str
    reason: str
    jobs: int


@dataclass(frozen=True, kw_only=True, slots=True)
class EventCount:
    """How many events of one type and reason ('' for none) a tenant's jobs have had; for
    requeues by preemption, which kind (``PreemptionReason``: '' for other events)."""

    tenant: str
    type: EventType
    reason: str
    events: int
    preemption: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class AttemptCount:
    """How many webhook delivery attempts came to one outcome."""

    outcome: AttemptOutcome
    attempts: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricCounts:
    """Everything /metrics reports from the database, read in one snapshot: every tenant with
    its usage and standing (by name), queued jobs by reason, events by type and reason (of the
    types that count admissions, ends and evictions), what live placements hold, delivery
    attempts by outcome, and each admission's wait in seconds (from queued, at submit or
    requeue, to admitted)."""

    tenants: tuple[TenantStatus, ...]
    pending: tuple[QueuedCount, ...]
    events: tuple[EventCount, ...]
    holdings: tuple[Holding, ...]
    deliveries: tuple[AttemptCount, ...]
    waits: tuple[float, ...]


_PENDING = text(
    "SELECT tenant, COALESCE(reason, 'Pending') AS reason, count(*) AS jobs "
    "FROM jobs WHERE state = 'queued' GROUP BY 1, 2 ORDER BY 1, 2"
)
_EVENTS = text(
    "SELECT tenant, type, COALESCE(reason, '') AS reason, "
    "COALESCE(data ->> 'preemption', '') AS preemption, count(*) AS events FROM job_events "
    "WHERE type IN ('admitted', 'succeeded', 'failed', 'cancelled', 'requeued') "
    "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
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
        tenants = tuple(statuses_of((await conn.execute(_TENANTS)).mappings()))
        pending = tuple(
            QueuedCount(tenant=row.tenant, reason=row.reason, jobs=int(row.jobs))
            for row in await conn.execute(_PENDING)
        )
        events = tuple(
            EventCount(
                tenant=row.tenant,
                type=EventType(row.type),
                reason=row.reason,
                events=int(row.events),
                preemption=row.preemption,
            )
            for row in await conn.execute(_EVENTS)
        )
        holdings = await load_holdings(conn)
        deliveries = tuple(
            AttemptCount(outcome=AttemptOutcome(row.outcome), attempts=int(row.attempts))
            for row in await conn.execute(_DELIVERIES)
        )
        waits = tuple(max(0.0, float(row.wait)) for row in await conn.execute(_WAITS))
    return MetricCounts(
        tenants=tenants,
        pending=pending,
        events=events,
        holdings=holdings,
        deliveries=deliveries,
        waits=waits,
    )
