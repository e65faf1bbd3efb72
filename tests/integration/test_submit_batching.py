"""Submits written together (group commit): many jobs per statement, each with its own answer."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.context import SUBMITS
from gateway.db.admission import LeaderQueue
from gateway.db.engine import make_engine
from gateway.db.submits import Submits, Submitted
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.pods import pod_requests
from gateway.domain.jobs.spec import JobSpec
from gateway.domain.scheduling.priority import above_ceiling
from gateway.domain.scheduling.queueing import PendingJob
from gateway.errors import Conflict, DatabaseUnavailable, ValidationFailed
from tests.integration.helpers import grant_priority
from tests.integration.test_admission_cycle import job, make_tenant
from tests.openapi_check import CheckedClient


def spec(name: str, tenant: str = "search") -> JobSpec:
    checked = check_job_spec(job(name, tenant=tenant, gpu=0.5, workers=2))
    assert isinstance(checked, JobSpec), checked
    return checked


async def submit(
    submits: Submits, job_spec: JobSpec, *, key: str | None = None, body_hash: str = "h"
) -> Submitted:
    return await submits.submit(
        job_spec,
        body_hash=body_hash,
        idempotency_key=key,
        actor="alice",
        pods=pod_requests(job_spec),
    )


async def counts(engine: AsyncEngine) -> tuple[int, int, list[Any]]:
    """(jobs, 'submitted' events, job names whose submitted events are not exactly one)."""
    async with engine.connect() as conn:
        jobs = await conn.scalar(text("SELECT count(*) FROM jobs"))
        events = await conn.scalar(text("SELECT count(*) FROM job_events WHERE type='submitted'"))
        odd = (
            await conn.execute(
                text(
                    "SELECT j.name FROM jobs j LEFT JOIN job_events e "
                    "ON e.job_id = j.id AND e.type = 'submitted' "
                    "GROUP BY j.name HAVING count(e.id) <> 1"
                )
            )
        ).all()
    return jobs or 0, events or 0, list(odd)


async def test_submits_arriving_together_are_written_by_one_statement(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api, max_queued_jobs=1_000_000)  # so that random slots hardly collide
    submits = Submits(engine)
    results = await asyncio.gather(*(submit(submits, spec(f"j{i}")) for i in range(20)))
    assert submits.statements == 1
    assert submits.batched >= 19  # a job whose slot another took is written alone
    assert all(r.created for r in results)
    assert len({r.job.id for r in results}) == 20
    assert [r.job.name for r in results] == [f"j{i}" for i in range(20)]
    assert all(r.job.submitted_by == "alice" and r.job.state == "queued" for r in results)
    assert await counts(engine) == (20, 20, [])


async def test_a_batch_never_holds_more_than_its_limit(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    submits = Submits(engine, max_batch=4, max_statements=1)
    await asyncio.gather(*(submit(submits, spec(f"j{i}")) for i in range(10)))
    assert submits.statements == 3  # 4 + 4 + 2, one statement in flight at a time
    assert await counts(engine) == (10, 10, [])


async def test_a_skipped_submit_gets_its_own_answer_and_the_rest_of_its_batch_is_written(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    submits = Submits(engine)
    await submit(submits, spec("taken"))
    results = await asyncio.gather(
        submit(submits, spec("a")),
        submit(submits, spec("taken")),  # a live job has this name
        submit(submits, spec("b", tenant="nobody")),  # no such tenant
        submit(submits, spec("c")),
        return_exceptions=True,
    )
    assert isinstance(results[0], Submitted)
    assert results[0].created
    assert isinstance(results[1], Conflict)
    assert "already has a live job named 'taken'" in str(results[1])
    assert isinstance(results[2], ValidationFailed)
    assert results[2].problems[0].detail == "tenant 'nobody' does not exist"
    assert isinstance(results[3], Submitted)
    assert results[3].created
    assert await counts(engine) == (3, 3, [])


async def test_a_batch_writes_exactly_the_jobs_the_priority_ceiling_allows(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    # The batch statement's SQL form of the ceiling (skip the row) against the rule itself
    # (gateway.domain.scheduling.priority), which words the refusal on the careful path.
    await make_tenant(api, max_queued_jobs=1_000_000)  # so that random slots hardly collide
    await grant_priority(api, 10)
    priorities = [-1000, -1, 0, 9, 10, 11, 100, 1000]
    submits = Submits(engine)
    jobs = [dataclasses.replace(spec(f"p{i}"), priority=p) for i, p in enumerate(priorities)]
    results = await asyncio.gather(*(submit(submits, j) for j in jobs), return_exceptions=True)
    rule = [above_ceiling(p, tenant="search", ceiling=10) for p in priorities]
    assert [isinstance(r, Submitted) for r in results] == [problem is None for problem in rule]
    refused = [r.problems for r in results if isinstance(r, ValidationFailed)]
    assert refused == [(problem,) for problem in rule if problem is not None]
    assert submits.statements == 1
    assert submits.batched == rule.count(None)
    assert await counts(engine) == (rule.count(None), rule.count(None), [])


async def test_one_key_twice_in_a_batch_makes_one_job_and_both_get_it(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    submits = Submits(engine)
    results = await asyncio.gather(
        submit(submits, spec("k"), key="key-1"), submit(submits, spec("k"), key="key-1")
    )
    assert sorted(r.created for r in results) == [False, True]
    assert results[0].job.id == results[1].job.id
    assert await counts(engine) == (1, 1, [])


async def test_one_key_with_two_bodies_in_a_batch_makes_one_job_and_refuses_the_other(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    submits = Submits(engine)
    results = await asyncio.gather(
        submit(submits, spec("k"), key="key-1", body_hash="one"),
        submit(submits, spec("k"), key="key-1", body_hash="another"),
        return_exceptions=True,
    )
    created = [r for r in results if isinstance(r, Submitted)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(created) == 1
    assert created[0].created
    assert len(refused) == 1
    assert "already used with a different request body" in str(refused[0])
    assert await counts(engine) == (1, 1, [])


async def test_a_batch_postgresql_refuses_is_retried_one_submit_at_a_time(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    # The API never lets such a name through; built by hand, it breaks a check constraint
    # that ON CONFLICT cannot skip, so the whole batch statement fails.
    await make_tenant(api)
    submits = Submits(engine)
    bad = dataclasses.replace(spec("x"), name="Not_A_Label")
    results = await asyncio.gather(
        submit(submits, spec("a")),
        submit(submits, bad),
        submit(submits, spec("b")),
        return_exceptions=True,
    )
    assert isinstance(results[0], Submitted)
    assert isinstance(results[2], Submitted)
    assert isinstance(results[1], asyncpg.CheckViolationError)
    assert submits.batched == 0
    assert submits.refused == 1
    assert await counts(engine) == (2, 2, [])


async def test_an_unreachable_database_fails_every_waiting_submit_and_strands_none() -> None:
    dead = make_engine("postgresql://muster@127.0.0.1:9/muster", pool_size=1)
    submits = Submits(dead)
    try:
        results = await asyncio.gather(
            *(submit(submits, spec(f"j{i}")) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, DatabaseUnavailable) for r in results), results
        await asyncio.wait_for(submits.close(), 5)
        later = await asyncio.gather(submit(submits, spec("later")), return_exceptions=True)
        assert isinstance(later[0], DatabaseUnavailable)  # a new writer started for it
    finally:
        await dead.dispose()


async def test_close_waits_for_the_batch_in_flight(api: CheckedClient, engine: AsyncEngine) -> None:
    await make_tenant(api)
    submits = Submits(engine)
    pending = [asyncio.ensure_future(submit(submits, spec(f"j{i}"))) for i in range(5)]
    await asyncio.sleep(0)  # the writer takes the batch
    assert submits.statements == 0
    await submits.close()
    assert submits.statements == 1  # the statement in flight has returned
    await asyncio.gather(*pending)
    assert await counts(engine) == (5, 5, [])


async def test_concurrent_api_submits_each_get_the_answer_one_alone_would(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    bodies = [job(f"j{i}") for i in range(24)]
    answers = await asyncio.gather(
        *(api.post("/v1/jobs", json=body) for body in bodies),
        api.post("/v1/jobs", json=job("twin")),
        api.post("/v1/jobs", json=job("twin")),
        api.post("/v1/jobs", json=job("lost", tenant="nobody")),
        api.post("/v1/jobs", json=job("k"), headers={"Idempotency-Key": "same"}),
        api.post("/v1/jobs", json=job("k"), headers={"Idempotency-Key": "same"}),
    )
    assert [a.status for a in answers[:24]] == [201] * 24
    assert sorted(a.status for a in answers[24:26]) == [201, 409]
    assert answers[26].status == 422
    assert sorted(a.status for a in answers[27:]) == [200, 201]
    assert answers[27].body["id"] == answers[28].body["id"]
    submits = api.app[SUBMITS]
    # Some statements wrote several jobs (a job whose random queue slot another took a moment
    # before was written alone, on the careful path).
    assert submits.statements < submits.batched
    assert await counts(engine) == (26, 26, [])


async def test_a_job_handed_to_admission_by_its_submit_equals_the_job_read_back(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    await grant_priority(api, 7)
    handed: list[PendingJob] = []
    api.app[SUBMITS].on_queued = handed.append
    body = job("wide", gpu=0.5, workers=3, priority=7)
    shared = {"muster.dev/gpu-sharing": "true"}
    body["replicas"]["ps"] = {"count": 2, "image": "img", "node_selector": shared}
    created = await api.post("/v1/jobs", json=body)
    assert created.status == 201
    read_back = LeaderQueue()
    async with engine.begin() as conn:
        await read_back.catch_up(conn)
    assert handed == list(read_back.jobs)


def handing(handed: list[PendingJob], queue: LeaderQueue) -> Callable[[PendingJob], None]:
    """A submit's hand-over that both records the job and primes ``queue`` with it."""

    def hand(pending: PendingJob) -> None:
        handed.append(pending)
        queue.prime(pending)

    return hand


async def caught_up(queue: LeaderQueue, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await queue.catch_up(conn)


async def test_the_leader_takes_a_primed_job_as_its_submit_checked_it_without_reading_its_spec(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    queue = LeaderQueue()
    await caught_up(queue, engine)
    handed: list[PendingJob] = []
    api.app[SUBMITS].on_queued = handing(handed, queue)
    assert (await api.post("/v1/jobs", json=job("fresh"))).status == 201
    await caught_up(queue, engine)
    (primed,) = handed
    assert queue.jobs.get(primed.id) is primed


async def test_a_primed_job_whose_row_moved_on_is_read_from_its_row(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    # A job primed at attempt 0 but requeued (attempt 1) before the leader caught up: its row
    # is the truth, not what its submit handed over.
    await make_tenant(api)
    queue = LeaderQueue()
    await caught_up(queue, engine)
    handed: list[PendingJob] = []
    api.app[SUBMITS].on_queued = handed.append
    assert (await api.post("/v1/jobs", json=job("moved"))).status == 201
    (primed,) = handed
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE jobs SET attempt = 1, priority = 3"))
    queue.prime(primed)
    await caught_up(queue, engine)
    held = queue.jobs.get(primed.id)
    assert held is not None
    assert held is not primed
    assert (held.priority, queue.attempt(primed.id)) == (3, 1)


async def test_jobs_primed_past_the_bound_are_still_queued_from_their_rows(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    queue = LeaderQueue()
    queue.MAX_PRIMED = 2
    await caught_up(queue, engine)
    handed: list[PendingJob] = []
    api.app[SUBMITS].on_queued = handing(handed, queue)
    for name in "abcde":
        assert (await api.post("/v1/jobs", json=job(name))).status == 201
    await caught_up(queue, engine)
    assert sorted(queue.jobs, key=lambda j: j.id) == sorted(handed, key=lambda j: j.id)
    assert sum(queue.jobs.get(j.id) is j for j in handed) == 2


async def test_a_storm_of_conflicting_submits_cannot_starve_a_small_pool(
    api: CheckedClient, database: str
) -> None:
    # Each conflicting submit goes the careful way, and its answer needs a second lookup (by its
    # Idempotency-Key): were it to keep its first connection meanwhile, ten of them on a pool of
    # two would wait for each other until the pool gave up.
    await make_tenant(api)
    small = make_engine(database, pool_size=2)
    try:
        submits = Submits(small, max_statements=1)
        await submit(submits, spec("taken"))
        storm = [submit(submits, spec("taken"), key=f"key-{i}") for i in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*storm, return_exceptions=True), 20)
        assert all(isinstance(r, Conflict) for r in results), results
    finally:
        await small.dispose()


async def test_batches_in_flight_for_one_tenant_never_deadlock_on_queue_slots(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    # Four statements of 40 jobs at once, slots drawn from 1,000: were rows inserted in arrival
    # order, two batches would often each hold a slot the other needs next, and PostgreSQL would
    # end the deadlock by failing one batch (refused) after a second.
    await make_tenant(api, max_queued_jobs=1000)
    submits = Submits(engine, max_batch=40, max_statements=4)
    for round_ in range(3):
        jobs = [submit(submits, spec(f"r{round_}-j{i}")) for i in range(200)]
        results = await asyncio.gather(*jobs)
        assert all(r.created for r in results)
    assert submits.refused == 0
    assert submits.statements >= 15
    assert await counts(engine) == (600, 600, [])


async def test_a_submit_whose_request_is_gone_before_its_batch_is_not_written(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    submits = Submits(engine)
    kept = asyncio.ensure_future(submit(submits, spec("kept")))
    gone = asyncio.ensure_future(submit(submits, spec("gone")))
    await asyncio.sleep(0)  # both wait for the batch, which has not been taken yet
    gone.cancel()
    assert (await kept).created
    assert gone.cancelled()
    assert await counts(engine) == (1, 1, [])
