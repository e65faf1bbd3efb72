"""Submitting jobs: the insert of a queued job with its 'submitted' event, many at a time.

``Submits.submit`` is the hottest path in Muster. Its common case (the tenant exists, the job is
within the tenant's quota and priority ceiling and names no priority class, a random queue slot
is free, the name and the Idempotency-Key are new) is written by group commit: submits that
arrive while earlier ones are being written wait, and go to the database together, as one
statement that inserts every job and its event. Under load this costs PostgreSQL about a third
of what one statement per job did, and the gateway less than half (bench/api.py); an idle
gateway writes a lone submit at once, without waiting for company.

``Submits.submit_together`` writes the jobs of one batch request (``POST /v1/jobs:batch``) in a
transaction of their own: the same statement inserts every job it can, the careful path answers
the others on the same transaction, and the lot commits or rolls back together.

Invariants:

- A job and its 'submitted' event are written by one statement, so neither exists without the
  other; a batch statement commits or rolls back whole.
- A submit the batch did not insert (``ON CONFLICT DO NOTHING`` skipped it, its tenant is missing
  or too small, its priority is above the tenant's ceiling, or the batch statement failed on
  PostgreSQL's side) is retried alone on the careful path, which either inserts it or says
  exactly why not. So batching changes what statements run, never which answer a client gets.
- A job that names a priority class never goes to the batch statement: the careful path reads
  its tenant's grant of the class and writes it at the class's value, in a transaction of its
  own (``gateway.db.careful_submit``).
- At most ``max_statements`` batch statements are in flight, each with at most ``max_batch`` jobs;
  ``close`` waits for those in flight, so none is cut off by shutdown.
- max_queued_jobs is kept by queue slots (see ``gateway.db.models``): submits of one tenant never
  wait for each other's locks.
- A batch request's jobs commit together or not at all (a failure anywhere in its transaction
  writes none of them), and each gets the answer ``submit`` would give it alone, submitted in the
  batch's order: a tenant's free queue slots go to its first jobs, so past the queued cap the
  answers are 429 from the first job that finds none (batch requests of one tenant take turns;
  against single submits arriving at the same moment, who gets the last slots is a race, as
  between single submits). Its jobs reach ``on_queued`` after the commit, never before.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.careful_submit import (
    QUOTA,
    JobRow,
    JobToWrite,
    Missed,
    Submission,
    Submitted,
    by_keys,
    for_tenant,
    free_slots,
    insert_carefully,
    job_to_write,
    never_runs,
    queue_full,
    replay,
    why_not_written,
)
from gateway.db.engine import driver_connection
from gateway.db.mapping import job_of
from gateway.db.transitions import SUBMIT_BATCH
from gateway.domain.jobs.spec import JobSpec
from gateway.domain.scheduling.nodes import PodRequest
from gateway.domain.scheduling.queueing import PendingJob
from gateway.errors import (
    ClientError,
    Conflict,
    DatabaseUnavailable,
    TooManyRequests,
    ValidationFailed,
)

__all__ = ["Submission", "Submits", "Submitted", "never_runs", "request_hash"]

# Submits run on the driver connection directly (positional asyncpg SQL): SQLAlchemy's statement
# layer cost several times the round trip itself here. The statements that write the job and its
# 'submitted' event are the transition writer's (gateway.db.transitions); those that find a slot
# or say why not are the careful path's (gateway.db.careful_submit).

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
#: Tries of a batch request's transaction that PostgreSQL ended to break a deadlock (two batches
#: of one tenant each waiting for a queue slot or a name the other holds): nothing of a try that
#: failed was written, so the next starts afresh.
TOGETHER_TRIES = 3
# Batch requests of one tenant take turns, for the length of their transactions: each sees the
# queue slots the one before it took, so neither waits for a slot the other holds while holding
# one the other wants (a deadlock PostgreSQL would break only after a second). Submits of single
# jobs do not take turns: they hold a slot only for a statement.
_TENANT_TURN = "SELECT pg_advisory_xact_lock(hashtext('submit-batch:' || $1))"


def request_hash(body: Mapping[str, Any]) -> str:
    """A digest of the body's meaning: key order and whitespace do not change it."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


_Waiter = tuple[JobRow, "asyncio.Future[Mapping[str, Any] | None]"]
#: What the careful path makes of a job: the row it wrote, or its earlier retry's job.
_Careful = Mapping[str, Any] | Submitted


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
        # Batch requests hold a pooled connection for their whole transaction: as many at once as
        # group commit has statements, so that they leave the pool to everything else.
        self._together = asyncio.Semaphore(max_statements)
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
        made; raises why not (``ValidationFailed``, ``Conflict``, ``TooManyRequests``).

        The arguments are a ``Submission``'s; a job bigger than its tenant's quota is refused
        here, with the tenant's row read.
        """
        job = job_to_write(
            Submission(
                spec=spec,
                body_hash=body_hash,
                idempotency_key=idempotency_key,
                actor=actor,
                pods=pods,
            )
        )
        # A job with a priority class goes the careful way at once: only it reads the grants.
        written = None if spec.priority_class is not None else await self._batched(job.row)
        if written is None:
            job, careful = await self._careful(job)
            if isinstance(careful, Submitted):
                return careful
            written = careful
        return self._queued(job, written)

    async def submit_together(
        self, submissions: Sequence[Submission]
    ) -> list[Submitted | ClientError]:
        """Write the jobs of one batch request in one transaction (see the module docstring):
        for each, in order, its job or why it was not queued (``ValidationFailed``, ``Conflict``,
        ``TooManyRequests``), as ``submit`` would answer it alone.

        Raises, having written nothing, when the database fails (``DatabaseUnavailable``
        included, for a transaction PostgreSQL kept ending to break deadlocks).
        """
        jobs = [job_to_write(submission) for submission in submissions]
        async with self._together:
            for attempt in range(1, TOGETHER_TRIES + 1):
                try:
                    # The jobs as written: a job with a priority class at the class's value.
                    written, outcomes = await self._write_together(jobs)
                    break
                except asyncpg.TransactionRollbackError as exc:
                    if attempt == TOGETHER_TRIES:
                        raise DatabaseUnavailable(
                            f"a batch of {len(jobs)} jobs met concurrent writers "
                            f"{TOGETHER_TRIES} times; nothing of it was written"
                        ) from exc
        # After the commit: the admission loop is handed only jobs that exist.
        return [
            outcome if isinstance(outcome, Submitted | ClientError) else self._queued(job, outcome)
            for job, outcome in zip(written, outcomes, strict=True)
        ]

    async def close(self) -> None:
        """Wait for the batch statements in flight (submits still waiting are written too)."""
        while self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)

    def _queued(self, job: JobToWrite, written: Mapping[str, Any]) -> Submitted:
        """The answer for a job just written, which goes to ``on_queued`` too."""
        made = job_of(written, spec=job.document, labels=job.labels, classed=job.classed)
        if self.on_queued is not None:
            self.on_queued(
                PendingJob(
                    id=made.id,
                    tenant=made.tenant,
                    priority=made.priority,
                    submitted_at=made.created_at.timestamp(),
                    queued_since=written["queued_at"].timestamp(),
                    pods=job.submission.pods,
                    preemptible=made.preemptible,
                )
            )
        return Submitted(job=made, created=True)

    # ----------------------------------------------------------------------------------------
    # The common case, batched.

    def _batched(self, row: JobRow) -> asyncio.Future[Mapping[str, Any] | None]:
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
        async with driver_connection(self.engine) as conn:
            written = await _insert_many(conn, [(row, None) for row, _ in batch])
        self.statements += 1
        self.batched += len(written)
        return written

    # ----------------------------------------------------------------------------------------
    # A batch request: one transaction.

    async def _write_together(
        self, submitted: Sequence[JobToWrite]
    ) -> tuple[list[JobToWrite], list[_Careful | ClientError]]:
        """One try of ``submit_together``'s transaction: the jobs as they are to be written (one
        with a priority class at the class's value), and each one's written row, earlier job, or
        refusal, in order."""
        jobs = list(submitted)
        outcomes: list[_Careful | ClientError | None] = [None] * len(jobs)
        async with driver_connection(self.engine) as conn, conn.transaction():
            # 1. The batch's turn at each of its tenants (in name order, so that two batches of
            #    the same tenants cannot wait for each other); then their rows, and the jobs
            #    earlier submits made with the batch's keys, read once.
            names = sorted({job.row.tenant for job in jobs})
            for name in names:
                await conn.execute(_TENANT_TURN, name)
            tenants = {name: await conn.fetchrow(QUOTA, name) for name in names}
            keys = [job.row.key for job in jobs if job.row.key is not None]
            earlier = await by_keys(conn, keys) if keys else {}
            # 2. What the tenant's rules refuse, and retries of earlier submits, answered now; a
            #    job with a priority class is made the class's (its grant held to the commit).
            fresh: list[int] = []
            for index, job in enumerate(jobs):
                try:
                    job = jobs[index] = await for_tenant(conn, job, tenants[job.row.tenant])
                    replayed = earlier.get(job.row.key) if job.row.key is not None else None
                    if replayed is None:
                        fresh.append(index)
                    else:
                        outcomes[index] = replay(replayed, job.row.request_hash)
                except (ValidationFailed, Conflict) as exc:
                    outcomes[index] = exc
            # 3. Queue slots in the batch's order; one statement for every job that got one,
            #    but those with a priority class (the statement cannot write their class).
            slots = await free_slots(conn, [jobs[i].row for i in fresh], tenants)
            written = await _insert_many(
                conn,
                [
                    (jobs[i].row, slots[jobs[i].row.id])
                    for i in fresh
                    if jobs[i].row.id in slots and jobs[i].row.priority_class is None
                ],
                savepoint=True,
            )

            # 4. The careful path for the rest, in order, on this transaction: a job the
            #    statement skipped (a name taken, a slot another writer took, no slot left) or
            #    left to it (a priority class; its slot from step 3 is still free for it).
            async def lookup(key: tuple[str, str]) -> Mapping[str, Any] | None:
                return (await by_keys(conn, [key])).get(key)

            for index in fresh:
                job = jobs[index]
                if job.row.id in written:
                    outcomes[index] = written[job.row.id]
                    continue
                found = tenants[job.row.tenant]
                if job.row.id not in slots and found is not None:
                    # No slot was left for it: its tenant's queue is full (this batch holds the
                    # tenant's turn), so it is answered without a round trip. A batch of a
                    # tenant at its cap then costs one statement, not one careful path per job.
                    outcomes[index] = queue_full(job.row.tenant, int(found["max_queued_jobs"]))
                    continue
                try:
                    found = tenants[job.row.tenant]
                    inserted = await insert_carefully(conn, job, found, in_transaction=True)
                    outcomes[index] = (
                        await why_not_written(job, inserted, lookup)
                        if isinstance(inserted, Missed)
                        else inserted
                    )
                except (ValidationFailed, Conflict, TooManyRequests) as exc:
                    outcomes[index] = exc
        answered = [outcome for outcome in outcomes if outcome is not None]
        assert len(answered) == len(jobs), "every job of the batch has its answer"
        return jobs, answered

    # ----------------------------------------------------------------------------------------
    # The careful path (gateway.db.careful_submit), for a submit its batch statement skipped.

    async def _careful(self, job: JobToWrite) -> tuple[JobToWrite, _Careful]:
        """The job as written (one with a priority class at the class's value) and its row, or
        the job an earlier retry with the same Idempotency-Key made; raises to say why the job
        cannot be queued."""
        engine = self.engine
        # One connection at a time: the lookups take their own after this one is back, so a
        # storm of conflicting submits cannot hold the whole pool while waiting for more.
        async with driver_connection(engine) as conn:
            if job.submission.spec.priority_class is None:
                found = await conn.fetchrow(QUOTA, job.row.tenant)
                job = await for_tenant(conn, job, found)
                outcome = await insert_carefully(conn, job, found, in_transaction=False)
            else:
                # The grant of the class is held from its read to the commit of the insert.
                async with conn.transaction():
                    found = await conn.fetchrow(QUOTA, job.row.tenant)
                    job = await for_tenant(conn, job, found)
                    outcome = await insert_carefully(conn, job, found, in_transaction=True)
        if not isinstance(outcome, Missed):
            return job, outcome

        async def lookup(key: tuple[str, str]) -> Mapping[str, Any] | None:
            async with driver_connection(engine) as conn:
                return (await by_keys(conn, [key])).get(key)

        return job, await why_not_written(job, outcome, lookup)


async def _insert_many(
    conn: asyncpg.Connection,
    rows: Sequence[tuple[JobRow, int | None]],
    *,
    savepoint: bool = False,
) -> dict[uuid.UUID, Mapping[str, Any]]:
    """``SUBMIT_BATCH`` for ``rows``, each with its own queue slot or none (drawn at random):
    the rows it wrote, by id. With ``savepoint`` (inside a batch's transaction), a statement
    PostgreSQL refuses for its rows writes nothing and leaves every row to the careful path."""
    if not rows:
        return {}
    # One parameter, a JSON array of the rows: asyncpg encodes a handful of arrays (one per
    # column) at several times the cost of one text, and the specs are JSON already.
    document = "[" + ",".join(row.as_json(slot) for row, slot in rows) + "]"
    if not savepoint:
        written = await conn.fetch(SUBMIT_BATCH, document)
    else:
        try:
            async with conn.transaction():
                written = await conn.fetch(SUBMIT_BATCH, document)
        except _ROW_ERRORS:
            return {}
    return {record["id"]: record for record in written}
