"""Every change of a job's state, written one way: the one writer of job states and job_events.

A job is created queued (``SUBMIT_BATCH``, ``SUBMIT``: the row and its 'submitted' event in one
statement) and changes state only through ``move``: admit, run, succeed, fail, requeue after an
eviction, cancel. ``record_restarts`` writes the one event that is not a change of state.

``move`` asks the domain's transition table (``can_transition``) before it writes, and for each
job it moves writes, in one statement of the caller's transaction:

1. the job row: its new state and what goes with it (``_TARGETS``: when it was admitted, started,
   finished or queued again, its attempt, its reason and message);
2. its job_events row;
3. its placements: started when it runs, released when it leaves the cluster (finished,
   requeued, cancelled);
4. its webhook outbox row, if its callback subscribed to the event (job.preempted rather than
   job.requeued for a requeue that is a preemption; and a NOTIFY for the
   delivery loops, at commit);
5. when it released placements (it left the cluster), a NOTIFY of ``Channel.FREED``: the
   leader's admission loop refills the capacity at once.

Invariants: every write is guarded by the state and attempt the caller saw, so a decision taken
on stale observations changes nothing (the job is left out of what ``move`` returns); no other
module writes a job's state or job_events (``tests/unit/test_one_transition_writer.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.channels import Channel, notify_sql
from gateway.db.tenants import could_ever_hold_sql
from gateway.db.webhooks import enqueue_sql
from gateway.domain.jobs.spec import CallbackEvent
from gateway.domain.lifecycle.states import INITIAL_STATE, EventType, JobState, can_transition

#: The columns a job is read with everywhere (``gateway.db.jobs`` reads, these statements return;
#: ``gateway.db.mapping.job_of`` makes them a ``Job``; seq orders pages, and queued_at and
#: not_before are admission's).
JOB_COLUMNS = (
    "id, seq, tenant, name, framework, state, reason, message, priority, attempt, spec, labels, "
    "submitted_by, created_at, updated_at, queued_at, not_before, admitted_at, started_at, "
    "finished_at, queue_position, tenant_queue_position"
)
# A submit returns the job without the spec and labels it sent (the caller has them).
_SUBMITTED = ", ".join(
    c.strip() for c in JOB_COLUMNS.split(",") if c.strip() not in ("spec", "labels")
)

# -- creation: queued ----------------------------------------------------------------------------

# Many jobs at once, one row each in a JSON array. A row is skipped when its tenant is missing or
# could never hold the job (the SQL form of Quota.could_ever_hold), when its priority is above the
# tenant's ceiling (of gateway.domain.scheduling.priority.above_ceiling), or when a unique index
# objects (name, queue slot, Idempotency-Key); RETURNING names the rows written. A row's queue
# slot is its own (a batch request's, from its tenant's free ones) or, when null, drawn at random.
# Rows are inserted in (tenant, slot) order: two batches in flight for one tenant meet on slots in
# the same order, so neither holds a slot the other waits for while it waits for one the other
# holds.
SUBMIT_BATCH = f"""
    WITH input AS (
        SELECT * FROM jsonb_to_recordset($1::text::jsonb)
            AS i(id uuid, tenant text, name text, framework text, priority int, spec jsonb,
                 labels jsonb, idempotency_key text, request_hash text, actor text,
                 cpu_millis bigint, memory_bytes bigint, gpu_shares bigint, extended jsonb,
                 slot int)
    ), fitting AS MATERIALIZED (
        SELECT i.*, COALESCE(i.slot, floor(random() * t.max_queued_jobs)::int) AS queue_slot
        FROM input i JOIN tenants t ON t.name = i.tenant
        WHERE {could_ever_hold_sql("t", "i")} AND i.priority <= t.max_priority
    ), job AS (
        INSERT INTO jobs (id, tenant, name, framework, state, priority, spec, labels,
                          idempotency_key, request_hash, submitted_by, queue_slot)
        SELECT id, tenant, name, framework, '{INITIAL_STATE.value}', priority, spec, labels,
               idempotency_key, request_hash, actor, queue_slot
        FROM fitting ORDER BY tenant, queue_slot
        ON CONFLICT DO NOTHING
        RETURNING {_SUBMITTED}
    ), event AS (
        INSERT INTO job_events (job_id, tenant, type, to_state, actor)
        SELECT id, tenant, '{EventType.SUBMITTED.value}', '{INITIAL_STATE.value}', submitted_by
        FROM job
    )
    SELECT * FROM job
"""
# One job, in a queue slot the caller chose ($11).
SUBMIT = f"""
    WITH job AS (
        INSERT INTO jobs (id, tenant, name, framework, state, priority, spec, labels,
                          idempotency_key, request_hash, submitted_by, queue_slot)
        VALUES ($1, $2, $3, $4, '{INITIAL_STATE.value}', $5, $6::jsonb, $7::jsonb, $8, $9, $10,
                $11)
        ON CONFLICT (tenant, idempotency_key) DO NOTHING
        RETURNING {_SUBMITTED}
    ), event AS (
        INSERT INTO job_events (job_id, tenant, type, to_state, actor)
        SELECT id, tenant, '{EventType.SUBMITTED.value}', '{INITIAL_STATE.value}', $10 FROM job
    )
    SELECT * FROM job
"""

# -- changes of state ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """One job to move: the state and attempt the caller saw it in (the guard), and the words
    of the move. ``data`` goes to the event; ``not_before`` (epoch seconds) is the end of a
    requeued job's backoff."""

    job_id: str
    from_state: JobState
    attempt: int
    reason: str | None = None
    message: str | None = None
    actor: str | None = None
    data: Mapping[str, Any] | None = None
    not_before: float | None = None
    #: A requeue that is a preemption: counted in ``preemptions`` (not against the requeue
    #: limit), and announced as job.preempted rather than job.requeued.
    preempted: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class _Target:
    event: EventType
    callback: CallbackEvent
    assignments: str  # SQL SET items besides the state, over the change ``c``
    placements: str | None  # SQL SET items of the job's live placements, if they change
    # The callback of the changes marked ``preempted`` instead, if they may be.
    preempted_callback: CallbackEvent | None = None


_WORDS = "reason = c.reason, message = c.message"
_OFF_THE_QUEUE = "queue_position = NULL, tenant_queue_position = NULL"
_TARGETS = {
    JobState.ADMITTED: _Target(
        event=EventType.ADMITTED,
        callback=CallbackEvent.ADMITTED,
        # A waiting reason is of the queue; an admitted job has none.
        assignments=f"admitted_at = to_timestamp(:now), reason = NULL, message = NULL, "
        f"{_OFF_THE_QUEUE}",
        placements=None,  # the caller writes them, in the same transaction
    ),
    JobState.RUNNING: _Target(
        event=EventType.RUNNING,
        callback=CallbackEvent.RUNNING,
        assignments=f"started_at = to_timestamp(:now), {_WORDS}",
        placements="started_at = now()",
    ),
    JobState.SUCCEEDED: _Target(
        event=EventType.SUCCEEDED,
        callback=CallbackEvent.SUCCEEDED,
        assignments=f"finished_at = now(), {_WORDS}",
        placements="released_at = now()",
    ),
    JobState.FAILED: _Target(
        event=EventType.FAILED,
        callback=CallbackEvent.FAILED,
        assignments=f"finished_at = now(), {_WORDS}",
        placements="released_at = now()",
    ),
    JobState.QUEUED: _Target(  # requeued after an eviction: a new attempt, after a backoff
        event=EventType.REQUEUED,
        callback=CallbackEvent.REQUEUED,
        assignments="attempt = j.attempt + 1, restarts = 0, queued_at = to_timestamp(:now), "
        "not_before = to_timestamp(c.not_before), admitted_at = NULL, started_at = NULL, "
        "preemptions = j.preemptions + CASE WHEN c.preempted THEN 1 ELSE 0 END, "
        f"queue_slot = NULL, {_WORDS}",
        placements="released_at = now()",
        preempted_callback=CallbackEvent.PREEMPTED,
    ),
    JobState.CANCELLED: _Target(
        event=EventType.CANCELLED,
        callback=CallbackEvent.CANCELLED,
        assignments=f"finished_at = now(), {_WORDS}, {_OFF_THE_QUEUE}",
        placements="released_at = now()",
    ),
}


def _move_sql(target: JobState) -> str:
    spec = _TARGETS[target]
    placements = (
        ""
        if spec.placements is None
        else f"""
        , placements AS (
            UPDATE placements p SET {spec.placements}
            FROM moved m WHERE p.job_id = m.id AND p.released_at IS NULL
            RETURNING 1
        )"""
    )
    callback_where, preempted_outbox, preempted_rows = "TRUE", "", ""
    if spec.preempted_callback is not None:
        callback_where = "NOT j.moved_preempted"
        preempted_outbox = f""", preempted_outbox AS (
            {enqueue_sql(spec.preempted_callback, "moved j", where="j.moved_preempted")}
            RETURNING 1
        )"""
        preempted_rows = " + (SELECT count(*) FROM preempted_outbox)"
    released = (
        "(SELECT count(*) FROM placements)"
        if spec.placements and "released_at" in spec.placements
        else "0"
    )
    return f"""
        WITH c AS (
            SELECT * FROM jsonb_to_recordset(CAST(:changes AS jsonb))
                AS c(id uuid, from_state text, attempt int, reason text, message text,
                     actor text, data jsonb, not_before double precision, preempted boolean)
        ), moved AS (
            UPDATE jobs j SET state = '{target.value}', updated_at = now(), {spec.assignments}
            FROM c
            WHERE j.id = c.id AND j.state = c.from_state AND j.attempt = c.attempt
            RETURNING j.*, c.from_state AS moved_from, c.reason AS moved_reason,
                      c.message AS moved_message, c.actor AS moved_actor, c.data AS moved_data,
                      c.preempted AS moved_preempted
        ), event AS (
            INSERT INTO job_events (job_id, tenant, type, from_state, to_state, reason, message,
                                    actor, data)
            SELECT id, tenant, '{spec.event.value}', moved_from, '{target.value}', moved_reason,
                   moved_message, moved_actor, COALESCE(moved_data, '{{}}'::jsonb)
            FROM moved
        ){placements}, outbox AS (
            {enqueue_sql(spec.callback, "moved j", where=callback_where)}
            RETURNING 1
        ){preempted_outbox}
        SELECT m.id, (SELECT count(*) FROM outbox){preempted_rows} AS outbox_rows,
               {released} AS released_rows
        FROM moved m
    """


_MOVES = {target: text(_move_sql(target)) for target in _TARGETS}
_NOTIFY_WEBHOOKS = text(notify_sql(Channel.WEBHOOKS))
_NOTIFY_FREED = text(notify_sql(Channel.FREED))


async def move(
    conn: AsyncConnection, target: JobState, changes: Sequence[Change], *, now: float
) -> list[str]:
    """Move every job of ``changes`` to ``target`` (see the module docstring); the ids of the
    jobs moved. A job not in the state and attempt its change names is left as it is.

    ``now`` is the caller's clock for the times the lifecycle and admission compare with it
    (admitted, started, queued again); raises ValueError for a move the state machine has not.
    """
    refused = [c for c in changes if not can_transition(c.from_state, target)]
    if refused:
        raise ValueError(
            f"no transition {refused[0].from_state.value} -> {target.value} "
            f"(job {refused[0].job_id})"
        )
    if not changes:
        return []
    rows = [
        {
            "id": change.job_id,
            "from_state": change.from_state.value,
            "attempt": change.attempt,
            "reason": change.reason,
            "message": change.message,
            "actor": change.actor,
            "data": change.data,
            "not_before": change.not_before,
            "preempted": change.preempted,
        }
        for change in changes
    ]
    moved = (await conn.execute(_MOVES[target], {"changes": json.dumps(rows), "now": now})).all()
    if moved and moved[0].outbox_rows:
        # Delivered at commit, so a delivery loop never wakes before the rows are visible.
        await conn.execute(_NOTIFY_WEBHOOKS)
    if moved and moved[0].released_rows:
        # Capacity came free: the leader's admission runs at once (at commit, as above).
        await conn.execute(_NOTIFY_FREED)
    # Only the ids: an admission cycle moves thousands of jobs, and nobody reads them back.
    return [str(row.id) for row in moved]


_RESTARTS = text(
    f"""
    WITH bumped AS (
        UPDATE jobs SET restarts = restarts + :count, updated_at = now()
        WHERE id = :id AND state = :state AND attempt = :attempt
        RETURNING id, tenant
    )
    INSERT INTO job_events (job_id, tenant, type, reason, message, data)
    SELECT id, tenant, '{EventType.RESTARTED.value}', :reason, :message, CAST(:data AS jsonb)
    FROM bumped
    """
)


async def record_restarts(conn: AsyncConnection, change: Change, pods: Sequence[str]) -> bool:
    """Count the restarts of ``pods`` (the job's state does not change) and write their event;
    False if the job is no longer in the state and attempt ``change`` names."""
    result = await conn.execute(
        _RESTARTS,
        {
            "id": change.job_id,
            "state": change.from_state.value,
            "attempt": change.attempt,
            "count": len(pods),
            "reason": change.reason,
            "message": change.message,
            "data": json.dumps({"pods": list(pods)}),
        },
    )
    return bool(result.rowcount)
