"""Running jobs in the database: what the reconciler reads (``ActiveJob``, ``PodOwner``), and
the transitions it writes.

Every write goes through ``gateway.db.transitions``, guarded by the job's state and attempt as
the reconciler saw them, so a decision taken on stale observations (a cancel meanwhile, another
replica's eviction) changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db import transitions
from gateway.db.mapping import active_job_of, placement_of, pod_owner_of
from gateway.db.transitions import Change
from gateway.domain.lifecycle.decisions import Decision
from gateway.domain.lifecycle.records import ActiveJob, PodOwner
from gateway.domain.lifecycle.states import JobState
from gateway.domain.scheduling.queueing import Placement

# Specs the caller has are not read again (a stored spec never changes; decoding them was most
# of a pass's cost).
_ACTIVE = text(
    """
    SELECT j.id, j.name, j.tenant, j.state, j.attempt, j.restarts, j.preemptions,
           CASE WHEN CAST(j.id AS text) = ANY(CAST(:known AS text[])) THEN NULL ELSE j.spec END
               AS spec,
           j.admitted_at, j.started_at, t.namespace
    FROM jobs j JOIN tenants t ON t.name = j.tenant
    WHERE j.state IN ('admitted', 'running') ORDER BY j.seq
    """
)
_PLACEMENTS = text(
    """
    SELECT p.job_id, p.pod_name, p.role, p.replica_index, p.node, p.cpu_millis, p.memory_bytes,
           p.gpu, p.borrowed_cpu_millis, p.borrowed_memory_bytes, p.borrowed_gpu_shares,
           p.extended
    FROM placements p JOIN jobs j ON j.id = p.job_id AND p.attempt = j.attempt
    WHERE j.state IN ('admitted', 'running') AND p.released_at IS NULL
    ORDER BY p.pod_name
    """
)
_OWNERS = text(
    "SELECT id, state, attempt, spec -> 'run_policy' ->> 'clean_pod_policy' AS clean_pod_policy "
    "FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))"
)


async def active_jobs(engine: AsyncEngine, *, known: Collection[str] = ()) -> list[ActiveJob]:
    """Every admitted or running job, in submit order, with its live placements, both as of one
    moment; the spec of a job whose id is in ``known`` is not read (it is None)."""
    # One snapshot for both statements: under READ COMMITTED a cancel committed between them
    # would leave a job still active whose placements are already released.
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            jobs = (await conn.execute(_ACTIVE, {"known": sorted(known)})).mappings().all()
            placements = (await conn.execute(_PLACEMENTS)).mappings().all()
    by_job: dict[Any, list[Placement]] = {}
    for placement in placements:
        by_job.setdefault(placement["job_id"], []).append(placement_of(placement))
    return [active_job_of(job, by_job.get(job["id"], ())) for job in jobs]


async def pod_owners(engine: AsyncEngine, job_ids: Sequence[str]) -> Mapping[str, PodOwner]:
    """The given jobs (those that exist) as the sweep of unwanted pods reads them, by id."""
    valid = [job_id for job_id in job_ids if _is_uuid(job_id)]
    if not valid:
        return {}
    async with engine.connect() as conn:
        rows = (await conn.execute(_OWNERS, {"ids": valid})).mappings().all()
    return {owner.id: owner for owner in map(pod_owner_of, rows)}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def apply(engine: AsyncEngine, job: ActiveJob, decision: Decision, now: float) -> bool:
    """Write the decision's restarts and transition. False if the job changed meanwhile.

    ``now`` is the reconciler's clock: started_at and queued_at, which the lifecycle and
    admission compare with that clock, come from it.
    """
    return job.id in await apply_all(engine, [(job, decision)], now)


async def apply_all(
    engine: AsyncEngine, decided: Sequence[tuple[ActiveJob, Decision]], now: float
) -> set[str]:
    """Write every decision's restarts and transition in one transaction, one statement per
    target state; the ids of the jobs whose decision was written (a job that changed meanwhile
    is left out, and so is its transition when its restarts could not be recorded)."""
    applied: set[str] = set()
    moves: dict[JobState, list[Change]] = {}
    async with engine.begin() as conn:
        for job, decision in decided:
            seen = Change(
                job_id=job.id,
                from_state=job.state,
                attempt=job.attempt,
                reason=decision.reason,
                message=decision.message,
            )
            if decision.restart:
                restarts = replace(seen, reason=decision.reason or "ReplicaRestarted")
                if not await transitions.record_restarts(conn, restarts, decision.restart):
                    continue
            if decision.transition is None:
                applied.add(job.id)
                continue
            moves.setdefault(decision.transition, []).append(
                replace(
                    seen, data={"attempt": seen.attempt}, not_before=decision.requeue_not_before
                )
            )
        for target, changes in moves.items():
            applied.update(await transitions.move(conn, target, changes, now=now))
    return applied


# -- clean-up after the TTL ----------------------------------------------------------------------

_DUE = text(
    """
    SELECT CAST(j.id AS text) AS id, j.name, t.namespace
    FROM jobs j JOIN tenants t ON t.name = j.tenant
    WHERE j.finished_at IS NOT NULL AND j.cleaned_up_at IS NULL
      AND j.finished_at + make_interval(secs => COALESCE(
              CAST(j.spec -> 'run_policy' ->> 'ttl_seconds_after_finished' AS bigint),
              :default_ttl)) <= to_timestamp(:now)
    ORDER BY j.finished_at
    LIMIT :limit
    """
)
_CLEANED_UP = text(
    "UPDATE jobs SET cleaned_up_at = now() "
    "WHERE id = ANY(CAST(:ids AS uuid[])) AND cleaned_up_at IS NULL"
)


async def due_for_clean_up(
    engine: AsyncEngine, *, now: float, default_ttl: int, limit: int = 100
) -> list[tuple[str, str, str]]:
    """Finished jobs whose TTL after finishing has passed at ``now`` and whose objects are not
    cleaned up yet, oldest first: (id, name, tenant namespace)."""
    async with engine.connect() as conn:
        rows = await conn.execute(_DUE, {"now": now, "default_ttl": default_ttl, "limit": limit})
        return [(row.id, row.name, row.namespace) for row in rows]


async def mark_cleaned_up(engine: AsyncEngine, job_ids: Sequence[str]) -> None:
    """Record that the jobs' objects are gone (one statement for them all)."""
    async with engine.begin() as conn:
        await conn.execute(_CLEANED_UP, {"ids": list(job_ids)})
