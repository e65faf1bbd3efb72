"""One admission cycle against the database: load the snapshot, ask the core, write the plan.

The whole cycle runs in ONE transaction that first takes an advisory transaction lock
(``ADMISSION_LOCK``). Only the leader runs cycles, but that lock makes safety independent of
leadership: even two processes that both believe they lead cannot interleave cycles, so a job is
admitted at most once and no quota or node is over-committed by Muster. Every admission is guarded
by ``state = 'queued' AND attempt = <the attempt we planned>``, so a job cancelled while the cycle
thought cannot be admitted.

Queued jobs are cached between cycles (``PendingJobCache``): each cycle reads only the queue's id,
attempt and waiting columns; a job's other fields and its spec are read, and its pods derived,
once per attempt: when the job is first seen, and again if it is requeued.

Cache invariant (why an entry is never stale): a job's spec, tenant, priority and created_at are
written once, by its submit, and never updated; its queued_at and not_before change only when it
is requeued after an eviction, and that same statement increments its attempt
(``gateway.db.lifecycle``). An entry is used only while the row's attempt equals the attempt it
was read at. Memory is bounded by the queue: each cycle drops the entries of jobs it did not read.

The submits of the leader's own process hand their jobs over as they are written (``prime``), so
that most jobs are never read back at all: a primed job is its submit's row and the very pods its
submit checked, at attempt 0, which is what a read would give. Primed jobs wait aside until a
cycle sees them queued; those not seen within two cycles (cancelled, or written after a snapshot
that then took long) are dropped and, if still queued, read as usual.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.channels import Channel, notify_sql
from gateway.db.engine import driver_of
from gateway.db.mapping import holding_of, tenant_state_of
from gateway.db.tenants import TENANTS_WITH_USAGE
from gateway.db.transitions import Change, move
from gateway.domain.jobs.pods import pod_requests
from gateway.domain.jobs.spec import from_document
from gateway.domain.lifecycle.states import JobState
from gateway.domain.scheduling.admission import plan
from gateway.domain.scheduling.nodes import Holding, Node, PodRequest
from gateway.domain.scheduling.queueing import AdmissionPlan, PendingJob, Snapshot, Waiting

ADMISSION_LOCK = 0x6D75_0001


@dataclass(frozen=True, kw_only=True, slots=True)
class CycleResult:
    """What one admission cycle did: how many queued jobs it considered, the ids of those it
    admitted, how long it took (snapshot to commit), and the plan it wrote."""

    considered: int
    admitted: tuple[str, ...]
    seconds: float
    plan: AdmissionPlan


class PendingJobCache:
    """Per queued job id: its attempt and the ``PendingJob`` read at that attempt.

    See the module docstring for why an entry is never stale and how its size is bounded.
    """

    #: Pods of primed jobs kept aside at most: a bound on their memory (a few tens of MB) for a
    #: leader whose cycles stall; past it, jobs are read back as usual.
    MAX_PRIMED_PODS = 200_000

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[int, PendingJob]] = {}
        self._primed: dict[str, tuple[int, PendingJob]] = {}  # id -> (generation, job)
        self._primed_pods = 0
        self._generation = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def prime(self, job: PendingJob) -> None:
        """A job just submitted (attempt 0), as its submit wrote and checked it."""
        if self._primed_pods + len(job.pods) <= self.MAX_PRIMED_PODS and job.id not in self._primed:
            self._primed[job.id] = (self._generation, job)
            self._primed_pods += len(job.pods)

    def stale(self, queued: Sequence[Sequence[Any]]) -> list[str]:
        """Ids of ``_QUEUED`` rows without an entry for their current attempt (primed jobs
        seen queued at attempt 0 take their entry now)."""
        jobs, primed = self._jobs, self._primed
        missing = [row for row in queued if jobs.get(row[0], _NO_ENTRY)[0] != row[1]]
        stale = []
        for row in missing:
            handed = primed.pop(row[0], None)
            if handed is not None:
                self._primed_pods -= len(handed[1].pods)
            if handed is not None and row[1] == 0:
                jobs[row[0]] = (0, handed[1])
            else:
                stale.append(row[0])
        return stale

    def add(self, row: Sequence[Any]) -> None:
        """A ``_DETAILS`` row: the job at its attempt, with its spec (checked at submit and
        written complete by ``to_document``)."""
        job_id, attempt, tenant, priority, created_at, queued_at, not_before, spec = row
        self._jobs[job_id] = (
            attempt,
            PendingJob(
                id=job_id,
                tenant=tenant,
                priority=priority,
                submitted_at=created_at.timestamp(),
                queued_since=queued_at.timestamp(),
                not_before=None if not_before is None else not_before.timestamp(),
                pods=pod_requests(from_document(spec)),
            ),
        )

    def pending(self, row: Sequence[Any]) -> PendingJob:
        """The job of a ``_QUEUED`` row (after ``add`` of its ``stale`` details)."""
        return self._jobs[row[0]][1]

    def pods(self, job_id: str) -> tuple[PodRequest, ...]:
        return self._jobs[job_id][1].pods

    def keep_only(self, job_ids: Collection[str]) -> None:
        """End of a cycle that read ``job_ids`` queued: forget every other job, and primed jobs
        no cycle has seen for two cycles."""
        jobs = self._jobs
        if len(jobs) > len(job_ids):
            for job_id in [k for k in jobs if k not in job_ids]:
                del jobs[job_id]
        self._generation += 1
        primed, oldest = self._primed, self._generation - 2
        for job_id in [k for k, (generation, _) in primed.items() if generation < oldest]:
            self._primed_pods -= len(primed.pop(job_id)[1].pods)


_NO_ENTRY: tuple[int, None] = (-1, None)

_TENANTS = text(TENANTS_WITH_USAGE)

_HOLDINGS = text(
    "SELECT node, cpu_millis, memory_bytes, gpu FROM placements WHERE released_at IS NULL"
)

# Read on the driver connection (asyncpg records, by position): with a long queue, building
# SQLAlchemy rows and decoding timestamps for every job cost more than the rest of the cycle.
# _QUEUED: what may change from one cycle to the next (1: the attempt, which the admission
# guards on; 2-5: the waiting columns write_plan compares). _DETAILS: what PendingJobCache keeps.
_QUEUED = """
    SELECT id::text, attempt, reason, message, queue_position, tenant_queue_position
    FROM jobs WHERE state = 'queued' ORDER BY seq
"""
_ATTEMPT = 1
_WAITING_COLUMNS = slice(2, 6)
_DETAILS = """
    SELECT id::text, attempt, tenant, priority, created_at, queued_at, not_before, spec
    FROM jobs WHERE id = ANY($1::uuid[])
"""

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


class SeenQueue:
    """The queue as one cycle read it (``_QUEUED``'s rows, by job id): the attempt admission
    guards on, and the waiting columns a new plan is compared with. The rows are the driver's
    records, read by position for speed; they never leave this module."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Sequence[Sequence[Any]]) -> None:
        self._rows: dict[str, Sequence[Any]] = {row[0]: row for row in rows}

    @property
    def job_ids(self) -> Collection[str]:
        return self._rows.keys()

    def attempt(self, job_id: str) -> int:
        attempt: int = self._rows[job_id][_ATTEMPT]
        return attempt

    def changed(self, waiting: Sequence[Waiting]) -> list[Waiting]:
        """The jobs of a plan whose waiting reason or positions differ from those stored.
        (A PendingReason is a str enum: it equals the text stored for it.)"""
        rows = self._rows
        return [
            w
            for w in waiting
            if tuple(rows[w.job_id][_WAITING_COLUMNS])
            != (w.reason, w.message, w.position_overall, w.position_in_tenant)
        ]


async def load_holdings(conn: AsyncConnection) -> tuple[Holding, ...]:
    """What Muster's live placements hold, node by node."""
    return tuple(map(holding_of, (await conn.execute(_HOLDINGS)).mappings()))


async def load_snapshot(
    conn: AsyncConnection,
    nodes: tuple[Node, ...],
    cache: PendingJobCache,
    *,
    now: float,
    starvation_seconds: float,
) -> tuple[Snapshot, SeenQueue]:
    """The snapshot a cycle plans on, and the queue as it was read for it.

    ``conn`` must already be in its transaction (a statement has run on it): the queue is read
    on its driver connection, which then shares that transaction.
    """
    tenants = {
        tenant.name: tenant
        for tenant in map(tenant_state_of, (await conn.execute(_TENANTS)).mappings())
    }
    holdings = await load_holdings(conn)
    async with driver_of(conn) as driver:
        queued: list[Any] = await driver.fetch(_QUEUED)
        # Only jobs new to this process, or requeued since, have their details read and parsed.
        stale = cache.stale(queued)
        if stale:
            for row in await driver.fetch(_DETAILS, stale):
                cache.add(row)
    pending = tuple(map(cache.pending, queued))
    seen = SeenQueue(queued)
    cache.keep_only(seen.job_ids)
    snapshot = Snapshot(
        now=now,
        nodes=nodes,
        holdings=holdings,
        tenants=tenants,
        pending=pending,
        starvation_seconds=starvation_seconds,
    )
    return snapshot, seen


async def write_plan(
    conn: AsyncConnection, now: float, result: AdmissionPlan, queued: SeenQueue
) -> tuple[str, ...]:
    """Persist admissions (state, placements, events) and changed waiting reasons/positions.

    ``queued`` is the queue as ``load_snapshot`` read it for the plan.
    """
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
        changes = []
        for admission in result.admitted:
            attempt = queued.attempt(admission.job_id)
            for placement in admission.placements:
                columns["job_ids"].append(admission.job_id)
                columns["attempts"].append(attempt)
                columns["pods"].append(placement.pod_name)
                columns["roles"].append(placement.role)
                columns["indexes"].append(placement.index)
                columns["nodes"].append(placement.node)
                columns["cpus"].append(placement.cpu_millis)
                columns["memories"].append(placement.memory_bytes)
                columns["gpu_shares"].append(sum(s.shares for s in placement.gpu))
                columns["gpus"].append(
                    json.dumps([{"device": s.device, "shares": s.shares} for s in placement.gpu])
                )
            changes.append(
                Change(
                    job_id=admission.job_id,
                    from_state=JobState.QUEUED,
                    attempt=attempt,
                    reason="Admitted",
                    data={"placements": {p.pod_name: p.node for p in admission.placements}},
                )
            )
        admitted_ids = await move(conn, JobState.ADMITTED, changes, now=now)
        if admitted_ids:
            await conn.execute(_PLACE, {**columns, "admitted": admitted_ids})
            await conn.execute(text(notify_sql(Channel.ADMITTED)))
    # Only rows whose reason or position moved are written: a long, stable queue costs nothing.
    changed = queued.changed(result.waiting)
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


async def run_cycle(
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    cache: PendingJobCache,
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
        # Times the lifecycle compares with the clock (admitted_at) come from the same clock.
        admitted = await write_plan(conn, snapshot.now, decided, queued)
    return CycleResult(
        considered=len(snapshot.pending),
        admitted=admitted,
        seconds=time.perf_counter() - started,
        plan=decided,
    )
