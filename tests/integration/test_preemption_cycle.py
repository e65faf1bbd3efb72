"""Preemption against PostgreSQL: a reclaim is written in the cycle that admits its preemptor.

A cohort member borrows, a lender's job arrives, and one admission cycle (past the minimum
runtime) requeues the borrower's gang with reason Preempted, its event and its job.preempted
webhook row, and admits the lender's job, in one transaction. Before the minimum runtime the
lender's job says it waits for a reclaim, and of how many gangs. A preemption is not counted
against the requeue limit, and a second one backs the job off.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.admission import LeaderQueue, load_live, load_snapshot, run_cycle, write_plan
from gateway.domain.scheduling.admission import plan
from gateway.domain.scheduling.nodes import Node
from tests.integration.helpers import QUOTA
from tests.integration.test_admission_cycle import Clock, job
from tests.openapi_check import CheckedClient

HOOK = {"url": "https://hooks.example.com/muster", "events": ["job.preempted", "job.requeued"]}
START = 1e9
MIN_RUNTIME = 120.0


async def setup_cohort(api: CheckedClient) -> None:
    assert (await api.put("/v1/admin/cohorts/pool", json={})).status == 201
    for name in ("search", "ads"):
        body = {"quota": {**QUOTA, "cpu": "4"}, "cohort": "pool"}
        response = await api.put(f"/v1/admin/tenants/{name}", json=body)
        assert response.status == 201, response.text


async def cycle_at(engine: AsyncEngine, nodes: tuple[Node, ...], now: float) -> Any:
    return await run_cycle(
        engine,
        nodes,
        LeaderQueue(),
        clock=Clock(now),
        starvation_seconds=3600,
        min_runtime_seconds=MIN_RUNTIME,
    )


async def row(engine: AsyncEngine, job_id: str) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text(
                    "SELECT state, reason, message, attempt, preemptions, not_before "
                    "FROM jobs WHERE id = CAST(:id AS uuid)"
                ),
                {"id": job_id},
            )
        ).one()


async def test_a_lender_reclaims_by_preempting_the_borrower_in_the_cycle_that_admits_it(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await setup_cohort(api)
    big = (await api.post("/v1/jobs", json={**job("big", workers=8), "callback": HOOK})).body
    assert (await cycle_at(engine, nodes, START)).admitted == (big["id"],)
    ads = (await api.post("/v1/jobs", json=job("mine", workers=2, tenant="ads"))).body

    # Before the minimum runtime: it says it waits for a reclaim, of one gang.
    early = await cycle_at(engine, nodes, START + 10)
    assert early.admitted == ()
    waiting = (await api.get(f"/v1/jobs/{ads['id']}")).body
    assert (waiting["state"], waiting["reason"]) == ("queued", "WaitingForReclaim")
    assert waiting["message"].startswith("1 running gang will be preempted to make room for it")

    result = await cycle_at(engine, nodes, START + MIN_RUNTIME + 1)

    assert result.admitted == (ads["id"],)
    assert [(p.job_id, p.reason.value) for p in result.plan.preempted] == [(big["id"], "Reclaim")]
    victim = (await api.get(f"/v1/jobs/{big['id']}")).body
    assert (victim["state"], victim["reason"]) == ("queued", "Preempted")
    assert victim["message"] == (
        "preempted: tenant ads reclaimed the quota it lent to its cohort; the gang is stopped "
        "and requeued"
    )
    stored = await row(engine, big["id"])
    assert (stored.attempt, stored.preemptions, stored.not_before) == (1, 1, None)
    events = (await api.get(f"/v1/jobs/{big['id']}/events")).body["items"]
    requeued = events[-1]
    assert (requeued["type"], requeued["reason"]) == ("requeued", "Preempted")
    assert requeued["data"]["preemption"] == "Reclaim"
    assert "preemptor" not in requeued["data"]  # another tenant's job is never named
    async with engine.connect() as conn:
        hooks = (
            await conn.execute(
                text(
                    "SELECT event_type FROM webhook_outbox WHERE job_id = CAST(:id AS uuid) "
                    "ORDER BY created_at"
                ),
                {"id": big["id"]},
            )
        ).all()
    assert [h.event_type for h in hooks] == ["job.preempted"]
    metrics = (await api.get("/metrics")).text
    assert 'muster_preempted_jobs_total{reason="Reclaim",tenant="search"} 1.0' in metrics
    assert 'muster_evicted_jobs_total{reason="Preempted",tenant="search"} 1.0' in metrics


async def test_a_second_preemption_backs_the_job_off_and_none_counts_against_the_limit(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await setup_cohort(api)
    big = (await api.post("/v1/jobs", json=job("big", workers=8))).body
    now = START
    for round_ in range(2):
        assert big["id"] in (await cycle_at(engine, nodes, now)).admitted
        lender = (await api.post("/v1/jobs", json=job(f"l{round_}", tenant="ads"))).body
        now += MIN_RUNTIME + 1
        result = await cycle_at(engine, nodes, now)
        assert result.admitted == (lender["id"],)
        # The lender's job ends: its quota is idle again.
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE placements SET released_at = now() WHERE job_id = CAST(:id AS uuid)"),
                {"id": lender["id"]},
            )
            await conn.execute(
                text(
                    "UPDATE jobs SET state = 'succeeded', finished_at = now() "
                    "WHERE id = CAST(:id AS uuid)"
                ),
                {"id": lender["id"]},
            )
        stored = await row(engine, big["id"])
        assert (stored.attempt, stored.preemptions) == (round_ + 1, round_ + 1)
        if round_ == 0:
            assert stored.not_before is None
            now += 1
    # The second time it waits 30 s before admission, and says so.
    assert stored.not_before is not None
    assert stored.not_before.timestamp() == now + 30
    assert stored.message.endswith("to wait 30 s (preempted 2 times)")


async def test_a_tenant_that_allows_it_preempts_its_own_lower_priority_gang(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    body = {"quota": {**QUOTA, "cpu": "4"}, "max_priority": 10}
    created = await api.put("/v1/admin/tenants/search", json=body)
    assert created.body["preemption_policy"] == "never"
    low = (await api.post("/v1/jobs", json=job("low", workers=4))).body
    assert (await cycle_at(engine, nodes, START)).admitted == (low["id"],)
    urgent = (await api.post("/v1/jobs", json=job("urgent", workers=2, priority=10))).body

    # Under the default policy, it waits for the quota.
    await cycle_at(engine, nodes, START + MIN_RUNTIME + 1)
    assert (await api.get(f"/v1/jobs/{urgent['id']}")).body["reason"] == "WaitingForQuota"

    patched = await api.patch(
        "/v1/admin/tenants/search", json={"preemption_policy": "lower_priority"}
    )
    assert patched.status == 200, patched.text
    assert patched.body["preemption_policy"] == "lower_priority"
    result = await cycle_at(engine, nodes, START + MIN_RUNTIME + 2)

    assert result.admitted == (urgent["id"],)
    victim = (await api.get(f"/v1/jobs/{low['id']}")).body
    assert (victim["state"], victim["reason"]) == ("queued", "Preempted")
    assert victim["message"].startswith(
        f"preempted for job {urgent['id']}, of a higher priority in the same tenant"
    )
    events = (await api.get(f"/v1/jobs/{low['id']}/events")).body["items"]
    assert events[-1]["data"] == {
        "preemption": "Priority",
        "preemptor_tenant": "search",
        "preemptor": urgent["id"],
    }
    audit = (await api.get("/v1/admin/audit?tenant=search")).body["items"]
    assert any(
        (entry.get("after") or {}).get("preemption_policy") == "lower_priority" for entry in audit
    )


async def test_an_unknown_preemption_policy_is_refused_and_changes_nothing(
    api: CheckedClient,
) -> None:
    assert (await api.put("/v1/admin/tenants/search", json={"quota": QUOTA})).status == 201
    refused = await api.patch("/v1/admin/tenants/search", json={"preemption_policy": "always"})
    assert refused.status == 422
    assert (await api.get("/v1/admin/tenants/search")).body["preemption_policy"] == "never"


async def test_no_gang_is_preempted_for_a_preemptor_cancelled_before_the_plan_is_written(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await setup_cohort(api)
    big = (await api.post("/v1/jobs", json=job("big", workers=8))).body
    assert (await cycle_at(engine, nodes, START)).admitted == (big["id"],)
    mine = (await api.post("/v1/jobs", json=job("mine", workers=2, tenant="ads"))).body
    queue = LeaderQueue()
    async with engine.begin() as conn:
        await queue.catch_up(conn)
        live = await load_live(conn)
        snapshot = await load_snapshot(
            conn, nodes, now=START + MIN_RUNTIME + 1, starvation_seconds=3600, live=live
        )
    decided = plan(snapshot, queue.jobs)
    assert [p.job_id for p in decided.preempted] == [big["id"]]
    # The preemptor is cancelled after the cycle read the queue, before it writes.
    assert (await api.post(f"/v1/jobs/{mine['id']}/cancel")).status == 200

    async with engine.begin() as conn:
        admitted, _ = await write_plan(conn, START + MIN_RUNTIME + 1, decided, queue, live.guards)

    assert admitted == []
    victim = (await api.get(f"/v1/jobs/{big['id']}")).body
    assert (victim["state"], victim["attempt"]) == ("admitted", 0)
