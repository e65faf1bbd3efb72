"""One admission cycle against the database: load the snapshot, ask the core, write the plan.

The whole cycle runs in ONE transaction that first takes an advisory transaction lock
(``ADMISSION_LOCK``). Only the leader runs cycles, but that lock makes safety independent of
leadership: even two processes that both believe they lead cannot interleave cycles, so a job is
admitted at most once and no quota or node is over-committed by Muster. Every admission is guarded
by ``state = 'queued' AND attempt = <the attempt we planned>``, so a job cancelled while the cycle
thought cannot be admitted.

Specs are parsed once per job and cached (a job's spec never changes).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.tenants import TENANTS_WITH_USAGE
from gateway.db.webhooks import enqueue_sql
from gateway.domain.admission import (
    AdmissionPlan,
    PendingJob,
    Quota,
    Snapshot,
    TenantState,
    Usage,
    plan,
)
from gateway.domain.jobspec import CallbackEvent
from gateway.domain.placement import GpuSlice, Holding, Node, PodRequest
from gateway.domain.pods import pod_requests_from_document

ADMISSION_LOCK = 0x6D75_0001
ADMITTED_CHANNEL = "muster_admitted"


@dataclass(frozen=True, kw_only=True, slots=True)
class CycleResult:
    considered: int
    admitted: tuple[str, ...]
    seconds: float
    plan: AdmissionPlan


class SpecCache:
    """Pod requests per job id; entries for jobs that left the queue are dropped each cycle."""

    def __init__(self) -> None:
        self._pods: dict[str, tuple[PodRequest, ...]] = {}

    def missing(self, job_ids: Sequence[str]) -> list[str]:
        return [job_id for job_id in job_ids if job_id not in self._pods]

    def add(self, job_id: str, spec: Mapping[str, Any]) -> None:
        # Stored specs were checked at submit and written complete by to_document.
        self._pods[job_id] = pod_requests_from_document(spec)

    def pods(self, job_id: str) -> tuple[PodRequest, ...]:
        return self._pods[job_id]

    def keep_only(self, job_ids: set[str]) -> None:
        for job_id in [k for k in self._pods if k not in job_ids]:
            del self._pods[job_id]


_TENANTS = text(TENANTS_WITH_USAGE)

_HOLDINGS = text(
    "SELECT node, cpu_millis, memory_bytes, gpu FROM placements WHERE released_at IS NULL"
)

_QUEUED = text(
    """
    SELECT id, tenant, priority, attempt, created_at, queued_at, not_before, reason,
           message, queue_position, tenant_queue_position
    FROM jobs WHERE state = 'queued' ORDER BY seq
    """
)

# The webhook outbox rows come from the admitted rows as updated (a CTE cannot see its sibling's
# update in the jobs table). Loops that deliver them LISTEN on ADMITTED_CHANNEL too.
_ADMIT = text(
    f"""
    WITH planned AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS int[]),
                             CAST(:data AS text[])) AS p(id, attempt, data)
    ), admitted AS (
        UPDATE jobs j SET state = 'admitted', admitted_at = to_timestamp(:now),
            updated_at = now(),
            reason = NULL, message = NULL, queue_position = NULL, tenant_queue_position = NULL
        FROM planned p
        WHERE j.id = p.id AND j.state = 'queued' AND j.attempt = p.attempt
        RETURNING j.*, p.data AS plan
    ), events AS (
        INSERT INTO job_events (job_id, tenant, type, from_state, to_state, reason, data)
        SELECT id, tenant, 'admitted', 'queued', 'admitted', 'Admitted', CAST(plan AS jsonb)
        FROM admitted
    ), outbox AS ({enqueue_sql(CallbackEvent.ADMITTED, "admitted j")})
    SELECT id FROM admitted
    """
)

_PLACE = text(
    """
    INSERT INTO placements (job_id, attempt, pod_name, role, replica_index, node, cpu_millis,
                            memory_bytes, gpu_shares, gpu)
    SELECT job_id, attempt, pod_name, role, replica_index, node, cpu, memory, gpu_shares,
           CAST(gpu AS jsonb)
    FROM unnest(CAST(:job_ids AS uuid[]), CAST(:attempts AS int[]), CAST(:pods AS text[]),
                CAST(:roles AS text[]), CAST(:indexes AS int[]), CAST(:nodes AS text[]),
                CAST(:cpus AS bigint[]), CAST(:memories AS bigint[]),
                CAST(:gpu_shares AS bigint[]), CAST(:gpus AS text[]))
        AS p(job_id, attempt, pod_name, role, replica_index, node, cpu, memory, gpu_shares, gpu)
    WHERE job_id = ANY(CAST(:admitted AS uuid[]))
    """
)

_WAITING = text(
    """
    UPDATE jobs j SET reason = w.reason, message = w.message, queue_position = w.position,
        tenant_queue_position = w.tenant_position
    FROM unnest(CAST(:ids AS uuid[]), CAST(:reasons AS text[]), CAST(:messages AS text[]),
                CAST(:positions AS int[]), CAST(:tenant_positions AS int[]))
        AS w(id, reason, message, position, tenant_position)
    WHERE j.id = w.id AND j.state = 'queued'
    """
)


def _tenant_state(row: RowMapping) -> TenantState:
    return TenantState(
        name=row["name"],
        weight=float(row["weight"]),
        quota=Quota(
            cpu_millis=row["quota_cpu_millis"],
            memory_bytes=row["quota_memory_bytes"],
            gpu_shares=row["quota_gpu_shares"],
            max_running_jobs=row["max_running_jobs"],
        ),
        usage=Usage(
            cpu_millis=int(row["used_cpu"]),
            memory_bytes=int(row["used_memory"]),
            gpu_shares=int(row["used_gpu"]),
            running_jobs=int(row["running_jobs"]),
        ),
    )


def _slices(raw: Sequence[Mapping[str, int]]) -> tuple[GpuSlice, ...]:
    return tuple(GpuSlice(device=int(s["device"]), shares=int(s["shares"])) for s in raw)


async def load_holdings(conn: AsyncConnection) -> tuple[Holding, ...]:
    """What Muster's live placements hold, node by node."""
    return tuple(
        Holding(
            node=row["node"],
            cpu_millis=row["cpu_millis"],
            memory_bytes=row["memory_bytes"],
            gpu=_slices(row["gpu"]),
        )
        for row in (await conn.execute(_HOLDINGS)).mappings()
    )


async def load_snapshot(
    conn: AsyncConnection,
    nodes: tuple[Node, ...],
    cache: SpecCache,
    *,
    now: float,
    starvation_seconds: float,
) -> tuple[Snapshot, Sequence[RowMapping]]:
    tenants = {row["name"]: _tenant_state(row) for row in (await conn.execute(_TENANTS)).mappings()}
    holdings = await load_holdings(conn)
    queued = (await conn.execute(_QUEUED)).mappings().all()
    # Specs never change: only jobs new to this process have theirs fetched and parsed.
    missing = cache.missing([str(row["id"]) for row in queued])
    if missing:
        specs = await conn.execute(
            text("SELECT id, spec FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))"), {"ids": missing}
        )
        for job_id, spec in specs:
            cache.add(str(job_id), spec)
    pending = tuple(
        PendingJob(
            id=str(row["id"]),
            tenant=row["tenant"],
            priority=row["priority"],
            submitted_at=row["created_at"].timestamp(),
            queued_since=row["queued_at"].timestamp(),
            not_before=None if row["not_before"] is None else row["not_before"].timestamp(),
            pods=cache.pods(str(row["id"])),
        )
        for row in queued
    )
    cache.keep_only({job.id for job in pending})
    snapshot = Snapshot(
        now=now,
        nodes=nodes,
        holdings=holdings,
        tenants=tenants,
        pending=pending,
        starvation_seconds=starvation_seconds,
    )
    return snapshot, queued


async def write_plan(
    conn: AsyncConnection,
    now: float,
    result: AdmissionPlan,
    queued: Sequence[RowMapping],
    pods: Mapping[str, tuple[PodRequest, ...]],
) -> tuple[str, ...]:
    """Persist admissions (state, placements, events) and changed waiting reasons/positions."""
    by_id = {str(row["id"]): row for row in queued}
    admitted_ids: list[str] = []
    if result.admitted:
        columns: dict[str, list[Any]] = {
            k: []
            for k in (
                "job_ids",
                "attempts",
                "pods",
                "roles",
                "indexes",
                "nodes",
                "cpus",
                "memories",
                "gpu_shares",
                "gpus",
            )
        }
        data = []
        for admission in result.admitted:
            attempt = by_id[admission.job_id]["attempt"]
            gang = pods[admission.job_id]
            requests = {pod.name: pod for pod in gang}
            indexes = _replica_indexes(gang)
            for placement in admission.placements:
                pod = requests[placement.pod_name]
                columns["job_ids"].append(admission.job_id)
                columns["attempts"].append(attempt)
                columns["pods"].append(placement.pod_name)
                columns["roles"].append(pod.role)
                columns["indexes"].append(indexes[pod.name])
                columns["nodes"].append(placement.node)
                columns["cpus"].append(pod.cpu_millis)
                columns["memories"].append(pod.memory_bytes)
                columns["gpu_shares"].append(pod.gpu_shares)
                columns["gpus"].append(
                    json.dumps([{"device": s.device, "shares": s.shares} for s in placement.gpu])
                )
            data.append(
                json.dumps({"placements": {p.pod_name: p.node for p in admission.placements}})
            )
        rows = await conn.execute(
            _ADMIT,
            {
                "now": now,
                "ids": [a.job_id for a in result.admitted],
                "attempts": [by_id[a.job_id]["attempt"] for a in result.admitted],
                "data": data,
            },
        )
        admitted_ids = [str(row[0]) for row in rows]
        if admitted_ids:
            await conn.execute(_PLACE, {**columns, "admitted": admitted_ids})
            await conn.execute(text(f"SELECT pg_notify('{ADMITTED_CHANNEL}', '')"))
    # Only rows whose reason or position moved are written: a long, stable queue costs nothing.
    changed = [
        w
        for w in result.waiting
        if _waiting_columns(by_id[w.job_id])
        != (w.reason.value, w.message, w.position_overall, w.position_in_tenant)
    ]
    if changed:
        await conn.execute(
            _WAITING,
            {
                "ids": [w.job_id for w in changed],
                "reasons": [w.reason.value for w in changed],
                "messages": [w.message for w in changed],
                "positions": [w.position_overall for w in changed],
                "tenant_positions": [w.position_in_tenant for w in changed],
            },
        )
    return tuple(admitted_ids)


def _waiting_columns(row: RowMapping) -> tuple[Any, ...]:
    return (row["reason"], row["message"], row["queue_position"], row["tenant_queue_position"])


def _replica_indexes(gang: Sequence[PodRequest]) -> dict[str, int]:
    """Pod name -> its index within its role (pods are listed in role, index order)."""
    seen: dict[str, int] = {}
    indexes: dict[str, int] = {}
    for pod in gang:
        indexes[pod.name] = seen.get(pod.role, 0)
        seen[pod.role] = indexes[pod.name] + 1
    return indexes


async def run_cycle(
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    cache: SpecCache,
    *,
    clock: Callable[[], float],
    starvation_seconds: float,
) -> CycleResult:
    started = time.perf_counter()
    async with engine.begin() as conn:
        # Serialize cycles across every process, whatever each believes about leadership.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADMISSION_LOCK})
        snapshot, queued = await load_snapshot(
            conn, nodes, cache, now=clock(), starvation_seconds=starvation_seconds
        )
        # The plan is pure CPU: in a thread, so the API keeps answering during long cycles.
        decided = await asyncio.to_thread(plan, snapshot)
        pods = {job.id: job.pods for job in snapshot.pending}
        # Times the lifecycle compares with the clock (admitted_at) come from the same clock.
        admitted = await write_plan(conn, snapshot.now, decided, queued, pods)
    return CycleResult(
        considered=len(snapshot.pending),
        admitted=admitted,
        seconds=time.perf_counter() - started,
        plan=decided,
    )
