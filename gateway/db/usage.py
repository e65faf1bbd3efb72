"""Usage accounting: resources a tenant's jobs held in a time window, from placements.

A placement holds its resources from ``started_at`` (``created_at`` if it never started) until
``released_at`` (now while it is live); each interval is clipped to the window. GPU shares count
fractionally: 50 shares for an hour is half a GPU-hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import NotFound


@dataclass(frozen=True, kw_only=True, slots=True)
class Consumption:
    """Resources held over time: core-hours of CPU, GiB-hours of memory, GPU-hours (fractional
    for shares of a device)."""

    cpu_core_hours: float
    memory_gib_hours: float
    gpu_hours: float


@dataclass(frozen=True, kw_only=True, slots=True)
class JobConsumption:
    """What one job's placements consumed in a window."""

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
