"""The careful path of a submit: one job at a time, it queues the job or says exactly why not.

Group commit (``gateway.db.submits``) sends a job here when its batch statement skipped it or
when it names a priority class, and a batch request's transaction each job its statement skipped
or left to it. For one job, in order:

1. its tenant's rules (``for_tenant``, ``check_tenant``): the tenant exists, the job's priority
   is one it may use (``gateway.domain.scheduling.priority.resolve``: the value of a class the
   tenant was granted, else within its ceiling), and the job fits its quota one day, borrowing
   within its cohort's terms (``gateway.domain.scheduling.reasons``' ``never_fits_quota``); 422
   otherwise. A job that names a class is written at the class's value, in a spec that says so;
2. a queue slot below the tenant's max_queued_jobs (``pick_slot``: at random, then by a search;
   ``free_slots`` hands a batch its slots in order); none free is 429;
3. the insert (``gateway.db.transitions.SUBMIT``), which a live job of the same name stops (409),
   and which an earlier submit with the same Idempotency-Key turns into a replay: that submit's
   job (200), or 409 when it came with another body.

Invariants: these answers are the API's for a job submitted alone; the batch statement, whose
SQL holds the forms of step 1 for a job without a class (``SUBMIT_BATCH``), only skips the jobs
this path then answers. A job with a class is written in a transaction that holds its tenant's
grant of the class (``FOR SHARE``) from the read to the commit, so the grant cannot be revoked, nor
the class deleted, under a job being queued with it; the job's class columns are set in the same
transaction as its insert (``SUBMIT`` writes the row as every submit does, then ``_CLASS_OF_JOB``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from gateway.db.mapping import (
    BORROWING_COLUMNS,
    CLASS_COLUMNS,
    LENDING_COLUMNS,
    cohort_terms_of,
    job_of,
    priority_class_of,
    quota_of,
)
from gateway.db.transitions import JOB_COLUMNS, SUBMIT
from gateway.domain.jobs.spec import JobSpec, to_document
from gateway.domain.lifecycle.records import Job
from gateway.domain.problems import FieldProblem
from gateway.domain.resources import Extended
from gateway.domain.scheduling.nodes import PodRequest
from gateway.domain.scheduling.priority import PriorityClass, resolve
from gateway.domain.scheduling.reasons import never_fits_quota
from gateway.errors import Conflict, TooManyRequests, ValidationFailed
from gateway.jsontext import json_text

# A tenant's quota, queued cap, priority ceiling, and cohort with its limits.
QUOTA = (
    "SELECT quota_cpu_millis, quota_memory_bytes, quota_gpu_shares, quota_extended, "
    "max_running_jobs, "
    "max_queued_jobs, max_priority, cohort, "
    + ", ".join((*BORROWING_COLUMNS.values(), *LENDING_COLUMNS.values()))
    + " FROM tenants WHERE name = $1"
)
# Free slots below the cap ($3), searched upwards from a start ($2) and wrapping around, at most
# $4 of them; the count of slots taken first, so a tenant at its cap is refused without a scan.
_SLOTS_TAKEN = (
    "SELECT count(*) FROM jobs WHERE tenant = $1 AND state = 'queued' AND queue_slot IS NOT NULL"
)
# The set-returning functions sit in the select lists: there they stream, and the LIMIT stops
# them early (in FROM, each would be materialised whole first: 31 ms at a cap of 1,000,000).
_FREE_SLOTS = """
    SELECT s FROM (
        SELECT generate_series($2::int, $3::int - 1) AS s
        UNION ALL SELECT generate_series(0, $2::int - 1) AS s
    ) candidates
    WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE tenant = $1 AND state = 'queued'
                      AND queue_slot = candidates.s)
    LIMIT $4
"""
SLOT_TRIES = 6
QUEUED_CAP_RETRY_AFTER = 30

# The class ($2) as its tenant ($1) was granted it: no row for a class it was not granted, or that
# does not exist. The grant and the class stay locked until the caller's transaction ends, so
# neither the grant's revocation nor the class's deletion or change can pass a job being queued
# with it. The tenant's row is locked first (_TENANT_KEY), as the job's foreign key would lock it
# later: a tenant write, which locks the row and then revokes grants, waits for the submit, or
# the submit for it, never each for the other.
_TENANT_KEY = "SELECT 1 FROM tenants WHERE name = $1 FOR KEY SHARE"
_GRANTED_CLASS = """
    SELECT c.name, c.value, c.preemptible
    FROM tenant_priority_classes g JOIN priority_classes c ON c.name = g.priority_class
    WHERE g.tenant = $1 AND g.priority_class = $2
    FOR SHARE
"""
# A job's class and preemptibility, resolved at submit, in the transaction that inserted it.
_CLASS_OF_JOB = "UPDATE jobs SET priority_class = $2, preemptible = $3 WHERE id = $1"

# The jobs earlier submits made with these Idempotency-Keys ($2), each of its tenant ($1).
_BY_KEYS = f"""
    SELECT {JOB_COLUMNS}, {CLASS_COLUMNS}, idempotency_key, request_hash FROM jobs
    WHERE (tenant, idempotency_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""


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


@dataclass(frozen=True, kw_only=True, slots=True)
class Submission:
    """A checked job to submit (``Submits.submit``, ``Submits.submit_together``). ``pods`` are
    the spec's (``pod_requests``), already found to fit the cluster's nodes one day
    (``never_fits_nodes``); ``body_hash`` is the request's (``request_hash``), kept with an
    Idempotency-Key to tell a retry from another request."""

    spec: JobSpec
    body_hash: str
    idempotency_key: str | None
    actor: str | None
    pods: tuple[PodRequest, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRow:
    """One job's values for the insert, in ``SUBMIT``'s parameter order ($1-$10), and its
    priority class (None: none; set after the insert) with whether it may be preempted.
    ``priority`` is None only until a job that names a class and no priority is resolved."""

    id: uuid.UUID
    tenant: str
    name: str
    framework: str
    priority: int | None
    spec: str
    labels: str
    idempotency_key: str | None
    request_hash: str | None
    actor: str | None
    cpu_millis: int
    memory_bytes: int
    gpu_shares: int
    #: Extended resources the whole job asks for, by name.
    extended: Extended = ()
    priority_class: str | None = None
    preemptible: bool = True

    def as_json(self, slot: int | None = None) -> str:
        """The row as a JSON object for ``SUBMIT_BATCH``, the spec and labels (JSON text
        already) spliced in as they are; with its own queue slot, or none (one at random)."""
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
                "extended": dict(self.extended),
                "slot": slot,
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

    @property
    def key(self) -> tuple[str, str] | None:
        """(tenant, Idempotency-Key), the key's scope with it; None without a key."""
        return None if self.idempotency_key is None else (self.tenant, self.idempotency_key)


@dataclass(frozen=True, kw_only=True, slots=True)
class JobToWrite:
    """A submission made ready to write: its row, and the spec document and labels its answer
    shows."""

    submission: Submission
    row: JobRow
    document: dict[str, Any]
    labels: dict[str, str]

    @property
    def classed(self) -> tuple[str | None, bool]:
        """Its priority class and whether it is preemptible, as ``job_of`` takes them."""
        return self.row.priority_class, self.row.preemptible


def job_to_write(submission: Submission) -> JobToWrite:
    spec = submission.spec
    key = submission.idempotency_key
    document = to_document(spec)
    labels = dict(spec.labels)
    total = spec.total()
    row = JobRow(
        id=uuid.uuid4(),
        tenant=spec.tenant,
        name=spec.name,
        framework=spec.framework.value,
        priority=spec.priority,
        spec=json_text(document),
        labels=json_text(labels),
        idempotency_key=key,
        request_hash=submission.body_hash if key else None,
        actor=submission.actor,
        cpu_millis=total.cpu_millis,
        memory_bytes=total.memory_bytes,
        gpu_shares=total.gpu_shares,
        extended=total.extended,
    )
    return JobToWrite(submission=submission, row=row, document=document, labels=labels)


@dataclass(frozen=True, kw_only=True, slots=True)
class Missed:
    """The careful insert wrote nothing: a live job has the name (``name_taken``), the
    Idempotency-Key was used before, or no queue slot below ``cap`` was free."""

    name_taken: asyncpg.UniqueViolationError | None
    cap: int


Lookup = Callable[[tuple[str, str]], Awaitable[Mapping[str, Any] | None]]


async def for_tenant(
    conn: asyncpg.Connection, job: JobToWrite, found: Mapping[str, Any] | None
) -> JobToWrite:
    """``check_tenant``, with the class the job names as its tenant was granted it, read on
    ``conn``: inside a transaction, the grant stays locked until it ends (``_GRANTED_CLASS``)."""
    name = job.submission.spec.priority_class
    granted = None
    if found is not None and name is not None:
        await conn.execute(_TENANT_KEY, job.row.tenant)
        record = await conn.fetchrow(_GRANTED_CLASS, job.row.tenant, name)
        granted = None if record is None else priority_class_of(record)
    return check_tenant(job, found, granted)


def check_tenant(
    job: JobToWrite, found: Mapping[str, Any] | None, granted: PriorityClass | None = None
) -> JobToWrite:
    """The job as its tenant (its row, ``found``) lets it be written, or raise why the tenant can
    never queue it: none such, a priority it may not use (with ``granted``, the class the job
    names as the tenant was granted it, else None), or a job bigger than its quota.

    A job that names a class comes back at the class's value, with the class's preemptibility.
    """
    row = job.row
    spec = job.submission.spec
    if found is None:
        raise _no_tenant(row.tenant)
    # Before any insert or Idempotency-Key lookup: a retry meets today's ceiling and grants too.
    resolved = resolve(
        tenant=row.tenant,
        ceiling=found["max_priority"],
        priority=spec.priority,
        priority_class=spec.priority_class,
        granted=granted,
    )
    if isinstance(resolved, FieldProblem):
        raise ValidationFailed([resolved])
    impossible = never_fits_quota(quota_of(found), spec.total(), cohort_terms_of(found))
    if impossible:
        raise never_runs(impossible)
    if resolved.priority_class is None:
        return job
    # The stored spec says what the job runs at: the class's value.
    spec = replace(spec, priority=resolved.priority)
    document = to_document(spec)
    return replace(
        job,
        submission=replace(job.submission, spec=spec),
        row=replace(
            row,
            priority=resolved.priority,
            spec=json_text(document),
            priority_class=resolved.priority_class,
            preemptible=resolved.preemptible,
        ),
        document=document,
    )


async def insert_carefully(
    conn: asyncpg.Connection,
    job: JobToWrite,
    found: Mapping[str, Any] | None,
    *,
    in_transaction: bool,
) -> Mapping[str, Any] | Missed:
    """Insert the job, which ``for_tenant`` let through, in a free queue slot, or say what
    stopped it. Inside a transaction (a batch's, or a job's with a class) each try is a
    savepoint (a unique violation must not end the transaction), and the search for a free slot
    comes first: the batch's own jobs took the ones a random draw would find. A job with a
    class is written only inside a transaction: its class columns with its row."""
    row = job.row
    assert found is not None
    assert row.priority is not None
    assert in_transaction or row.priority_class is None
    cap = quota_of(found).max_queued_jobs
    for attempt in range(SLOT_TRIES):
        search = in_transaction or attempt >= SLOT_TRIES // 2
        slot = await pick_slot(conn, row.tenant, cap, search=search)
        if slot is None:
            break
        try:
            if in_transaction:
                async with conn.transaction():
                    written: Mapping[str, Any] | None = await conn.fetchrow(
                        SUBMIT, *row.values(), slot
                    )
                    if written is not None and row.priority_class is not None:
                        await conn.execute(
                            _CLASS_OF_JOB, row.id, row.priority_class, row.preemptible
                        )
            else:
                written = await conn.fetchrow(SUBMIT, *row.values(), slot)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "uq_jobs_queue_slot":
                continue  # another submit took this slot a moment ago
            if exc.constraint_name != "uq_jobs_live_name":
                raise
            return Missed(name_taken=exc, cap=cap)
        except asyncpg.ForeignKeyViolationError as exc:
            raise _no_tenant(row.tenant) from exc
        if written is None:  # the Idempotency-Key was used before
            break
        return written
    return Missed(name_taken=None, cap=cap)


async def why_not_written(job: JobToWrite, missed: Missed, lookup: Lookup) -> Submitted:
    """The earlier retry's job, when the Idempotency-Key made one; else raise why the job was
    not written: its name is taken (409), or its tenant's queue is full (429)."""
    row = job.row
    key = row.key
    # A concurrent retry with the same key may have won the race for the name: its job answers.
    earlier = await lookup(key) if key is not None else None
    if earlier is not None:
        return replay(earlier, row.request_hash)
    if missed.name_taken is not None:
        raise Conflict(
            f"tenant {row.tenant!r} already has a live job named {row.name!r}; "
            "pick another name or wait until it ends"
        ) from missed.name_taken
    raise queue_full(row.tenant, missed.cap)


def queue_full(tenant: str, cap: int) -> TooManyRequests:
    """429: the tenant's queue holds ``cap`` jobs, its limit."""
    return TooManyRequests(
        f"tenant {tenant!r} has {cap} queued jobs, its limit; retry when some are admitted",
        retry_after_seconds=QUEUED_CAP_RETRY_AFTER,
    )


async def free_slots(
    conn: asyncpg.Connection,
    rows: Sequence[JobRow],
    tenants: Mapping[str, Mapping[str, Any] | None],
) -> dict[uuid.UUID, int]:
    """Queue slots for ``rows``, in their order: each tenant's free slots, ascending, go to its
    first rows (``SUBMIT_BATCH`` inserts in slot order, so in the rows' order too); rows past
    them get none."""
    by_tenant: dict[str, list[JobRow]] = {}
    for row in rows:
        by_tenant.setdefault(row.tenant, []).append(row)
    slots: dict[uuid.UUID, int] = {}
    for tenant, waiting in by_tenant.items():
        found = tenants[tenant]
        cap = 0 if found is None else int(found["max_queued_jobs"])
        if cap <= 0:
            continue
        wanted = min(len(waiting), cap - await conn.fetchval(_SLOTS_TAKEN, tenant))
        if wanted <= 0:
            continue
        free = await conn.fetch(_FREE_SLOTS, tenant, random.randrange(cap), cap, wanted)
        slots.update(zip((row.id for row in waiting), sorted(r[0] for r in free), strict=False))
    return slots


async def pick_slot(conn: asyncpg.Connection, tenant: str, cap: int, *, search: bool) -> int | None:
    """A queue slot below ``cap`` to try: at random first, then by searching for a free one."""
    if cap <= 0:
        return None
    start = random.randrange(cap)
    if not search:
        return start
    if await conn.fetchval(_SLOTS_TAKEN, tenant) >= cap:
        return None
    found: int | None = await conn.fetchval(_FREE_SLOTS, tenant, start, cap, 1)
    return found


async def by_keys(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Mapping[str, Any]]:
    """The jobs earlier submits made with these (tenant, Idempotency-Key) pairs, by pair."""
    found = await conn.fetch(_BY_KEYS, [tenant for tenant, _ in keys], [key for _, key in keys])
    return {(record["tenant"], record["idempotency_key"]): record for record in found}


def replay(earlier: Mapping[str, Any], body_hash: str | None) -> Submitted:
    if earlier["request_hash"] != body_hash:
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return Submitted(job=job_of(earlier), created=False)


def _no_tenant(tenant: str) -> ValidationFailed:
    return ValidationFailed(
        [FieldProblem(pointer="/tenant", detail=f"tenant {tenant!r} does not exist")]
    )
