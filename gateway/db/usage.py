"""Usage accounting: resources a tenant's jobs held in a time window, from placements.

A placement holds its resources from ``started_at`` (``created_at`` if it never started) until
``released_at`` (now while it is live); each interval is clipped to the window. GPU shares count
fractionally: 50 shares for an hour is half a GPU-hour.

A window's series cuts it into buckets of ``step`` seconds from its start (the last one ends with
the window, so it may be shorter) and clips each interval to each bucket. The totals and the
series read the same spans (``_SPANS``) in one transaction, so, as the buckets tile the window,
the series adds up to the totals (up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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


@dataclass(frozen=True, kw_only=True, slots=True)
class Bucket:
    """What a tenant's placements consumed in [starts, ends), one bucket of a series."""

    starts: datetime
    ends: datetime
    consumed: Consumption


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """A tenant's consumption in a window: by job (jobs that used nothing are left out) and,
    when a step was asked for, as a series of buckets covering the window."""

    jobs: tuple[JobConsumption, ...]
    series: tuple[Bucket, ...] | None


def bucket_count(since: datetime, until: datetime, step_seconds: int) -> int:
    """How many buckets of ``step_seconds`` cover [since, until) (the last may be shorter)."""
    return -(-(until - since) // timedelta(seconds=step_seconds))


# The tenant's placements that held something in [:since, :until), each held over
# [held_from, held_to).
_SPANS = """
    spans AS (
        SELECT p.job_id, p.cpu_millis, p.memory_bytes, p.gpu_shares,
               COALESCE(p.started_at, p.created_at) AS held_from,
               COALESCE(p.released_at, now()) AS held_to
        FROM placements p JOIN jobs j ON j.id = p.job_id
        WHERE j.tenant = :tenant
          AND COALESCE(p.started_at, p.created_at) < :until
          AND (p.released_at IS NULL OR p.released_at > :since)
    )
"""
# The hours a span held within [starts, ends).
_HOURS = (
    "GREATEST(0, EXTRACT(EPOCH FROM (LEAST(s.held_to, {ends}) - GREATEST(s.held_from, {starts}))))"
    " / 3600.0"
)
_SUMS = """
           COALESCE(sum(s.cpu_millis / 1000.0 * {hours}), 0) AS cpu_core_hours,
           COALESCE(sum(s.memory_bytes / 1073741824.0 * {hours}), 0) AS memory_gib_hours,
           COALESCE(sum(s.gpu_shares / 100.0 * {hours}), 0) AS gpu_hours
"""

_USAGE = text(
    f"""
    WITH {_SPANS}
    SELECT s.job_id, j.name,
           {_SUMS.format(hours=_HOURS.format(starts=":since", ends=":until"))}
    FROM spans s JOIN jobs j ON j.id = s.job_id
    GROUP BY s.job_id, j.name, j.seq
    ORDER BY j.seq
    """
)
# Bucket i is [since + i * step, since + (i + 1) * step), its end clipped to :until; a bucket
# no span reaches sums to 0 (the LEFT JOIN gives it one row of NULLs).
_SERIES = text(
    f"""
    WITH {_SPANS},
    buckets AS (
        SELECT CAST(:since AS timestamptz) + i * make_interval(secs => :step) AS starts,
               LEAST(
                   CAST(:since AS timestamptz) + (i + 1) * make_interval(secs => :step),
                   CAST(:until AS timestamptz)
               ) AS ends
        FROM generate_series(0, CAST(:buckets AS integer) - 1) AS i
    )
    SELECT b.starts, b.ends,
           {_SUMS.format(hours=_HOURS.format(starts="b.starts", ends="b.ends"))}
    FROM buckets b LEFT JOIN spans s ON s.held_from < b.ends AND s.held_to > b.starts
    GROUP BY b.starts, b.ends
    ORDER BY b.starts
    """
)


def _consumption_of(row: Any) -> Consumption:
    return Consumption(
        cpu_core_hours=float(row["cpu_core_hours"]),
        memory_gib_hours=float(row["memory_gib_hours"]),
        gpu_hours=float(row["gpu_hours"]),
    )


async def tenant_usage(
    engine: AsyncEngine,
    tenant: str,
    since: datetime,
    until: datetime,
    *,
    step_seconds: int | None = None,
) -> Usage:
    """What each of the tenant's jobs consumed in [since, until) and, with ``step_seconds``, the
    series of buckets of that many seconds. Raises NotFound for an unknown tenant. The caller
    bounds the number of buckets (``bucket_count``)."""
    params = {"tenant": tenant, "since": since, "until": until}
    series = None
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT 1 FROM tenants WHERE name = :t"), {"t": tenant})
        if not exists:
            raise NotFound(f"tenant {tenant!r} does not exist")
        rows = (await conn.execute(_USAGE, params)).mappings()
        jobs = tuple(
            JobConsumption(
                job_id=str(row["job_id"]), name=row["name"], consumed=_consumption_of(row)
            )
            for row in rows
        )
        if step_seconds is not None:
            buckets = bucket_count(since, until, step_seconds)
            rows = (
                await conn.execute(
                    _SERIES, {**params, "step": float(step_seconds), "buckets": buckets}
                )
            ).mappings()
            series = tuple(
                Bucket(starts=row["starts"], ends=row["ends"], consumed=_consumption_of(row))
                for row in rows
            )
    return Usage(jobs=jobs, series=series)
