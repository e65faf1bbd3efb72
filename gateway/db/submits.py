"""Submitting jobs: the insert of a queued job with its 'submitted' event, many at a time.

``Submits.submit`` is the hottest path in Muster. Its common case (the tenant exists, the job is
within the tenant's quota and priority ceiling, a random queue slot is free, the name and the
Idempotency-Key are new) is written by group commit: submits that arrive while earlier ones are
being written wait, and go to the database together, as one statement that inserts every job and
its event. Under load this costs PostgreSQL about a third of what one statement per job did, and
the gateway less than half (bench/api.py); an idle gateway writes a lone submit at once, without
waiting for company.

Invariants:

- A job and its 'submitted' event are written by one statement, so neither exists without the
  other; a batch commits or rolls back whole.
- A submit the batch did not insert (``ON CONFLICT DO NOTHING`` skipped it, its tenant is missing
  or too small, its priority is above the tenant's ceiling, or the batch statement failed on
  PostgreSQL's side) is retried alone on the careful path, which either inserts it or says
  exactly why not. So batching changes what statements run, never which answer a client gets.
- At most ``max_statements`` batch statements are in flight, each with at most ``max_batch`` jobs;
  ``close`` waits for those in flight, so none is cut off by shutdown.
- max_queued_jobs is kept by queue slots (see ``gateway.db.models``): submits of one tenant never
  wait for each other's locks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import RowMapping, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.engine import driver_connection
from gateway.db.mapping import job_of, quota_of
from gateway.db.transitions import JOB_COLUMNS, SUBMIT, SUBMIT_BATCH
from gateway.domain.jobs.spec import JobSpec, to_document
from gateway.domain.lifecycle.records import Job
from gateway.domain.problems import FieldProblem
from gateway.domain.scheduling.nodes import PodRequest
from gateway.domain.scheduling.priority import above_ceiling
from gateway.domain.scheduling.queueing import PendingJob
from gateway.domain.scheduling.reasons import never_fits_quota
from gateway.errors import Conflict, TooManyRequests, ValidationFailed
from gateway.jsontext import json_text

# Submits run on the driver connection directly (positional asyncpg SQL): SQLAlchemy's statement
# layer cost several times the round trip itself here. The statements that write the job and its
# 'submitted' event are the transition writer's (gateway.db.transitions).
_QUOTA = (
    "SELECT quota_cpu_millis, quota_memory_bytes, quota_gpu_shares, max_running_jobs, "
    "max_queued_jobs, max_priority FROM tenants WHERE name = $1"
)
# A free slot, searched upwards from a random start and wrapping around; the count first, so a
# tenant at its cap is refused without a scan.
_SLOTS_TAKEN = (
    "SELECT count(*) FROM jobs WHERE tenant = $1 AND state = 'queued' AND queue_slot IS NOT NULL"
)
_FREE_SLOT = """
    SELECT s FROM (
        SELECT s FROM generate_series($2::int, $3::int - 1) AS s
        UNION ALL SELECT s FROM generate_series(0, $2::int - 1) AS s
    ) candidates
    WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE tenant = $1 AND state = 'queued'
                      AND queue_slot = candidates.s)
    LIMIT 1
"""
SLOT_TRIES = 6
QUEUED_CAP_RETRY_AFTER = 30

_BY_KEY = text(
    f"SELECT {JOB_COLUMNS}, request_hash FROM jobs "
    "WHERE tenant = :tenant AND idempotency_key = :key"
)

#: Errors of a batch statement that come from its rows, not from the database being unwell:
#: integrity and data errors, deadlocks and serialization failures.
_ROW_ERRORS = (
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.DataError,
    asyncpg.TransactionRollbackError,
)

#: Jobs written by one batch statement at most, and batch statements in flight at once. With
#: several in flight the database works on some while the next gathers (bench/api.py at 32
#: clients: 4 gave ~5 % more submits per second than 2, and 8 no more than 4); each holds a
#: pooled connection, so keep this well below the pool's size.
MAX_BATCH = 64
MAX_STATEMENTS = 4


def never_runs(problems: Sequence[tuple[str, str]]) -> ValidationFailed:
    """The 422 for a job that can never run (``gateway.domain.scheduling.reasons``'s
    ``never_fits_*``: bigger than its tenant's quota or than every node)."""
    return ValidationFailed(
        [
            FieldProblem(pointer="/replicas", detail=f"{resource}: {message}")
            for resource, message in problems
        ],
        detail="the job can never run: " + "; ".join(message for _, message in problems),
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Submitted:
    """The answer to a submit: the job, and whether this submit created it (False: an earlier
    submit with the same Idempotency-Key and body did, and this is its job as it is now)."""

    job: Job
    created: bool


def request_hash(body: Mapping[str, Any]) -> str:
    """A digest of the body's meaning: key order and whitespace do not change it."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class _Row:
    """One job's values for the insert, in ``SUBMIT``'s parameter order ($1-$10)."""

    id: uuid.UUID
    tenant: str
    name: str
    framework: str
    priority: int
    spec: str
    labels: str
    idempotency_key: str | None
    request_hash: str | None
    actor: str | None
    cpu_millis: int
    memory_bytes: int
    gpu_shares: int

    def as_json(self) -> str:
        """The row as a JSON object for ``SUBMIT_BATCH``, the spec and labels (JSON text
        already) spliced in as they are."""
        head = json_text(
            {
                "id": str(self.id),
                "tenant": self.tenant,
                "name": self.name,
                "framework": self.framework,
                "priority": self.priority,
                "idempotency_key": self.idempotency_key,
                "request_hash": self.request_hash,
                "actor": self.actor,
                "cpu_millis": self.cpu_millis,
                "memory_bytes": self.memory_bytes,
                "gpu_shares": self.gpu_shares,
            }
        )
        return f'{head[:-1]},"spec":{self.spec},"labels":{self.labels}}}'

    def values(self) -> list[Any]:
        return [
            self.id,
            self.tenant,
            self.name,
            self.framework,
            self.priority,
            self.spec,
            self.labels,
            self.idempotency_key,
            self.request_hash,
            self.actor,
        ]


_Waiter = tuple[_Row, "asyncio.Future[Mapping[str, Any] | None]"]


class Submits:
    """Writes submitted jobs for one engine; concurrent submits share a statement."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_batch: int = MAX_BATCH,
        max_statements: int = MAX_STATEMENTS,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.max_statements = max_statements
        self._waiting: list[_Waiter] = []
        self._writers: set[asyncio.Task[None]] = set()
        #: Batch statements run, jobs they wrote, and batches PostgreSQL refused whole.
        self.statements = 0
        self.batched = 0
        self.refused = 0
        #: Told of every job this object queues, e.g. to spare the admission loop reading it.
        self.on_queued: Callable[[PendingJob], None] | None = None

    async def submit(
        self,
        spec: JobSpec,
        *,
        body_hash: str,
        idempotency_key: str | None,
        actor: str | None,
        pods: tuple[PodRequest, ...],
    ) -> Submitted:
        """Insert a queued job with its 'submitted' event, or return the job an earlier retry
        made.

        ``pods`` are the spec's (``pod_requests``), already found to fit the cluster's nodes one
        day (``never_fits_nodes``); a job bigger than its tenant's quota is refused here, with
        the tenant's row read.
        """
        document = to_document(spec)
        labels = dict(spec.labels)
        total = spec.total()
        row = _Row(
            id=uuid.uuid4(),
            tenant=spec.tenant,
            name=spec.name,
            framework=spec.framework.value,
            priority=spec.priority,
            spec=json_text(document),
            labels=json_text(labels),
            idempotency_key=idempotency_key,
            request_hash=body_hash if idempotency_key else None,
            actor=actor,
            cpu_millis=total.cpu_millis,
            memory_bytes=total.memory_bytes,
            gpu_shares=total.gpu_shares,
        )
        written = await self._batched(row)
        if written is None:
            careful = await self._careful(row, spec)
            if isinstance(careful, Submitted):
                return careful
            written = careful
        job = job_of(written, spec=document, labels=labels)
        if self.on_queued is not None:
            self.on_queued(
                PendingJob(
                    id=job.id,
                    tenant=job.tenant,
                    priority=job.priority,
                    submitted_at=job.created_at.timestamp(),
                    queued_since=written["queued_at"].timestamp(),
                    pods=pods,
                )
            )
        return Submitted(job=job, created=True)

    async def close(self) -> None:
        """Wait for the batch statements in flight (submits still waiting are written too)."""
        while self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)

    # ----------------------------------------------------------------------------------------
    # The common case, batched.

    def _batched(self, row: _Row) -> asyncio.Future[Mapping[str, Any] | None]:
        """The row as written by a batch, or None when the batch skipped it."""
        future: asyncio.Future[Mapping[str, Any] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting.append((row, future))
        if len(self._writers) < self.max_statements:
            self._writers.add(asyncio.create_task(self._write_waiting(), name="submit-batch"))
        return future

    async def _write_waiting(self) -> None:
        """Write batches until no submit waits. Outcomes go to the waiters; only cancellation
        (the loop shutting down) ends it early, and cancels the submits it leaves."""
        try:
            while self._waiting:
                taken = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                # A submit whose request is gone (cancelled while it waited) is not written.
                batch = [waiter for waiter in taken if not waiter[1].done()]
                if not batch:
                    continue
                try:
                    written = await self._write(batch)
                except _ROW_ERRORS:
                    # PostgreSQL refused the statement as a whole for something in its rows (a
                    # rule the batch cannot skip, or a deadlock with another writer): each submit
                    # goes the careful way, which names its own problem.
                    self.refused += 1
                    written = {}
                except asyncio.CancelledError:
                    for _, future in [*batch, *self._waiting]:
                        future.cancel()
                    raise
                except Exception as exc:  # the database is unreachable, or unwell
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for row, future in batch:
                    if not future.done():
                        future.set_result(written.get(row.id))
        finally:
            # No await since the queue was last seen empty: a submit arriving after this line
            # finds a free writer place and starts one.
            self._writers.discard(asyncio.current_task())

    async def _write(self, batch: Sequence[_Waiter]) -> dict[uuid.UUID, Mapping[str, Any]]:
        # One parameter, a JSON array of the rows: asyncpg encodes a handful of arrays (one per
        # column) at several times the cost of one text, and the specs are JSON already.
        rows = "[" + ",".join(row.as_json() for row, _ in batch) + "]"
        async with driver_connection(self.engine) as conn:
            written = await conn.fetch(SUBMIT_BATCH, rows)
        self.statements += 1
        self.batched += len(written)
        return {record["id"]: record for record in written}

    # ----------------------------------------------------------------------------------------
    # The careful path: say why, or find a slot, or answer an earlier retry.

    async def _careful(self, row: _Row, spec: JobSpec) -> Mapping[str, Any] | Submitted:
        """The row written, or the job an earlier retry with the same Idempotency-Key made;
        raises to say why the job cannot be queued."""
        engine = self.engine
        name_taken: asyncpg.UniqueViolationError | None = None
        # One connection at a time: the lookups below take their own after this one is back,
        # so a storm of conflicting submits cannot hold the whole pool while waiting for more.
        async with driver_connection(engine) as conn:
            found = await conn.fetchrow(_QUOTA, row.tenant)
            if found is None:
                raise _no_tenant(row.tenant)
            # Before any insert or Idempotency-Key lookup: a retry meets today's ceiling too.
            too_high = above_ceiling(row.priority, tenant=row.tenant, ceiling=found["max_priority"])
            if too_high is not None:
                raise ValidationFailed([too_high])
            quota = quota_of(found)
            impossible = never_fits_quota(quota, spec.total())
            if impossible:
                raise never_runs(impossible)
            cap = quota.max_queued_jobs
            for attempt in range(SLOT_TRIES):
                slot = await _pick_slot(conn, row.tenant, cap, search=attempt >= SLOT_TRIES // 2)
                if slot is None:
                    break
                try:
                    written: Mapping[str, Any] | None = await conn.fetchrow(
                        SUBMIT, *row.values(), slot
                    )
                except asyncpg.UniqueViolationError as exc:
                    if exc.constraint_name == "uq_jobs_queue_slot":
                        continue  # another submit took this slot a moment ago
                    if exc.constraint_name != "uq_jobs_live_name":
                        raise
                    name_taken = exc
                    break
                except asyncpg.ForeignKeyViolationError as exc:
                    raise _no_tenant(row.tenant) from exc
                if written is None:  # the Idempotency-Key was used before
                    break
                return written
        if name_taken is not None:
            return await _live_name_taken(engine, spec, row, name_taken)
        if row.idempotency_key is not None:
            earlier = await _by_key(engine, row.tenant, row.idempotency_key)
            if earlier is not None:
                return _replay(earlier, row.request_hash)
        raise TooManyRequests(
            f"tenant {row.tenant!r} has {cap} queued jobs, its limit; retry when some are admitted",
            retry_after_seconds=QUEUED_CAP_RETRY_AFTER,
        )


async def _pick_slot(
    conn: asyncpg.Connection, tenant: str, cap: int, *, search: bool
) -> int | None:
    """A queue slot below ``cap`` to try: at random first, then by searching for a free one."""
    if cap <= 0:
        return None
    start = random.randrange(cap)
    if not search:
        return start
    if await conn.fetchval(_SLOTS_TAKEN, tenant) >= cap:
        return None
    found: int | None = await conn.fetchval(_FREE_SLOT, tenant, start, cap)
    return found


async def _live_name_taken(
    engine: AsyncEngine, spec: JobSpec, row: _Row, exc: Exception
) -> Submitted:
    if row.idempotency_key is not None:
        # A concurrent retry with the same key won the race: answer with its job.
        winner = await _by_key(engine, row.tenant, row.idempotency_key)
        if winner is not None:
            return _replay(winner, row.request_hash)
    raise Conflict(
        f"tenant {spec.tenant!r} already has a live job named {spec.name!r}; "
        "pick another name or wait until it ends"
    ) from exc


def _replay(earlier: RowMapping, body_hash: str | None) -> Submitted:
    if earlier["request_hash"] != body_hash:
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return Submitted(job=job_of(earlier), created=False)


async def _by_key(engine: AsyncEngine, tenant: str, key: str) -> RowMapping | None:
    async with engine.connect() as conn:
        result = await conn.execute(_BY_KEY, {"tenant": tenant, "key": key})
        return result.mappings().first()


def _no_tenant(tenant: str) -> ValidationFailed:
    return ValidationFailed(
        [FieldProblem(pointer="/tenant", detail=f"tenant {tenant!r} does not exist")]
    )
