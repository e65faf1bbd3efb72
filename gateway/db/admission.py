"""One admission cycle against the database: catch the leader's queue up, ask the core, write.

The whole cycle runs in ONE transaction that first takes an advisory transaction lock
(``ADMISSION_LOCK``). Only the leader runs cycles, but that lock makes safety independent of
leadership: even two processes that both believe they lead cannot interleave cycles, so a job is
admitted at most once and no quota or node is over-committed by Muster. Every admission is guarded
by ``state = 'queued' AND attempt = <the attempt we planned>``, so a job cancelled while the cycle
thought cannot be admitted.

The queue is kept in memory between cycles (``LeaderQueue``), so that a cycle costs what changed,
not what waits:

- It is loaded whole by the first cycle of a leader, and again after any cycle that failed.
- Every cycle first catches it up with the database: the jobs of every job_events row written
  since the last catch-up that left or entered the queue (``from_state`` or ``to_state`` is
  'queued': a submit, an admission, a cancel, a requeue) have their rows read again, and each is
  held at its current attempt or dropped. The cursor is a transaction id: every event the
  snapshot sees from it on is read, and the cursor then moves to the snapshot's horizon (the
  oldest transaction still open, ``pg_snapshot_xmin``), below which no event can commit any more
  (as in the event stream, ``gateway.db.event_stream``), so none is missed. An event above the
  horizon is read at every catch-up until the horizon passes it (reading one twice changes
  nothing): a long transaction anywhere on the server (it holds the horizon back for every
  database) then costs more reads, never a late job; the leader logs it when it lasts. A job's
  spec is read once per attempt.
- The leader's own submits hand their jobs over as they commit (``prime``): their rows are read
  at the next catch-up (id, state and attempt), but not their specs.

Why an entry is never stale: a job's spec, tenant, priority and created_at are written once, by its
submit; its attempt, queued_at and not_before change only when it is requeued, and every change of
a job's state writes a job_events row in the same statement (``gateway.db.transitions``), which
the next catch-up reads. A job an admission did not move (cancelled meanwhile) is read again at
the next catch-up.

What users see of the queue is written in two ways: a cycle writes the reason of each job it
considered, when it changed; ``write_places`` writes every job's queue positions (and the reason
of jobs no cycle considers now), in small transactions, on its own schedule (``LeaderQueue``
remembers what is stored, so only changes are written).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.channels import Channel, notify_sql
from gateway.db.engine import driver_of
from gateway.db.mapping import holding_of, placement_of, tenant_state_of
from gateway.db.tenants import TENANTS_FOR_ADMISSION
from gateway.db.transitions import Change, move
from gateway.domain.jobs.pods import pod_requests
from gateway.domain.jobs.spec import from_document
from gateway.domain.lifecycle.states import JobState
from gateway.domain.scheduling.admission import plan, queue_places
from gateway.domain.scheduling.nodes import Holding, Node, PodRequest
from gateway.domain.scheduling.preemption import preemption_backoff
from gateway.domain.scheduling.queue import AdmissionQueue
from gateway.domain.scheduling.queueing import (
    DEFAULT_BACKFILL,
    AdmissionPlan,
    PendingJob,
    PendingReason,
    Placement,
    Preemption,
    PreemptionReason,
    QueuedAt,
    RunningGang,
    Snapshot,
)

log = logging.getLogger(__name__)

ADMISSION_LOCK = 0x6D75_0001
#: Rows read per round trip when a queue is loaded whole.
LOAD_CHUNK = 2000
#: Distinct words kept for sharing, at most, beyond those the queue shows (past it, the words
#: no queued job shows are let go).
MAX_WORDS = 10_000
#: How long the snapshot horizon may stay put, with queue changes above it, before it is logged.
HORIZON_WARNING_SECONDS = 60

#: What a job that no cycle has considered yet shows as its reason.
NOT_YET_CONSIDERED = "earlier jobs of its tenant are considered first"


@dataclass(frozen=True, kw_only=True, slots=True)
class CycleResult:
    """What one admission cycle did: how many queued jobs it held and considered, the ids of
    those it admitted, how long it took (catch-up to commit), and the plan it wrote."""

    queued: int
    considered: int
    admitted: tuple[str, ...]
    seconds: float
    plan: AdmissionPlan
    snapshot: Snapshot


@dataclass(slots=True)
class _Shared:
    """A pod shape kept once for every queued job that has it."""

    key: tuple[Hashable, ...]
    pods: tuple[PodRequest, ...]
    users: int = 0


class Shown(NamedTuple):
    """What a queued job's row shows of the queue: its reason, message and positions."""

    reason: str | None
    message: str | None
    position: int | None
    tenant_position: int | None


_UNSHOWN = Shown(None, None, None, None)


def _shape(pod: PodRequest) -> Hashable:
    """Everything of a pod request, hashable (its node selector as sorted pairs)."""
    return (
        pod.name,
        pod.role,
        pod.index,
        pod.cpu_millis,
        pod.memory_bytes,
        pod.gpu_shares,
        tuple(sorted(pod.node_selector.items())),
        pod.tolerations,
        pod.spread,
    )


class LeaderQueue:
    """The queue as the leader keeps it between cycles: the ``AdmissionQueue``, each job's attempt
    and what its row shows. See the module docstring for how it is kept true.

    Only the admission loop's task changes it, and only through ``catch_up`` (inside a cycle's
    transaction), ``settle`` (after that transaction committed) and ``reset``.
    """

    #: Jobs handed over by submits kept at most, for a leader whose cycles stall.
    MAX_PRIMED = 100_000

    def __init__(self) -> None:
        self.jobs = AdmissionQueue()
        self._attempts: dict[str, int] = {}
        self._shown: dict[str, Shown] = {}
        self._primed: dict[str, PendingJob] = {}
        self._recheck: set[str] = set()
        # Every job_events row of a transaction below this id has been caught up with; None
        # until loaded.
        self._cursor: int | None = None
        self._held_since = time.monotonic()
        # Jobs of one template have equal pods, and waiting jobs mostly the same words: each is
        # kept once, however many jobs share it (100,000 five-pod jobs held 154 MB before). A
        # shape is kept while a queued job has it: by its key, with the number of such jobs.
        self._pods: dict[tuple[Hashable, ...], _Shared] = {}
        self._shape_of: dict[str, tuple[Hashable, ...]] = {}
        self._words: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def loaded(self) -> bool:
        return self._cursor is not None

    def reset(self) -> None:
        """Forget everything: the next catch-up loads the queue whole."""
        self.jobs = AdmissionQueue()
        self._attempts.clear()
        self._shown.clear()
        self._recheck.clear()
        self._pods.clear()
        self._shape_of.clear()
        self._words.clear()
        self._cursor = None

    def prime(self, job: PendingJob) -> None:
        """A job a submit of this process just committed (attempt 0), as the submit checked it."""
        if len(self._primed) < self.MAX_PRIMED:
            self._primed[job.id] = job

    def attempt(self, job_id: str) -> int:
        return self._attempts[job_id]

    @property
    def pod_shapes(self) -> int:
        """Distinct pod shapes held: at most one per queued job, whatever left the queue."""
        return len(self._pods)

    def shown(self, job_id: str) -> Shown:
        return self._shown.get(job_id, _UNSHOWN)

    def _moved_on(self, horizon: int, read: int) -> None:
        """The cursor moves to ``horizon``; a horizon held back long is logged (once a minute)."""
        now = time.monotonic()
        if self._cursor is None or horizon > self._cursor:
            self._cursor, self._held_since = horizon, now
            return
        if read and now - self._held_since >= HORIZON_WARNING_SECONDS:
            self._held_since = now
            log.warning(
                "a transaction open for over %d s holds PostgreSQL's snapshot horizon back "
                "(possibly in another database of the server): each admission cycle re-reads "
                "the %d queue changes since",
                HORIZON_WARNING_SECONDS,
                read,
            )

    async def catch_up(self, conn: AsyncConnection) -> None:
        """Bring the queue up to what the database holds (load it whole the first time).

        ``conn`` must already be in its transaction: rows are read on its driver connection.
        """
        async with driver_of(conn) as driver:
            if self._cursor is None:
                horizon = int(await driver.fetchval(_HORIZON))
                self._primed.clear()
                # In chunks through a cursor: the rows of a whole queue at once (each with its
                # spec) would take several times the memory of the queue they make.
                opened = None if driver.is_in_transaction() else driver.transaction()
                if opened is not None:  # a cursor lives in a transaction
                    await opened.start()
                try:
                    async for row in driver.cursor(_LOAD, prefetch=LOAD_CHUNK):
                        values = tuple(row)
                        self._hold(values[:_SHOWN], values[_SHOWN:])
                finally:
                    if opened is not None:
                        await opened.commit()
                self._cursor = horizon
                return
            row = await driver.fetchrow(_CHANGED, str(self._cursor))
            changed = {*row["jobs"], *self._primed, *self._recheck}
            self._recheck.clear()
            self._moved_on(int(row["horizon"]), len(row["jobs"]))
            if not changed:
                return
            current = {r[0]: tuple(r) for r in await driver.fetch(_ROWS, list(changed))}
            unread = []
            for job_id in changed:
                found = current.get(job_id)
                primed = self._primed.pop(job_id, None)
                if found is None or found[1] != "queued":
                    self._drop(job_id)
                elif self._attempts.get(job_id) == found[2]:
                    self._shown[job_id] = Shown(*found[3:])
                elif primed is not None and found[2] == 0:
                    self._put(primed, 0, Shown(*found[3:]))
                else:
                    unread.append(job_id)
            if unread:
                for details in await driver.fetch(_DETAILS, unread):
                    self._hold(tuple(details), current[details[0]][3:])

    def _hold(self, details: Sequence[Any], shown: Sequence[Any]) -> None:
        """A job read from its row (``_DETAILS`` columns), with what its row shows."""
        job_id, attempt, tenant, priority, created_at, queued_at, not_before, spec, preemptible = (
            details
        )
        job = PendingJob(
            id=job_id,
            tenant=tenant,
            priority=priority,
            submitted_at=created_at.timestamp(),
            queued_since=queued_at.timestamp(),
            not_before=None if not_before is None else not_before.timestamp(),
            pods=pod_requests(from_document(spec)),
            preemptible=preemptible,
        )
        self._put(job, attempt, Shown(*shown))

    def _put(self, job: PendingJob, attempt: int, shown: Shown) -> None:
        shape = tuple(map(_shape, job.pods))
        shared = self._pods.get(shape)
        if shared is None:
            shared = self._pods[shape] = _Shared(shape, job.pods)
        if self._shape_of.get(job.id) is not shared.key:
            self._let_go_of_shape(job.id)
            shared.users += 1
            self._shape_of[job.id] = shared.key
        if shared.pods is not job.pods:
            job = replace(job, pods=shared.pods)
        self.jobs.put(job)
        self._attempts[job.id] = attempt
        self._shown[job.id] = self._same(shown)

    def _same(self, shown: Shown) -> Shown:
        """``shown`` with its words shared with every other job showing the same."""
        reason, message = shown.reason, shown.message
        if message is not None:
            message = self._words.setdefault(message, message)
            if len(self._words) > MAX_WORDS + len(self._shown):
                shown_now = {s.message for s in self._shown.values()}
                self._words = {w: w for w in self._words.values() if w in shown_now}
                self._words.setdefault(message, message)
        return Shown(reason, message, shown.position, shown.tenant_position)

    def _drop(self, job_id: str) -> None:
        self.jobs.remove(job_id)
        self._attempts.pop(job_id, None)
        self._shown.pop(job_id, None)
        self._let_go_of_shape(job_id)

    def _let_go_of_shape(self, job_id: str) -> None:
        """The job no longer holds its pod shape; the last job to let go of it drops it."""
        key = self._shape_of.pop(job_id, None)
        if key is None:
            return
        shared = self._pods[key]
        shared.users -= 1
        if not shared.users:
            del self._pods[key]

    def settle(
        self,
        admitted: Sequence[str],
        planned: Sequence[str],
        reasons: Sequence[tuple[str, str, str]],
    ) -> None:
        """A cycle's transaction committed: ``admitted`` left the queue; jobs ``planned`` but not
        moved are read again at the next catch-up; ``reasons`` (id, reason, message) are shown."""
        for job_id in admitted:
            self._drop(job_id)
        self._recheck.update(set(planned) - set(admitted))
        for job_id, reason, message in reasons:
            if job_id in self._attempts:
                self._shown[job_id] = self.shown(job_id)._replace(reason=reason, message=message)

    def placed(self, rows: Sequence[Sequence[Any]]) -> None:
        """Rows ``write_places`` wrote: (id, reason, message, position, tenant_position)."""
        for job_id, *shown in rows:
            if job_id in self._attempts:
                self._shown[job_id] = Shown(*shown)


# -- statements ----------------------------------------------------------------------------------

_TENANTS = text(TENANTS_FOR_ADMISSION)

_HOLDINGS = text(
    "SELECT node, cpu_millis, memory_bytes, gpu, extended FROM placements WHERE released_at IS NULL"
)
# Every live placement with its job, in job order: the holdings, and the gangs preemption
# chooses among (with the state and attempt that guard their requeue).
_LIVE = text(
    """
    SELECT CAST(j.id AS text) AS job_id, j.tenant, j.priority, j.preemptible, j.state,
           j.attempt, j.preemptions, COALESCE(j.admitted_at, now()) AS admitted_at,
           p.pod_name, p.role, p.replica_index, p.node, p.cpu_millis, p.memory_bytes, p.gpu,
           p.borrowed_cpu_millis, p.borrowed_memory_bytes, p.borrowed_gpu_shares, p.extended
    FROM placements p JOIN jobs j ON j.id = p.job_id
    WHERE p.released_at IS NULL
    ORDER BY j.id, p.pod_name
    """
)

# Read on the driver connection (asyncpg records, by position): with a long queue, building
# SQLAlchemy rows and decoding timestamps for every job costs more than the rest of a load.
# Transaction ids travel as text: not every asyncpg release has a codec for xid8.
_HORIZON = "SELECT CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text)"
_DETAIL_COLUMNS = (
    "CAST(id AS text), attempt, tenant, priority, created_at, queued_at, not_before, spec, "
    "preemptible"
)
_SHOWN_COLUMNS = "reason, message, queue_position, tenant_queue_position"
_SHOWN = 9  # where the shown columns start in a _LOAD row
_LOAD = f"SELECT {_DETAIL_COLUMNS}, {_SHOWN_COLUMNS} FROM jobs WHERE state = 'queued'"
_CHANGED = """
    SELECT CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text) AS horizon,
           ARRAY(
               SELECT DISTINCT CAST(job_id AS text) FROM job_events
               WHERE txid >= CAST(CAST($1 AS text) AS xid8)
                 AND (from_state = 'queued' OR to_state = 'queued')
           ) AS jobs
"""
_ROWS = f"""
    SELECT CAST(id AS text), state, attempt, {_SHOWN_COLUMNS}
    FROM jobs WHERE id = ANY(CAST($1 AS uuid[]))
"""
_DETAILS = f"SELECT {_DETAIL_COLUMNS} FROM jobs WHERE id = ANY(CAST($1 AS uuid[]))"

_PLACE = text(
    """
    INSERT INTO placements (job_id, attempt, pod_name, role, replica_index, node, cpu_millis,
                            memory_bytes, gpu_shares, gpu, borrowed_cpu_millis,
                            borrowed_memory_bytes, borrowed_gpu_shares, extended)
    SELECT job_id, attempt, pod_name, role, replica_index, node, cpu, memory, gpu_shares,
           CAST(gpu AS jsonb), borrowed_cpu, borrowed_memory, borrowed_gpu,
           CAST(extended AS jsonb)
    FROM unnest(CAST(:job_ids AS uuid[]), CAST(:attempts AS int[]), CAST(:pods AS text[]),
                CAST(:roles AS text[]), CAST(:indexes AS int[]), CAST(:nodes AS text[]),
                CAST(:cpus AS bigint[]), CAST(:memories AS bigint[]),
                CAST(:gpu_shares AS bigint[]), CAST(:gpus AS text[]),
                CAST(:borrowed_cpus AS bigint[]), CAST(:borrowed_memories AS bigint[]),
                CAST(:borrowed_gpus AS bigint[]), CAST(:extended AS text[]))
        AS p(job_id, attempt, pod_name, role, replica_index, node, cpu, memory, gpu_shares, gpu,
             borrowed_cpu, borrowed_memory, borrowed_gpu, extended)
    WHERE job_id = ANY(CAST(:admitted AS uuid[]))
    """
)

_REASONS = text(
    """
    UPDATE jobs j SET reason = w.reason, message = w.message
    FROM unnest(CAST(:ids AS uuid[]), CAST(:reasons AS text[]), CAST(:messages AS text[]))
        AS w(id, reason, message)
    WHERE j.id = w.id AND j.state = 'queued'
    """
)

# Positions, and a reason where one is given: a forced one (backoff) always, the one of a job no
# cycle has considered only while its row has none (a cycle may have given it one meanwhile).
_PLACES = text(
    """
    UPDATE jobs j SET queue_position = w.position, tenant_queue_position = w.tenant_position,
        reason = CASE WHEN w.reason IS NULL OR (NOT w.forced AND j.reason IS NOT NULL)
                      THEN j.reason ELSE w.reason END,
        message = CASE WHEN w.reason IS NULL OR (NOT w.forced AND j.reason IS NOT NULL)
                       THEN j.message ELSE w.message END
    FROM unnest(CAST(:ids AS uuid[]), CAST(:positions AS int[]),
                CAST(:tenant_positions AS int[]), CAST(:reasons AS text[]),
                CAST(:messages AS text[]), CAST(:forced AS boolean[]))
        AS w(id, position, tenant_position, reason, message, forced)
    WHERE j.id = w.id AND j.state = 'queued'
    RETURNING CAST(j.id AS text), j.reason, j.message, j.queue_position, j.tenant_queue_position
    """
)


async def load_holdings(conn: AsyncConnection) -> tuple[Holding, ...]:
    """What Muster's live placements hold, node by node."""
    return tuple(map(holding_of, (await conn.execute(_HOLDINGS)).mappings()))


@dataclass(frozen=True, kw_only=True, slots=True)
class Guard:
    """The state, attempt and preemptions a running gang was planned on: its requeue, if it is
    preempted, is guarded by them."""

    state: JobState
    attempt: int
    preemptions: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Live:
    """Muster's live placements: what they hold, by gang, and each gang's guard."""

    holdings: tuple[Holding, ...]
    gangs: tuple[RunningGang, ...]
    guards: dict[str, Guard]


async def load_live(conn: AsyncConnection) -> Live:
    """Every live placement, as holdings and as the gangs they belong to."""
    holdings: list[Holding] = []
    gangs: list[RunningGang] = []
    guards: dict[str, Guard] = {}
    pods: list[Placement] = []
    current: Any = None
    for row in (await conn.execute(_LIVE)).mappings():
        if current is not None and row["job_id"] != current["job_id"]:
            gangs.append(_gang_of(current, pods))
            pods = []
        current = row
        placement = placement_of(row)
        pods.append(placement)
        holdings.append(
            Holding(
                node=placement.node,
                cpu_millis=placement.cpu_millis,
                memory_bytes=placement.memory_bytes,
                gpu=placement.gpu,
                extended=placement.extended,
            )
        )
        guards[row["job_id"]] = Guard(
            state=JobState(row["state"]), attempt=row["attempt"], preemptions=row["preemptions"]
        )
    if current is not None:
        gangs.append(_gang_of(current, pods))
    return Live(holdings=tuple(holdings), gangs=tuple(gangs), guards=guards)


def _gang_of(row: Any, pods: Sequence[Placement]) -> RunningGang:
    return RunningGang(
        job_id=row["job_id"],
        tenant=row["tenant"],
        priority=row["priority"],
        preemptible=row["preemptible"],
        admitted_at=row["admitted_at"].timestamp(),
        placements=tuple(pods),
    )


async def load_snapshot(
    conn: AsyncConnection,
    nodes: tuple[Node, ...],
    *,
    now: float,
    starvation_seconds: float,
    backfill: int = DEFAULT_BACKFILL,
    min_runtime_seconds: float = 0.0,
    live: Live | None = None,
) -> Snapshot:
    """What a cycle plans on besides the queue: nodes, holdings and the gangs they belong to
    (``live``, read when not given), tenants and their usage."""
    tenants = {
        tenant.name: tenant
        for tenant in map(tenant_state_of, (await conn.execute(_TENANTS)).mappings())
    }
    if live is None:
        live = await load_live(conn)
    return Snapshot(
        now=now,
        nodes=nodes,
        holdings=live.holdings,
        tenants=tenants,
        starvation_seconds=starvation_seconds,
        backfill=backfill,
        running=live.gangs,
        min_runtime_seconds=min_runtime_seconds,
    )


async def preview(
    conn: AsyncConnection,
    nodes: tuple[Node, ...],
    *,
    now: float,
    starvation_seconds: float,
    backfill: int = DEFAULT_BACKFILL,
    min_runtime_seconds: float = 0.0,
    extra: Sequence[PendingJob] = (),
) -> AdmissionPlan:
    """What the next admission cycle would decide on what ``conn``'s transaction sees (a dry
    run: the caller changed settings in it and rolls it back), with ``extra`` jobs queued
    besides (a submit's dry run). The queue is read whole, as a new leader reads it; nothing is
    written."""
    queue = LeaderQueue()
    await queue.catch_up(conn)
    for job in extra:
        queue.jobs.put(job)
    snapshot = await load_snapshot(
        conn,
        nodes,
        now=now,
        starvation_seconds=starvation_seconds,
        backfill=backfill,
        min_runtime_seconds=min_runtime_seconds,
    )
    return plan(snapshot, queue.jobs)


def preemption_change(preemption: Preemption, guard: Guard, now: float) -> Change:
    """The requeue of a preempted gang: reason Preempted, in words its tenant may read (another
    tenant's job is not named), backed off when it was preempted before."""
    backoff = preemption_backoff(guard.preemptions)
    if preemption.reason is PreemptionReason.PRIORITY:
        words = f"preempted for job {preemption.preemptor}, of a higher priority in the same tenant"
    else:
        words = (
            f"preempted: tenant {preemption.preemptor_tenant} reclaimed the quota it lent to "
            "its cohort"
        )
    wait = f", to wait {backoff:.0f} s (preempted {guard.preemptions + 1} times)" if backoff else ""
    data: dict[str, Any] = {
        "preemption": preemption.reason.value,
        "preemptor_tenant": preemption.preemptor_tenant,
    }
    if preemption.preemptor_tenant == preemption.tenant:
        data["preemptor"] = preemption.preemptor
    return Change(
        job_id=preemption.job_id,
        from_state=guard.state,
        attempt=guard.attempt,
        reason=PREEMPTED,
        message=f"{words}; the gang is stopped and requeued{wait}",
        data=data,
        not_before=now + backoff if backoff else None,
        preempted=True,
    )


#: The reason of a preempted job's requeue.
PREEMPTED = "Preempted"


async def write_plan(
    conn: AsyncConnection,
    now: float,
    result: AdmissionPlan,
    queue: LeaderQueue,
    guards: Mapping[str, Guard] | None = None,
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Persist admissions (state, placements, events), then preemptions (the victims requeued,
    guarded by ``guards``, each only if its preemptor was admitted), and the reasons that
    changed; the ids admitted and the reasons written (id, reason, message). A victim that
    changed since it was read (it ended) holds nothing any more, which is all its preemption
    was for."""
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
                "borrowed_cpus",
                "borrowed_memories",
                "borrowed_gpus",
                "extended",
            )
        }
        changes = []
        for admission in result.admitted:
            attempt = queue.attempt(admission.job_id)
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
                columns["borrowed_cpus"].append(placement.borrowed.cpu_millis)
                columns["borrowed_memories"].append(placement.borrowed.memory_bytes)
                columns["borrowed_gpus"].append(placement.borrowed.gpu_shares)
                columns["extended"].append(json.dumps(dict(placement.extended)))
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
    if result.preempted:
        # After the admissions: a victim is preempted only if its preemptor was admitted (one
        # cancelled since the queue was read is not, and then neither are its victims).
        known = guards or {}
        admitted = set(admitted_ids)
        requeues = [
            preemption_change(p, known[p.job_id], now)
            for p in result.preempted
            if p.job_id in known and p.preemptor in admitted
        ]
        by_state: dict[JobState, list[Change]] = {}
        for change in requeues:
            by_state.setdefault(change.from_state, []).append(change)
        for changes in by_state.values():
            moved = await move(conn, JobState.QUEUED, changes, now=now)
            for change in changes:
                if change.job_id in moved:
                    log.info("job %s preempted: %s", change.job_id, change.message)
    # Only reasons that moved are written: a stable queue costs nothing.
    changed = [
        (w.job_id, w.reason.value, w.message)
        for w in result.waiting
        if queue.shown(w.job_id)[:2] != (w.reason.value, w.message)
    ]
    if changed:
        ids, reasons, messages = (list(column) for column in zip(*changed, strict=True))
        await conn.execute(_REASONS, {"ids": ids, "reasons": reasons, "messages": messages})
    return admitted_ids, changed


async def run_cycle(
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    queue: LeaderQueue,
    *,
    clock: Callable[[], float],
    starvation_seconds: float,
    backfill: int = DEFAULT_BACKFILL,
    min_runtime_seconds: float = 0.0,
) -> CycleResult:
    """Catch ``queue`` up, plan, write the plan; any failure resets ``queue`` (the next cycle
    loads it whole)."""
    started = time.perf_counter()
    try:
        async with engine.begin() as conn:
            # Serialize cycles across every process, whatever each believes about leadership.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADMISSION_LOCK})
            await queue.catch_up(conn)
            live = await load_live(conn)
            snapshot = await load_snapshot(
                conn,
                nodes,
                now=clock(),
                starvation_seconds=starvation_seconds,
                backfill=backfill,
                min_runtime_seconds=min_runtime_seconds,
                live=live,
            )
            # Bounded by the tenants and the backfill window, not by the queue: planned inline.
            decided = plan(snapshot, queue.jobs)
            # Times the lifecycle compares with the clock (admitted_at) come from the same clock.
            admitted, reasons = await write_plan(conn, snapshot.now, decided, queue, live.guards)
    except BaseException:
        queue.reset()
        raise
    queue.settle(admitted, [a.job_id for a in decided.admitted], reasons)
    return CycleResult(
        queued=len(queue) + len(admitted),
        considered=len(decided.admitted) + len(decided.waiting),
        admitted=tuple(admitted),
        seconds=time.perf_counter() - started,
        plan=decided,
        snapshot=snapshot,
    )


# -- queue positions -----------------------------------------------------------------------------


def places_to_write(
    snapshot: Snapshot, jobs: AdmissionQueue, queue: LeaderQueue
) -> list[tuple[QueuedAt, bool]]:
    """Every job's place (``queue_places`` of ``jobs``) whose row shows something else, and
    whether its reason is forced (backoff, and the end of one) or only fills in a missing one.

    O(queue), so it may run in a thread: ``jobs`` is then a copy of ``queue.jobs`` taken on the
    loop (``AdmissionQueue.copy``); ``queue`` is only asked what rows show.
    """
    backoff = PendingReason.BACKOFF_AFTER_EVICTION.value
    pending: list[tuple[QueuedAt, bool]] = []
    for place in queue_places(snapshot, jobs):
        shown = queue.shown(place.job_id)
        if place.reason is not None:
            if (place.reason.value, place.message, place.position, place.tenant_position) != shown:
                pending.append((place, True))
        elif shown.reason is None or shown.reason == backoff:
            pending.append((place, shown.reason is not None))
        elif (place.position, place.tenant_position) != shown[2:]:
            pending.append((place, False))
    return pending


async def write_places(
    engine: AsyncEngine, queue: LeaderQueue, places: Sequence[tuple[QueuedAt, bool]]
) -> None:
    """Write one chunk of ``places_to_write``'s answer, in its own short transaction."""
    if not places:
        return
    params: dict[str, list[Any]] = {
        "ids": [],
        "positions": [],
        "tenant_positions": [],
        "reasons": [],
        "messages": [],
        "forced": [],
    }
    for place, forced in places:
        params["ids"].append(place.job_id)
        params["positions"].append(place.position)
        params["tenant_positions"].append(place.tenant_position)
        if place.reason is None:
            params["reasons"].append(PendingReason.QUEUED.value)
            params["messages"].append(NOT_YET_CONSIDERED)
        else:
            params["reasons"].append(place.reason.value)
            params["messages"].append(place.message)
        params["forced"].append(forced)
    async with engine.begin() as conn:
        rows = (await conn.execute(_PLACES, params)).all()
    queue.placed(rows)
