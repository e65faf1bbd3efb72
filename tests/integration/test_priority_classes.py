"""Priority classes end to end: admins define them and grant them to tenants, a job that names a
granted class runs at its value, and every change is audited.

Classes are the admins' to define and grant: these tests also submit as hostile tenants would,
naming classes they were not granted (or that do not exist, which must look the same), giving a
priority of their own beside a class, through each path a job can take (alone, in group commit,
in a batch request, as a TFJob, as an idempotent retry), and trying to manage classes themselves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.context import SUBMITS
from gateway.domain.scheduling.priority import PriorityClass, Resolved, resolve
from gateway.domain.scheduling.queueing import PendingJob
from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import create_tenant, job_spec, row_counts, submit
from tests.integration.test_job_batches import BATCH, batch, tfjob, without_instance
from tests.openapi_check import CheckedClient, Response

CLASSES = "/v1/admin/priority-classes"


async def counts(engine: AsyncEngine) -> dict[str, int]:
    """Rows of every table a class, a grant or a submit could touch."""
    found = await row_counts(engine)
    async with engine.connect() as conn:
        for table in ("priority_classes", "tenant_priority_classes"):
            found[table] = int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
    return found


async def put_class(
    api: CheckedClient, name: str = "high", value: int = 900, **body: Any
) -> dict[str, Any]:
    response = await api.put(f"{CLASSES}/{name}", json={"value": value, **body})
    assert response.status in (200, 201), response.text
    found: dict[str, Any] = response.body
    return found


async def grant(api: CheckedClient, *classes: str, tenant: str = "search") -> dict[str, Any]:
    response = await api.patch(
        f"/v1/admin/tenants/{tenant}", json={"priority_classes": list(classes)}
    )
    assert response.status == 200, response.text
    found: dict[str, Any] = response.body
    return found


def errors(response: Response) -> list[tuple[str, str]]:
    body = response.body if isinstance(response.body, dict) else {}
    return [(e["pointer"], e["detail"]) for e in body.get("errors", [])]


async def job_columns(engine: AsyncEngine, job_id: str) -> tuple[Any, ...]:
    """(priority, priority_class, preemptible) as the jobs row holds them."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT priority, priority_class, preemptible FROM jobs WHERE id = :id"),
                {"id": job_id},
            )
        ).one()
    return tuple(row)


@pytest.fixture
def submitter(api: CheckedClient, settings: Settings) -> CheckedClient:
    """A member of tenant search who may submit, and nothing more."""
    return api.as_(tokens.token(settings, user="eve@example.com", roles={"search": "submitter"}))


@pytest.fixture
async def granted(api: CheckedClient) -> None:
    """Tenant search (ceiling 0) granted "high" (900, not preemptible); "gold" exists and is
    granted to tenant ads only."""
    await create_tenant(api)
    await create_tenant(api, "ads")
    await put_class(api, "high", 900, preemptible=False, description="serving retrains")
    await put_class(api, "gold", 800)
    await grant(api, "high")
    await grant(api, "gold", tenant="ads")


# -- the admin API -------------------------------------------------------------------------------


async def test_an_admin_creates_reads_lists_replaces_and_deletes_a_class_each_audited(
    api: CheckedClient,
) -> None:
    created = await api.put(f"{CLASSES}/high", json={"value": 900, "preemptible": False})
    await put_class(api, "batch", -100, description="best effort")
    replaced = await api.put(f"{CLASSES}/high", json={"value": 950, "description": "hot"})

    assert created.status == 201
    assert created.headers["Location"] == f"{CLASSES}/high"
    assert (created.body["value"], created.body["preemptible"], created.body["tenants"]) == (
        900,
        False,
        [],
    )
    assert replaced.status == 200
    assert (replaced.body["value"], replaced.body["preemptible"]) == (950, True)  # a PUT is whole
    assert (await api.get(f"{CLASSES}/high")).body == replaced.body
    listed = (await api.get(CLASSES)).body["items"]
    assert [(c["name"], c["value"]) for c in listed] == [("high", 950), ("batch", -100)]
    assert (await api.delete(f"{CLASSES}/batch")).status == 204
    assert (await api.get(f"{CLASSES}/batch")).status == 404
    audit = (await api.get("/v1/admin/audit?priority_class=high")).body["items"]
    assert [(e["action"], e["priority_class"], e["tenant"]) for e in audit] == [
        ("replace", "high", None),
        ("create", "high", None),
    ]
    assert audit[0]["before"] == {"value": 900, "preemptible": False, "description": ""}
    assert audit[0]["after"] == {"value": 950, "preemptible": True, "description": "hot"}
    deleted = (await api.get("/v1/admin/audit?priority_class=batch")).body["items"][0]
    assert (deleted["action"], deleted["after"]) == ("delete", None)


async def test_a_tenant_is_granted_classes_by_put_or_patch_and_its_views_show_them(
    api: CheckedClient, submitter: CheckedClient
) -> None:
    await put_class(api, "high")
    await put_class(api, "low", -10)
    created = await create_tenant(api, priority_classes=["low", "high"])

    assert created["priority_classes"] == ["high", "low"]
    assert (await submitter.get("/v1/tenants/search")).body["priority_classes"] == ["high", "low"]
    patched = await api.patch("/v1/admin/tenants/search", json={"weight": 2})
    assert patched.body["priority_classes"] == ["high", "low"]  # a PATCH keeps what it leaves out
    assert (await grant(api, "low"))["priority_classes"] == ["low"]
    assert (await api.get(f"{CLASSES}/low")).body["tenants"] == ["search"]
    assert (await api.get(f"{CLASSES}/high")).body["tenants"] == []
    replaced = await api.put("/v1/admin/tenants/search", json={"quota": created["quota"]})
    assert replaced.body["priority_classes"] == []  # a PUT replaces the whole tenant
    audit = (await api.get("/v1/admin/audit?tenant=search")).body["items"]
    assert [e["after"]["priority_classes"] for e in audit] == [
        [],
        ["low"],
        ["high", "low"],
        ["high", "low"],
    ]


@pytest.mark.parametrize(
    "classes",
    [["high", "missing"], ["missing"], ["Bad_Name"], ["a" * 64], ["hi\u0000gh"], ["high", "high"]],
)
async def test_granting_a_class_that_does_not_exist_is_refused_and_writes_nothing(
    api: CheckedClient, engine: AsyncEngine, classes: list[str]
) -> None:
    await put_class(api)
    await create_tenant(api)
    before = await counts(engine)

    patched = await api.patch("/v1/admin/tenants/search", json={"priority_classes": classes})
    put = await api.put(
        "/v1/admin/tenants/other",
        json={
            "quota": {
                "cpu": "1",
                "memory": "1Gi",
                "gpu": 0,
                "max_running_jobs": 1,
                "max_queued_jobs": 1,
            },
            "priority_classes": classes,
        },
    )

    assert (patched.status, put.status) == (422, 422), (patched.text, put.text)
    assert await counts(engine) == before
    if classes[-1] == "missing":
        assert errors(patched) == [
            (
                "/priority_classes",
                "priority class 'missing' does not exist "
                "(an admin creates classes: PUT /v1/admin/priority-classes/{name})",
            )
        ]


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("high", {"value": 1001}),
        ("high", {"value": -1001}),
        ("high", {"value": "900"}),
        ("high", {"value": 1.5}),
        ("high", {}),
        ("high", {"value": 1, "preemptible": "no"}),
        ("high", {"value": 1, "unknown": True}),
        ("high", {"value": 1, "description": "x" * 1025}),
        ("high", {"value": 1, "description": "a\u0000b"}),
        ("High", {"value": 1}),
        ("-high", {"value": 1}),
        ("a" * 64, {"value": 1}),
        ("a_b", {"value": 1}),
        ("%00", {"value": 1}),
    ],
)
async def test_hostile_class_bodies_and_names_are_refused_with_a_422_and_write_nothing(
    api: CheckedClient, engine: AsyncEngine, name: str, body: dict[str, Any]
) -> None:
    before = await counts(engine)

    answer = await api.put(f"{CLASSES}/{name}", json=body)

    assert answer.status == 422, answer.text
    assert answer.content_type == "application/problem+json"
    assert await counts(engine) == before


async def test_bad_names_are_classes_that_do_not_exist(api: CheckedClient) -> None:
    for name in ("High", "a" * 64, "%00"):
        assert (await api.get(f"{CLASSES}/{name}")).status == 404
        assert (await api.delete(f"{CLASSES}/{name}")).status == 404
    assert (await api.get("/v1/admin/audit?priority_class=%00")).status == 400


@pytest.mark.usefixtures("granted")
async def test_tenants_may_neither_read_nor_manage_classes_nor_grant_themselves_one(
    submitter: CheckedClient, engine: AsyncEngine
) -> None:
    before = await counts(engine)

    answers = [
        await submitter.get(CLASSES),
        await submitter.get(f"{CLASSES}/high"),
        await submitter.put(f"{CLASSES}/mine", json={"value": 1000}),
        await submitter.delete(f"{CLASSES}/high"),
        await submitter.patch("/v1/admin/tenants/search", json={"priority_classes": ["gold"]}),
    ]

    assert [a.status for a in answers] == [403] * 5
    assert await counts(engine) == before


# -- submitting with a class ---------------------------------------------------------------------


@pytest.mark.usefixtures("granted")
async def test_a_job_of_a_granted_class_runs_at_its_value_above_the_tenants_ceiling(
    submitter: CheckedClient, engine: AsyncEngine
) -> None:
    job = await submit(submitter, job_spec(priority_class="high"))

    assert (job["priority"], job["priority_class"], job["preemptible"]) == (900, "high", False)
    assert (job["spec"]["priority"], job["spec"]["priority_class"]) == (900, "high")
    assert await job_columns(engine, job["id"]) == (900, "high", False)
    assert (await submitter.get(f"/v1/jobs/{job['id']}")).body == job
    listed = (await submitter.get("/v1/jobs")).body["items"]
    assert [(j["priority_class"], j["preemptible"]) for j in listed] == [("high", False)]


@pytest.mark.usefixtures("granted")
async def test_a_job_without_a_class_is_preemptible_and_still_within_the_ceiling(
    submitter: CheckedClient, engine: AsyncEngine
) -> None:
    job = await submit(submitter, job_spec())
    before = await counts(engine)

    above = await submitter.post("/v1/jobs", json=job_spec("above", priority=1))

    assert (job["priority"], job["priority_class"], job["preemptible"]) == (0, None, True)
    assert job["spec"]["priority_class"] is None
    assert await job_columns(engine, job["id"]) == (0, None, True)
    assert errors(above) == [
        ("/priority", "priority 1 is above tenant search's maximum priority 0 (an admin sets it)")
    ]
    assert await counts(engine) == before


@pytest.mark.usefixtures("granted")
async def test_a_class_not_granted_and_one_that_does_not_exist_get_the_same_answer(
    submitter: CheckedClient, engine: AsyncEngine
) -> None:
    before = await counts(engine)

    gold = await submitter.post("/v1/jobs", json=job_spec(priority_class="gold"))
    gold_valued = await submitter.post(
        "/v1/jobs", json=job_spec(priority_class="gold", priority=800)
    )
    lead = await submitter.post("/v1/jobs", json=job_spec(priority_class="lead"))
    lead_valued = await submitter.post(
        "/v1/jobs", json=job_spec(priority_class="lead", priority=800)
    )

    def shown(response: Response, name: str) -> dict[str, Any]:
        """The answer, with the class's name in it made a placeholder."""
        return {
            "status": response.status,
            "type": response.content_type,
            "body": str(without_instance(response.body)).replace(name, "<class>"),
        }

    assert shown(gold, "gold") == shown(lead, "lead")
    assert shown(gold, "gold") == shown(gold_valued, "gold") == shown(lead_valued, "lead")
    assert errors(gold) == [
        (
            "/priority_class",
            "tenant search may not use priority class 'gold' (an admin grants classes to tenants)",
        )
    ]
    assert await counts(engine) == before


@pytest.mark.usefixtures("granted")
async def test_an_explicit_priority_must_be_the_classs_value(
    submitter: CheckedClient, engine: AsyncEngine
) -> None:
    before = await counts(engine)

    other = await submitter.post("/v1/jobs", json=job_spec(priority_class="high", priority=0))
    same = await submitter.post("/v1/jobs", json=job_spec(priority_class="high", priority=900))

    assert errors(other) == [
        (
            "/priority",
            "priority 0 differs from the value of priority class 'high', 900: leave priority "
            "out, the class sets it",
        )
    ]
    assert same.status == 201, same.text
    assert (await counts(engine))["jobs"] == before["jobs"] + 1


@pytest.mark.usefixtures("granted")
async def test_a_class_changed_later_changes_only_the_jobs_submitted_after(
    api: CheckedClient, submitter: CheckedClient, engine: AsyncEngine
) -> None:
    first = await submit(submitter, job_spec("first", priority_class="high"))

    await put_class(api, "high", 700, preemptible=True)
    second = await submit(submitter, job_spec("second", priority_class="high"))

    assert await job_columns(engine, first["id"]) == (900, "high", False)
    assert await job_columns(engine, second["id"]) == (700, "high", True)
    assert (await submitter.get(f"/v1/jobs/{first['id']}")).body["priority"] == 900


@pytest.mark.usefixtures("granted")
async def test_taking_a_class_back_refuses_later_submits_and_retries_but_keeps_queued_jobs(
    api: CheckedClient, submitter: CheckedClient, engine: AsyncEngine
) -> None:
    key = {"Idempotency-Key": "nightly"}
    first = await submitter.post("/v1/jobs", json=job_spec(priority_class="high"), headers=key)
    retried = await submitter.post("/v1/jobs", json=job_spec(priority_class="high"), headers=key)
    assert (first.status, retried.status) == (201, 200)
    assert retried.body == first.body

    await grant(api)
    again = await submitter.post("/v1/jobs", json=job_spec(priority_class="high"), headers=key)

    assert again.status == 422
    assert [p for p, _ in errors(again)] == ["/priority_class"]
    kept = (await submitter.get(f"/v1/jobs/{first.body['id']}")).body
    assert (kept["priority"], kept["priority_class"], kept["state"]) == (900, "high", "queued")


@pytest.mark.usefixtures("granted")
async def test_group_commit_and_the_careful_path_answer_every_job_alike(
    api: CheckedClient, submitter: CheckedClient, engine: AsyncEngine
) -> None:
    # Arriving together, jobs without a class go to group-commit batches, where the ceiling is
    # checked in SQL; jobs with a class go the careful way. Each must get the answer one alone
    # gets, and batch requests too.
    cases: list[tuple[dict[str, Any], int]] = [
        ({}, 201),
        ({"priority": 0}, 201),
        ({"priority": 1}, 422),
        ({"priority": -5}, 201),
        ({"priority_class": "high"}, 201),
        ({"priority_class": "high", "priority": 900}, 201),
        ({"priority_class": "high", "priority": 0}, 422),
        ({"priority_class": "gold"}, 422),
        ({"priority_class": "lead"}, 422),
        ({"priority_class": None, "priority": 0}, 201),
    ] * 3
    answers = await asyncio.gather(
        *(
            submitter.post("/v1/jobs", json=job_spec(f"j{i}", **fields))
            for i, (fields, _) in enumerate(cases)
        )
    )
    in_batch = await submitter.post(
        BATCH, json=batch(*(job_spec(f"b{i}", **fields) for i, (fields, _) in enumerate(cases)))
    )

    expected = [status for _, status in cases]
    assert [a.status for a in answers] == expected, [a.text for a in answers]
    assert [item["status"] for item in in_batch.body["items"]] == expected
    for answer, item in zip(answers, in_batch.body["items"], strict=True):
        if answer.status == 201:
            job = answer.body
            assert (job["priority"], job["priority_class"], job["preemptible"]) == (
                item["job"]["priority"],
                item["job"]["priority_class"],
                item["job"]["preemptible"],
            )
            got = await submitter.get(f"/v1/jobs/{item['job']['id']}")
            assert got.body == item["job"]
        else:
            assert without_instance(answer.body) == without_instance(item["problem"])
    assert api.app[SUBMITS].batched > 0
    async with engine.connect() as conn:
        classed = await conn.execute(
            text(
                "SELECT priority, preemptible, count(*) FROM jobs WHERE priority_class = 'high' "
                "GROUP BY 1, 2"
            )
        )
        assert [tuple(row) for row in classed] == [(900, False, 12)]


@pytest.mark.usefixtures("granted")
async def test_a_tfjobs_scheduling_policy_priority_class_maps_to_the_jobs(
    submitter: CheckedClient, engine: AsyncEngine
) -> None:
    manifest = tfjob("tf", namespace="search")
    manifest["spec"]["runPolicy"] = {
        "schedulingPolicy": {"priorityClass": "high", "minAvailable": 2}
    }
    by_pods = tfjob("tf-pods", namespace="search")
    by_pods["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["priorityClassName"] = "high"
    refused = tfjob("tf-gold", namespace="search")
    refused["spec"]["runPolicy"] = {"schedulingPolicy": {"priorityClass": "gold"}}
    before = await counts(engine)

    job = await submit(submitter, manifest)
    pods_job = await submit(submitter, by_pods)
    answer = await submitter.post("/v1/jobs", json=refused)

    assert (job["priority"], job["priority_class"], job["preemptible"]) == (900, "high", False)
    assert (pods_job["priority"], pods_job["priority_class"]) == (900, "high")
    assert await job_columns(engine, job["id"]) == (900, "high", False)
    assert errors(answer) == [
        (
            "/spec/runPolicy/schedulingPolicy/priorityClass",
            "tenant search may not use priority class 'gold' (an admin grants classes to tenants)",
        )
    ]
    assert (await counts(engine))["jobs"] == before["jobs"] + 2


@pytest.mark.usefixtures("granted")
async def test_every_submit_path_answers_as_the_one_rule_says(
    submitter: CheckedClient,
) -> None:
    # The rule's one home is gateway.domain.scheduling.priority.resolve; group commit (its SQL
    # form of the ceiling), the careful path and a batch request's transaction must agree with it.
    granted = {"high": PriorityClass(name="high", value=900, preemptible=False)}
    cases = [
        (priority, named)
        for priority in (None, -1, 0, 1, 800, 900)
        for named in (None, "high", "gold", "lead")
    ]

    def spec(prefix: str, index: int, priority: int | None, named: str | None) -> dict[str, Any]:
        fields: dict[str, Any] = {} if named is None else {"priority_class": named}
        if priority is not None:
            fields["priority"] = priority
        return job_spec(f"{prefix}{index}", **fields)

    alone = await asyncio.gather(
        *(submitter.post("/v1/jobs", json=spec("a", i, *case)) for i, case in enumerate(cases))
    )
    together = await submitter.post(
        BATCH, json=batch(*(spec("b", i, *case) for i, case in enumerate(cases)))
    )

    for (priority, named), one, item in zip(cases, alone, together.body["items"], strict=True):
        rule = resolve(
            tenant="search",
            ceiling=0,
            priority=priority,
            priority_class=named,
            granted=granted.get(named or ""),
        )
        if isinstance(rule, Resolved):
            assert (one.status, item["status"]) == (201, 201), (priority, named, one.text)
            for job in (one.body, item["job"]):
                shown = (job["priority"], job["priority_class"], job["preemptible"])
                assert shown == (rule.priority, rule.priority_class, rule.preemptible)
        else:
            assert (one.status, item["status"]) == (422, 422), (priority, named, one.text)
            assert errors(one) == [(rule.pointer, rule.detail)]
            assert without_instance(item["problem"]) == without_instance(one.body)


@pytest.mark.usefixtures("granted")
async def test_the_leader_is_handed_a_classed_job_at_its_value_and_preemptibility(
    api: CheckedClient, submitter: CheckedClient
) -> None:
    handed: list[PendingJob] = []
    api.app[SUBMITS].on_queued = handed.append

    classed = await submit(submitter, job_spec("classed", priority_class="high"))
    plain = await submit(submitter, job_spec("plain"))
    together = await submitter.post(BATCH, json=batch(job_spec("b", priority_class="high")))

    in_batch = together.body["items"][0]["job"]
    assert [(p.id, p.priority, p.preemptible) for p in handed] == [
        (classed["id"], 900, False),
        (plain["id"], 0, True),
        (in_batch["id"], 900, False),
    ]


@pytest.mark.usefixtures("granted")
async def test_submits_racing_a_revocation_and_a_change_of_the_class_each_get_a_clean_answer(
    api: CheckedClient, submitter: CheckedClient, engine: AsyncEngine
) -> None:
    # Submits of the class hold its grant until they commit; the tenant's write takes the
    # tenant's row and then revokes the grant. Neither may deadlock the other, or answer 5xx.
    singles = [
        submitter.post("/v1/jobs", json=job_spec(f"s{i}", priority_class="high")) for i in range(12)
    ]
    together = submitter.post(
        BATCH, json=batch(*(job_spec(f"b{i}", priority_class="high") for i in range(6)))
    )
    changed = api.put(f"{CLASSES}/high", json={"value": 950, "preemptible": False})
    revoked = api.patch("/v1/admin/tenants/search", json={"priority_classes": []})

    *answers, in_batch, change, revoke = await asyncio.gather(*singles, together, changed, revoked)

    assert (change.status, revoke.status) == (200, 200), (change.text, revoke.text)
    statuses = [a.status for a in answers] + [i["status"] for i in in_batch.body["items"]]
    assert set(statuses) <= {201, 422}, [a.text for a in answers]
    async with engine.connect() as conn:
        written = (
            await conn.execute(text("SELECT priority, priority_class, preemptible FROM jobs"))
        ).all()
    assert len(written) == statuses.count(201)
    assert {tuple(row) for row in written} <= {(900, "high", False), (950, "high", False)}
    after = await submitter.post("/v1/jobs", json=job_spec("after", priority_class="high"))
    assert after.status == 422


# -- deleting a class ----------------------------------------------------------------------------


@pytest.mark.usefixtures("granted")
async def test_a_class_is_not_deleted_while_granted_or_named_by_a_live_job(
    api: CheckedClient, submitter: CheckedClient, engine: AsyncEngine
) -> None:
    job = await submit(submitter, job_spec(priority_class="high"))

    granted = await api.delete(f"{CLASSES}/high")
    await grant(api)
    live = await api.delete(f"{CLASSES}/high")
    assert (await api.post(f"/v1/jobs/{job['id']}/cancel")).status == 200
    deleted = await api.delete(f"{CLASSES}/high")

    assert (granted.status, live.status, deleted.status) == (409, 409, 204)
    assert granted.content_type == live.content_type == "application/problem+json"
    assert "still granted to tenants (search)" in granted.body["detail"]
    assert "named by 1 queued or running jobs" in live.body["detail"]
    # A finished job keeps the name of the class it ran with.
    assert (await api.get(f"/v1/jobs/{job['id']}")).body["priority_class"] == "high"
    assert await job_columns(engine, job["id"]) == (900, "high", False)
    audit = (await api.get("/v1/admin/audit?priority_class=high")).body["items"]
    assert [e["action"] for e in audit] == ["delete", "create"]
