"""A job's replicas as placed: where each pod of the job's latest attempt runs or ran.

Invariant: only the latest attempt's placements are read (one row per pod, by the placements'
unique key), so a job that was requeued shows where it runs now, not where it ran before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.mapping import extended_of, gpu_slices
from gateway.domain.resources import Extended
from gateway.domain.scheduling.nodes import GpuSlice


@dataclass(frozen=True, kw_only=True, slots=True)
class PlacedReplica:
    pod_name: str
    role: str
    index: int
    attempt: int
    node: str
    cpu_millis: int
    memory_bytes: int
    gpu_shares: int
    gpu: tuple[GpuSlice, ...]
    extended: Extended
    started_at: datetime | None
    released_at: datetime | None


_REPLICAS = text(
    """
    SELECT pod_name, role, replica_index, attempt, node, cpu_millis, memory_bytes, gpu_shares,
           gpu, extended, started_at, released_at
    FROM placements
    WHERE job_id = CAST(:job_id AS uuid)
      AND attempt = (SELECT max(attempt) FROM placements WHERE job_id = CAST(:job_id AS uuid))
    ORDER BY role, replica_index
    """
)


async def of_job(engine: AsyncEngine, job_id: str) -> list[PlacedReplica]:
    """The placements of the job's latest attempt, by role then index; none before admission."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_REPLICAS, {"job_id": job_id})).mappings().all()
    return [
        PlacedReplica(
            pod_name=row["pod_name"],
            role=row["role"],
            index=row["replica_index"],
            attempt=row["attempt"],
            node=row["node"],
            cpu_millis=row["cpu_millis"],
            memory_bytes=row["memory_bytes"],
            gpu_shares=row["gpu_shares"],
            gpu=gpu_slices(row["gpu"]),
            extended=extended_of(row["extended"]),
            started_at=row["started_at"],
            released_at=row["released_at"],
        )
        for row in rows
    ]
