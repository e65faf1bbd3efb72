"""Dry runs: PATCH of a tenant or a cohort with ?dry_run=true answers what the next admission
cycle would do under the change (admit, preempt, leave waiting), and writes nothing at all.

And the cohort PATCH itself: members' terms changed in one transaction, each audited; a tenant
that does not exist, or that is not a member it should leave, is a 422 that writes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain.scheduling.nodes import Node
from tests.integration.helpers import QUOTA, row_counts
from tests.integration.test_admission_cycle import job
from tests.integration.test_preemption_cycle import START, cycle_at, setup_cohort
from tests.openapi_check import CheckedClient


async def everything(engine: AsyncEngine) -> dict[str, Any]:
    """Every row a change could write, and every job's state."""
    counts = await row_counts(engine)
    async with engine.connect() as conn:
        states = (await conn.execute(text("SELECT id, state, attempt FROM jobs"))).all()
        tenants = (await conn.execute(text("SELECT * FROM tenants ORDER BY name"))).all()
    return {"counts": counts, "jobs": sorted(map(tuple, states)), "tenants": tenants}


async def borrowing_and_waiting(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> tuple[str, str]:
    """search runs 8 CPUs on a nominal 4 (ads' 4 lent); ads then queues a 2-CPU job."""
    await setup_cohort(api)
    big = (await api.post("/v1/jobs", json=job("big", workers=8))).body
    assert (await cycle_at(engine, nodes, START)).admitted == (big["id"],)
    mine = (await api.post("/v1/jobs", json=job("mine", workers=2, tenant="ads"))).body
    return big["id"], mine["id"]


async def test_a_tenant_dry_run_shows_the_reclaim_the_next_cycle_would_make_and_writes_nothing(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    big, mine = await borrowing_and_waiting(api, engine, nodes)
    before = await everything(engine)

    answer = await api.patch("/v1/admin/tenants/ads?dry_run=true", json={"weight": 2})

    assert answer.status == 200, answer.text
    assert answer.body["dry_run"] is True
    assert answer.body["tenant"]["weight"] == 2
    cycle = answer.body["next_cycle"]
    assert cycle["admitted"] == [{"id": mine, "tenant": "ads"}]
    assert cycle["preempted"] == [
        {
            "id": big,
            "tenant": "search",
            "reason": "Reclaim",
            "preemptor": mine,
            "preemptor_tenant": "ads",
        }
    ]
    assert await everything(engine) == before
    assert (await api.get("/v1/admin/tenants/ads")).body["weight"] == 1

    # Lending more instead: ads' job fits what it keeps idle, and nothing is preempted.
    more = await api.patch("/v1/admin/tenants/ads?dry_run=true", json={"quota": {"cpu": "6"}})
    assert more.body["next_cycle"]["admitted"] == [{"id": mine, "tenant": "ads"}]
    assert more.body["next_cycle"]["preempted"] == []
    assert await everything(engine) == before


async def test_a_cohort_dry_run_shows_a_member_leaving_needs_no_reclaim(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    _, mine = await borrowing_and_waiting(api, engine, nodes)
    before = await everything(engine)

    answer = await api.patch("/v1/admin/cohorts/pool?dry_run=true", json={"members": {"ads": None}})

    assert answer.status == 200, answer.text
    assert answer.body["cohort"]["members"] == ["search"]
    # Out of the cohort, ads' own quota is its own again: admitted with nothing preempted.
    assert answer.body["next_cycle"]["admitted"] == [{"id": mine, "tenant": "ads"}]
    assert answer.body["next_cycle"]["preempted"] == []
    assert await everything(engine) == before


async def test_a_cohort_patch_changes_members_terms_in_one_audited_transaction(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await setup_cohort(api)
    assert (await api.put("/v1/admin/tenants/solo", json={"quota": QUOTA})).status == 201
    body = {
        "description": "ranking",
        "members": {
            "ads": {"lending_limit": {"cpu": "1"}},
            "solo": {"borrowing_limit": {"cpu": "2"}},
            "search": None,
        },
    }

    answer = await api.patch("/v1/admin/cohorts/pool", json=body)

    assert answer.status == 200, answer.text
    assert (answer.body["description"], answer.body["members"]) == ("ranking", ["ads", "solo"])
    ads = (await api.get("/v1/admin/tenants/ads")).body
    assert ads["quota"]["lending_limit"]["cpu"] == "1"
    solo = (await api.get("/v1/admin/tenants/solo")).body
    assert (solo["cohort"], solo["quota"]["borrowing_limit"]["cpu"]) == ("pool", "2")
    assert (await api.get("/v1/admin/tenants/search")).body["cohort"] is None
    audit = (await api.get("/v1/admin/audit")).body["items"]
    changed = {entry.get("tenant") or entry.get("cohort") for entry in audit[:4]}
    assert changed == {"ads", "solo", "search", "pool"}


async def test_a_bad_cohort_patch_or_dry_run_flag_is_refused_and_writes_nothing(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await setup_cohort(api)
    assert (await api.put("/v1/admin/tenants/solo", json={"quota": QUOTA})).status == 201
    before = await everything(engine)
    cases = [
        ({"members": {"ghost": {}}}, "", 422, "/members/ghost"),
        ({"members": {"solo": None}}, "", 422, "/members/solo"),
        (
            {"members": {"ads": {"lending_limit": {"cpu": "lots"}}}},
            "",
            422,
            "/members/ads/lending_limit/cpu",
        ),
        ({"description": "x", "members": {"ghost": None}}, "", 422, "/members/ghost"),
        ({"description": "x"}, "?dry_run=yes", 400, None),
        ({"members": {"Not A Label": {}}}, "", 422, None),
        ({}, "", 422, None),
    ]
    for body, query, status, at in cases:
        answer = await api.patch(f"/v1/admin/cohorts/pool{query}", json=body)
        assert answer.status == status, (body, answer.text)
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        if at is not None:
            assert at in [e["pointer"] for e in answer.body["errors"]], answer.text
    assert (await api.patch("/v1/admin/cohorts/none", json={"description": "x"})).status == 404
    assert await everything(engine) == before
