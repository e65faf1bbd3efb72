"""The leader's in-memory queue stays the database's queue, whatever happens between cycles.

Seeded random histories through the real API and the real transition writer (submits alone and
in batches, some handed to the leader as its own submits, cancels of queued and admitted jobs,
ends, evictions that requeue with a backoff, cycles) are interleaved with cycles of one leader
that keeps its ``LeaderQueue``; after every cycle its queue must equal a queue loaded whole from
the database, job for job (priority, times, pods) and attempt for attempt, and hold nothing
of the jobs that left it.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.context import SUBMITS
from gateway.db.admission import LeaderQueue
from gateway.db.transitions import Change, move
from gateway.domain.lifecycle.states import JobState
from gateway.domain.scheduling.nodes import Node
from tests.integration.helpers import admit_and_place, grant_priority
from tests.integration.test_admission_cycle import Clock, job, make_tenant
from tests.openapi_check import CheckedClient

TENANTS = ("search", "ads")
STEPS = 40


async def jobs_in(engine: AsyncEngine, state: str) -> list[tuple[str, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT CAST(id AS text), attempt FROM jobs WHERE state = :s ORDER BY id"),
            {"s": state},
        )
        return [(row[0], row[1]) for row in rows]


async def moved(engine: AsyncEngine, target: JobState, change: Change, now: float) -> None:
    async with engine.begin() as conn:
        await move(conn, target, [change], now=now)


def same_queue(kept: LeaderQueue, loaded: LeaderQueue) -> list[str]:
    """How the two queues differ (nothing: they are the same)."""
    mine = {job.id: (job, kept.attempt(job.id)) for job in kept.jobs}
    theirs = {job.id: (job, loaded.attempt(job.id)) for job in loaded.jobs}
    differences = [f"only kept: {i}" for i in mine.keys() - theirs.keys()]
    differences += [f"only loaded: {i}" for i in theirs.keys() - mine.keys()]
    differences += [
        f"{i}: {mine[i]} != {theirs[i]}"
        for i in mine.keys() & theirs.keys()
        if mine[i] != theirs[i]
    ]
    if not differences and not kept.jobs.same_as(loaded.jobs):
        differences.append("same jobs, different order")
    return differences


@pytest.mark.parametrize("seed", range(4))
async def test_the_leaders_queue_equals_the_database_queue_after_random_histories(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...], seed: int
) -> None:
    rng = random.Random(seed)
    for tenant in TENANTS:
        await make_tenant(api, tenant, cpu="6", max_running_jobs=3)
        await grant_priority(api, 5, tenant)
    clock = Clock(1e9)
    queue = LeaderQueue()
    names = iter(range(10**6))

    def body() -> dict[str, Any]:
        return job(
            f"j{next(names)}",
            tenant=rng.choice(TENANTS),
            workers=rng.randint(1, 3),
            priority=rng.choice((0, 0, 3, 5)),
        )

    for _ in range(STEPS):
        clock.now += rng.choice((0.5, 5, 60))
        step = rng.choice(("submit", "submit", "batch", "cancel", "end", "evict", "cycle"))
        # Some submits are the leader's own, handed over primed; others another replica's.
        api.app[SUBMITS].on_queued = queue.prime if rng.random() < 0.5 else None
        if step == "submit":
            assert (await api.post("/v1/jobs", json=body())).status == 201
        elif step == "batch":
            items = [{"job": body()} for _ in range(rng.randint(2, 5))]
            answer = await api.post("/v1/jobs:batch", json={"jobs": items})
            assert answer.status == 200
        elif step == "cancel":
            live = await jobs_in(engine, rng.choice(("queued", "admitted")))
            if live:
                job_id, _ = rng.choice(live)
                assert (await api.post(f"/v1/jobs/{job_id}/cancel")).status == 200
        elif step in ("end", "evict"):
            admitted = await jobs_in(engine, "admitted")
            if admitted:
                job_id, attempt = rng.choice(admitted)
                change = Change(job_id=job_id, from_state=JobState.ADMITTED, attempt=attempt)
                if step == "end":
                    await moved(engine, JobState.SUCCEEDED, change, clock.now)
                else:
                    backoff = Change(
                        job_id=job_id,
                        from_state=JobState.ADMITTED,
                        attempt=attempt,
                        reason="NodeLost",
                        not_before=clock.now + rng.choice((0, 30)),
                    )
                    await moved(engine, JobState.QUEUED, backoff, clock.now)
        if step == "cycle" or rng.random() < 0.3:
            await admit_and_place(engine, nodes, queue, clock)
            loaded = LeaderQueue()
            async with engine.begin() as conn:
                await loaded.catch_up(conn)
            assert same_queue(queue, loaded) == [], f"seed {seed}"
            # Nothing of the jobs that left stays behind: as many pod shapes as a queue loaded
            # from nothing holds for the same jobs.
            assert queue.pod_shapes == loaded.pod_shapes, f"seed {seed}"


async def test_a_long_transaction_elsewhere_does_not_hide_queue_changes_from_the_leader(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    # An open transaction that has written holds PostgreSQL's snapshot horizon back for every
    # database of the server; jobs another replica queues meanwhile must still reach the leader.
    await make_tenant(api)
    queue = LeaderQueue()
    async with engine.begin() as conn:
        await queue.catch_up(conn)
    async with engine.connect() as long:
        await long.execute(text("SELECT pg_current_xact_id()"))  # it has a transaction id now
        first = (await api.post("/v1/jobs", json=job("while-held"))).body
        for _ in range(2):  # and again: an event read twice changes nothing
            async with engine.begin() as conn:
                await queue.catch_up(conn)
            assert [j.id for j in queue.jobs] == [first["id"]]
        assert (await api.post(f"/v1/jobs/{first['id']}/cancel")).status == 200
        async with engine.begin() as conn:
            await queue.catch_up(conn)
        assert list(queue.jobs) == []
        await long.rollback()
