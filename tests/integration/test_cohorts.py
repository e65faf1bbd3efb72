"""Cohorts end to end: admins manage them and their members' limits, every change is audited,
members borrow idle quota through a real admission cycle, and the views show who borrows and who
lends.

Cohorts are the admins' to manage: these tests also try, as tenants would, to manage them, to set
limits or a cohort that does not exist, and to read a cohort of tenants they have no role in.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.context import SUBMITS
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.pods import pod_requests
from gateway.domain.jobs.spec import JobSpec
from gateway.domain.scheduling.nodes import Node
from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import QUOTA, row_counts
from tests.integration.test_admission_cycle import cycle, job
from tests.openapi_check import CheckedClient, Response

NOTHING = {"cpu": "0", "memory": "0", "gpu": 0}
NO_LIMIT = {"cpu": None, "memory": None, "gpu": None}


async def counts(engine: AsyncEngine) -> dict[str, int]:
    """Rows of every table a cohort or tenant write could touch."""
    found = await row_counts(engine)
    async with engine.connect() as conn:
        found["cohorts"] = int(await conn.scalar(text("SELECT count(*) FROM cohorts")) or 0)
    return found


async def put_cohort(api: CheckedClient, name: str = "pool", **body: Any) -> Response:
    response = await api.put(f"/v1/admin/cohorts/{name}", json=body)
    assert response.status in (200, 201), response.text
    return response


async def member(
    api: CheckedClient, name: str, cohort: str | None = "pool", **quota: Any
) -> dict[str, Any]:
    """Create (or replace) tenant ``name`` in ``cohort``, with ``quota`` over the standard one."""
    response = await api.put(
        f"/v1/admin/tenants/{name}", json={"quota": {**QUOTA, **quota}, "cohort": cohort}
    )
    assert response.status in (200, 201), response.text
    tenant: dict[str, Any] = response.body
    return tenant


def errors(response: Response) -> list[tuple[str, str]]:
    return [(e["pointer"], e["detail"]) for e in response.body.get("errors", [])]


# -- managing cohorts ----------------------------------------------------------------------------


async def test_an_admin_creates_replaces_lists_and_deletes_a_cohort_and_each_change_is_audited(
    api: CheckedClient,
) -> None:
    created = await api.put("/v1/admin/cohorts/pool", json={})
    replaced = await api.put("/v1/admin/cohorts/pool", json={"description": "team pools"})
    await put_cohort(api, "other")
    listed = await api.get("/v1/admin/cohorts")
    deleted = await api.delete("/v1/admin/cohorts/pool")

    assert created.status == 201
    assert created.headers["Location"] == "/v1/cohorts/pool"
    assert (created.body["name"], created.body["description"], created.body["members"]) == (
        "pool",
        "",
        [],
    )
    assert replaced.status == 200
    assert replaced.body["description"] == "team pools"
    assert replaced.body["created_at"] == created.body["created_at"]
    assert [(c["name"], c["description"]) for c in listed.body["items"]] == [
        ("other", ""),
        ("pool", "team pools"),
    ]
    assert deleted.status == 204
    assert [c["name"] for c in (await api.get("/v1/admin/cohorts")).body["items"]] == ["other"]
    assert (await api.delete("/v1/admin/cohorts/pool")).status == 404
    audit = (await api.get("/v1/admin/audit?cohort=pool")).body["items"]
    assert [(e["action"], e["cohort"], e["tenant"], e["actor"]) for e in audit] == [
        ("delete", "pool", None, "admin@example.com"),
        ("replace", "pool", None, "admin@example.com"),
        ("create", "pool", None, "admin@example.com"),
    ]
    assert [(e["before"], e["after"]) for e in audit] == [
        ({"description": "team pools"}, None),
        ({"description": ""}, {"description": "team pools"}),
        (None, {"description": ""}),
    ]
    # A tenant's audit filter leaves cohorts out; the whole log has both.
    assert (await api.get("/v1/admin/audit?tenant=pool")).body["items"] == []
    assert len((await api.get("/v1/admin/audit")).body["items"]) == 4


@pytest.mark.parametrize("role", ["viewer", "tenant-admin"])
async def test_only_platform_admins_manage_cohorts(
    api: CheckedClient, settings: Settings, engine: AsyncEngine, role: str
) -> None:
    await put_cohort(api)
    await member(api, "search")
    sam = api.as_(tokens.token(settings, user="sam@example.com", roles={"search": role}))
    before = await counts(engine)

    for method, path, body in [
        ("GET", "/v1/admin/cohorts", None),
        ("PUT", "/v1/admin/cohorts/pool", {"description": "mine now"}),
        ("PUT", "/v1/admin/cohorts/new", {}),
        ("DELETE", "/v1/admin/cohorts/pool", None),
        ("PATCH", "/v1/admin/tenants/search", {"cohort": None}),
        ("PATCH", "/v1/admin/tenants/search", {"quota": {"borrowing_limit": {"cpu": "1000"}}}),
        ("PATCH", "/v1/admin/tenants/search?dry_run=true", {"weight": 100}),
        ("PATCH", "/v1/admin/cohorts/pool", {"members": {"search": {"borrowing_limit": {}}}}),
        ("PATCH", "/v1/admin/cohorts/pool?dry_run=true", {"members": {"search": None}}),
    ]:
        kwargs = {} if body is None else {"json": body}
        response = await sam.request(method, path, **kwargs)
        assert response.status == 403, (method, path, response.text)
        assert "only platform admins" in response.body["detail"]

    assert await counts(engine) == before
    assert (await api.get("/v1/admin/cohorts")).body["items"][0]["description"] == ""


async def test_a_bad_cohort_body_or_name_is_refused_and_writes_nothing(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    before = await counts(engine)

    unknown = await api.put("/v1/admin/cohorts/pool", json={"members": ["search"]})
    long = await api.put("/v1/admin/cohorts/pool", json={"description": "x" * 1025})
    bad_name = await api.put("/v1/admin/cohorts/Not_A_Label", json={})

    assert (unknown.status, errors(unknown)) == (422, [("/members", "unknown field")])
    assert (long.status, errors(long)) == (
        422,
        [("/description", "must be at most 1024 characters long")],
    )
    assert bad_name.status == 404
    assert await counts(engine) == before


# -- membership and limits -----------------------------------------------------------------------


async def test_membership_and_limits_round_trip_through_put_patch_and_the_audit_log(
    api: CheckedClient,
) -> None:
    await put_cohort(api)
    await put_cohort(api, "other")
    put = await api.put(
        "/v1/admin/tenants/search",
        json={
            "quota": {
                **QUOTA,
                "borrowing_limit": {"cpu": "2500m", "memory": "8Gi", "gpu": 1.5},
                "lending_limit": {"gpu": 2},
            },
            "cohort": "pool",
        },
    )
    got = await api.get("/v1/admin/tenants/search")
    patched = await api.patch(
        "/v1/admin/tenants/search", json={"quota": {"lending_limit": {"cpu": 3, "gpu": None}}}
    )
    moved = await api.patch("/v1/admin/tenants/search", json={"cohort": "other"})
    left = await api.patch("/v1/admin/tenants/search", json={"cohort": None})

    assert put.status == 201, put.text
    assert put.body["cohort"] == "pool"
    assert put.body["quota"]["borrowing_limit"] == {"cpu": "2500m", "memory": "8Gi", "gpu": 1.5}
    assert put.body["quota"]["lending_limit"] == {"cpu": None, "memory": None, "gpu": 2}
    assert put.body["quota"]["cpu"] == QUOTA["cpu"]  # the nominal quota, as before
    assert got.body == put.body
    # A limit given is replaced whole; the other is kept.
    assert patched.body["quota"]["lending_limit"] == {"cpu": "3", "memory": None, "gpu": None}
    assert patched.body["quota"]["borrowing_limit"] == put.body["quota"]["borrowing_limit"]
    # Moving keeps the limits; leaving drops them.
    assert moved.body["cohort"] == "other"
    assert moved.body["quota"]["lending_limit"] == patched.body["quota"]["lending_limit"]
    assert left.body["cohort"] is None
    assert "borrowing_limit" not in left.body["quota"]
    assert (await api.get("/v1/admin/cohorts")).body["items"][0]["members"] == []

    audit = (await api.get("/v1/admin/audit?tenant=search")).body["items"]
    assert [e["action"] for e in audit] == ["update", "update", "update", "create"]
    created = audit[3]["after"]
    assert created["cohort"] == "pool"
    assert created["borrowing_limit_cpu_millis"] == 2500
    assert created["borrowing_limit_memory_bytes"] == 8 * 2**30
    assert created["borrowing_limit_gpu_shares"] == 150
    assert created["lending_limit_cpu_millis"] is None
    assert (audit[1]["before"]["cohort"], audit[1]["after"]["cohort"]) == ("pool", "other")
    assert (audit[0]["after"]["cohort"], audit[0]["after"]["lending_limit_cpu_millis"]) == (
        None,
        None,
    )


async def test_an_unknown_cohort_or_a_bad_limit_is_a_422_naming_the_field_and_writes_nothing(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await put_cohort(api)
    await member(api, "search")
    await api.put("/v1/admin/tenants/solo", json={"quota": QUOTA})
    before = await counts(engine)
    search_before = (await api.get("/v1/admin/tenants/search")).body

    unknown_put = await api.put(
        "/v1/admin/tenants/fresh", json={"quota": QUOTA, "cohort": "no-such-pool"}
    )
    unknown_patch = await api.patch("/v1/admin/tenants/search", json={"cohort": "no-such-pool"})
    bad_name = await api.patch("/v1/admin/tenants/search", json={"cohort": "Bad_Name"})
    bad_limits = await api.patch(
        "/v1/admin/tenants/search",
        json={"quota": {"borrowing_limit": {"cpu": "4Gx", "gpu": 0.001}, "lending_limit": []}},
    )
    negative = await api.patch(
        "/v1/admin/tenants/search", json={"quota": {"lending_limit": {"memory": "-1Gi"}}}
    )
    unknown_key = await api.patch(
        "/v1/admin/tenants/search", json={"quota": {"lending_limit": {"cpus": "1"}}}
    )
    outside = await api.patch(
        "/v1/admin/tenants/solo", json={"quota": {"borrowing_limit": {"cpu": "1"}}}
    )

    assert (unknown_put.status, [p for p, _ in errors(unknown_put)]) == (422, ["/cohort"])
    assert "cohort 'no-such-pool' does not exist" in errors(unknown_put)[0][1]
    assert errors(unknown_patch) == errors(unknown_put)
    assert (bad_name.status, [p for p, _ in errors(bad_name)]) == (422, ["/cohort"])
    assert bad_limits.status == 422
    # The schema first: the quantity's pattern and the limit's type.
    assert sorted(p for p, _ in errors(bad_limits)) == [
        "/quota/borrowing_limit/cpu",
        "/quota/lending_limit",
    ]
    invalid = await api.patch(
        "/v1/admin/tenants/search",
        json={"quota": {"borrowing_limit": {"cpu": "4.0001m", "gpu": 0.001}}},
    )
    assert [p for p, _ in errors(invalid)] == [
        "/quota/borrowing_limit/cpu",
        "/quota/borrowing_limit/gpu",
    ]
    assert negative.status == 422
    assert [p for p, _ in errors(negative)] == ["/quota/lending_limit/memory"]
    assert errors(unknown_key) == [("/quota/lending_limit/cpus", "unknown field")]
    assert errors(outside) == [
        (
            "/quota/borrowing_limit",
            'only a member of a cohort has a borrowing limit: set "cohort"',
        )
    ]
    assert await counts(engine) == before
    assert (await api.get("/v1/admin/tenants/search")).body == search_before


async def test_a_cohort_with_members_cannot_be_deleted(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await put_cohort(api)
    await member(api, "search")
    await member(api, "ads")
    before = await counts(engine)

    refused = await api.delete("/v1/admin/cohorts/pool")

    assert refused.status == 409
    assert "cohort 'pool' still has members (ads, search)" in refused.body["detail"]
    assert await counts(engine) == before
    assert (await api.get("/v1/admin/cohorts")).body["items"][0]["members"] == ["ads", "search"]
    for name in ("search", "ads"):
        await api.patch(f"/v1/admin/tenants/{name}", json={"cohort": None})
    assert (await api.delete("/v1/admin/cohorts/pool")).status == 204


# -- borrowing, end to end -----------------------------------------------------------------------


async def test_a_member_borrows_an_idle_members_quota_and_the_views_say_who_lends(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...], settings: Settings
) -> None:
    await put_cohort(api, description="ranking teams")
    await member(api, "search", cpu="4", borrowing_limit={"cpu": "2"})
    await member(api, "ads", cpu="4")
    await api.put("/v1/admin/tenants/solo", json={"quota": {**QUOTA, "cpu": "4"}})
    # Bigger than search's nominal 4 CPUs, within nominal plus its borrowing limit: accepted.
    big = await api.post("/v1/jobs", json=job("big", workers=6))
    assert big.status == 201, big.text

    result = await cycle(engine, nodes)

    assert result.admitted == (big.body["id"],)
    # Each placement records what of it is borrowed: the last pods of the gang first.
    async with engine.connect() as conn:
        borrowed = (
            await conn.execute(
                text(
                    "SELECT pod_name, borrowed_cpu_millis FROM placements "
                    "WHERE job_id = CAST(:id AS uuid) ORDER BY replica_index"
                ),
                {"id": big.body["id"]},
            )
        ).all()
    assert [tuple(row) for row in borrowed] == [
        ("big-worker-0", 0),
        ("big-worker-1", 0),
        ("big-worker-2", 0),
        ("big-worker-3", 0),
        ("big-worker-4", 1000),
        ("big-worker-5", 1000),
    ]
    search = (await api.get("/v1/tenants/search")).body
    ads = (await api.get("/v1/tenants/ads")).body
    solo = (await api.get("/v1/tenants/solo")).body
    assert (search["cohort"], search["usage"]["cpu"]) == ("pool", "6")
    assert search["nominal"] == {"cpu": "4", "memory": "1Ti", "gpu": 8}
    assert search["borrowed"] == {"cpu": "2", "memory": "0", "gpu": 0}
    assert search["lent"] == NOTHING
    assert (ads["borrowed"], ads["lent"]) == (NOTHING, {"cpu": "2", "memory": "0", "gpu": 0})
    assert (solo["cohort"], solo["borrowed"], solo["lent"]) == (None, NOTHING, NOTHING)

    pool = (await api.get("/v1/cohorts/pool")).body
    assert (pool["name"], pool["description"]) == ("pool", "ranking teams")
    assert [(m["name"], m["borrowed"]["cpu"], m["lent"]["cpu"]) for m in pool["members"]] == [
        ("ads", "0", "2"),
        ("search", "2", "0"),
    ]
    assert pool["members"][1]["borrowing_limit"] == {"cpu": "2", "memory": None, "gpu": None}
    assert pool["members"][0]["lending_limit"] == NO_LIMIT
    # ads lends 4 CPUs, 2 of them are borrowed; search's own quota is all in use.
    assert pool["idle"]["cpu"] == "2"

    # The borrowing limit keeps the next job out, and says so.
    more = await api.post("/v1/jobs", json=job("more"))
    await cycle(engine, nodes)
    waiting = (await api.get(f"/v1/jobs/{more.body['id']}")).body
    assert (waiting["state"], waiting["reason"]) == ("queued", "WaitingForQuota")
    assert waiting["message"] == (
        "needs 1 CPU; tenant search holds 6 CPUs and may hold at most 6 CPUs "
        "(4 CPUs nominal and 2 CPUs borrowed)"
    )

    metrics = (await api.get("/metrics")).text
    assert 'muster_tenant_borrowed{resource="cpu",tenant="search"} 2.0' in metrics
    assert 'muster_tenant_lent{resource="cpu",tenant="ads"} 2.0' in metrics
    assert 'muster_tenant_lent{resource="cpu",tenant="search"} 0.0' in metrics
    assert 'muster_tenant_borrowed{resource="cpu",tenant="solo"} 0.0' in metrics


async def test_submit_refuses_a_job_above_nominal_plus_the_borrowing_limit_on_every_path(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await put_cohort(api)
    await member(api, "search", cpu="4", borrowing_limit={"cpu": "2"})
    before = await counts(engine)

    alone = await api.post("/v1/jobs", json=job("huge", workers=7))
    batch = await api.post(
        "/v1/jobs:batch",
        json={"jobs": [{"idempotency_key": "k", "job": job("huge", workers=7)}]},
    )

    expected = (
        "cpu: the job needs 7 CPUs but the tenant may hold at most 6 CPUs (4 CPUs nominal and "
        "2 CPUs borrowed from cohort pool)"
    )
    assert (alone.status, errors(alone)) == (422, [("/replicas", expected)])
    assert batch.body["items"][0]["status"] == 422
    assert batch.body["items"][0]["problem"]["errors"][0]["detail"] == expected
    assert await counts(engine) == before


async def test_the_group_commit_statement_writes_a_job_within_the_borrowing_limit_itself(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    """The batch statement's SQL form of the rule takes the job: it is not skipped to the
    careful path (which would take it too, but one at a time)."""
    await put_cohort(api)
    await member(api, "search", cpu="4", borrowing_limit={"cpu": "2"})
    await member(api, "ads", cpu="4")  # no borrowing limit: anything may wait for the pool
    submits = api.app[SUBMITS]
    for name, tenant, workers in (("six", "search", 6), ("lots", "ads", 100)):
        spec = check_job_spec(job(name, tenant=tenant, workers=workers))
        assert isinstance(spec, JobSpec), spec
        written = await submits.submit(
            spec, body_hash="h", idempotency_key=None, actor="alice", pods=pod_requests(spec)
        )
        assert written.created
    assert submits.batched == 2
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM jobs")) == 2


async def test_a_job_no_limit_bounds_is_accepted_and_waits_for_the_cohort_with_its_reason(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await put_cohort(api)
    await member(api, "search", cpu="4")
    await member(api, "ads", cpu="4", lending_limit={"cpu": "1"})

    lots = await api.post("/v1/jobs", json=job("lots", workers=8))
    await cycle(engine, nodes)

    assert lots.status == 201, lots.text
    waiting = (await api.get(f"/v1/jobs/{lots.body['id']}")).body
    assert (waiting["state"], waiting["reason"]) == ("queued", "WaitingForQuota")
    assert waiting["message"] == "needs 8 CPUs; cohort pool has 5 CPUs idle to lend"


# -- who sees a cohort ---------------------------------------------------------------------------


async def test_a_cohort_is_seen_by_admins_and_its_members_people_and_is_absent_to_others(
    api: CheckedClient, settings: Settings
) -> None:
    await put_cohort(api)
    await member(api, "search")
    await member(api, "ads")
    await api.put("/v1/admin/tenants/solo", json={"quota": QUOTA})

    viewer = api.as_(tokens.token(settings, user="vic@example.com", roles={"ads": "viewer"}))
    outsider = api.as_(tokens.token(settings, user="oz@example.com", roles={"solo": "viewer"}))
    nobody = api.as_(tokens.token(settings, user="no@example.com"))

    seen = await viewer.get("/v1/cohorts/pool")
    theirs = await outsider.get("/v1/cohorts/pool")
    absent = await outsider.get("/v1/cohorts/no-such-pool")
    bad_name = await outsider.get("/v1/cohorts/Bad_Name")
    no_role = await nobody.get("/v1/cohorts/pool")

    assert seen.status == 200
    assert [m["name"] for m in seen.body["members"]] == ["ads", "search"]
    assert (await api.get("/v1/cohorts/pool")).body == seen.body
    assert theirs.status == absent.status == bad_name.status == 404
    assert theirs.body["detail"] == "cohort 'pool' does not exist"
    assert absent.body["detail"] == "cohort 'no-such-pool' does not exist"
    assert no_role.status == 403
    # A cohort without members is the admins' alone to see.
    await put_cohort(api, "empty")
    assert (await viewer.get("/v1/cohorts/empty")).status == 404
    assert (await api.get("/v1/cohorts/empty")).body["idle"] == NOTHING


@pytest.mark.parametrize(
    "body",
    [
        {"cohort": "pool", "quota": {**QUOTA, "borrowing_limit": {"cpu": "1e30"}}},
        {"cohort": "pool", "quota": {**QUOTA, "borrowing_limit": {"memory": "9" * 30 + "Ei"}}},
        {"cohort": "pool", "quota": {**QUOTA, "lending_limit": {"gpu": -1}}},
        {"cohort": "pool", "quota": {**QUOTA, "lending_limit": {"gpu": 1e300}}},
        {"cohort": "pool", "quota": {**QUOTA, "lending_limit": {"bogus": 1}}},
        {"cohort": "pool", "quota": {**QUOTA, "lending_limit": "x"}},
        {"cohort": "Pool\u0000", "quota": QUOTA},
        {"cohort": 7, "quota": QUOTA},
        {"cohort": "x" * 300, "quota": QUOTA},
    ],
)
async def test_hostile_membership_bodies_are_refused_and_write_nothing(
    api: CheckedClient, engine: AsyncEngine, body: dict[str, Any]
) -> None:
    await put_cohort(api)
    before = await row_counts(engine)
    answer = await api.put("/v1/admin/tenants/hostile", json=body)
    assert 400 <= answer.status < 500, answer.text
    assert await row_counts(engine) == before


async def test_hostile_cohort_names_and_descriptions_are_refused(api: CheckedClient) -> None:
    for name in ("A", "-a", "a" * 64, "%00", "a_b"):
        answer = await api.put(f"/v1/admin/cohorts/{name}", json={})
        assert 400 <= answer.status < 500, (name, answer.text)
    for description in ("x" * 5000, "a\u0000b"):
        answer = await api.put("/v1/admin/cohorts/ok", json={"description": description})
        assert 400 <= answer.status < 500, answer.text
    assert (await api.get("/v1/admin/audit?cohort=%00")).status < 500
