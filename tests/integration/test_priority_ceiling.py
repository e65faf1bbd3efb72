"""A tenant's priority ceiling (max_priority): admins grant it, every submit path keeps it.

A job's priority orders the queue across tenants, so a submitter free to pick it could put its
jobs ahead of everyone's. These tests submit as hostile tenants would: above the ceiling, through
each path a job can take (alone, in a group-commit batch, as a TFJob, as an idempotent retry), and
by trying to raise the ceiling themselves.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.context import SUBMITS
from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import (
    create_tenant,
    grant_priority,
    job_spec,
    row_counts,
    submit,
)
from tests.openapi_check import CheckedClient, Response


@pytest.fixture
async def tenant(api: CheckedClient) -> None:
    await create_tenant(api)


@pytest.fixture
def submitter(api: CheckedClient, settings: Settings) -> CheckedClient:
    """A member of tenant search who may submit, and nothing more."""
    return api.as_(tokens.token(settings, user="eve@example.com", roles={"search": "submitter"}))


def refusal(response: Response) -> tuple[int, str, list[tuple[str, str]]]:
    """(status, content type, [(pointer, detail)]) of a response."""
    body = response.body
    errors = body.get("errors", []) if isinstance(body, dict) else []
    return response.status, response.content_type, [(e["pointer"], e["detail"]) for e in errors]


CEILING_0_REFUSES_1 = (
    422,
    "application/problem+json",
    [("/priority", "priority 1 is above tenant search's maximum priority 0 (an admin sets it)")],
)


@pytest.mark.usefixtures("tenant")
async def test_the_default_ceiling_0_refuses_priority_1_with_a_422_naming_it_and_writes_nothing(
    submitter: CheckedClient, engine: AsyncEngine
) -> None:
    before = await row_counts(engine)

    response = await submitter.post("/v1/jobs", json=job_spec(priority=1))

    assert refusal(response) == CEILING_0_REFUSES_1
    assert "maximum priority 0" in response.body["detail"]
    assert await row_counts(engine) == before
    assert (await submit(submitter, job_spec(priority=0)))["priority"] == 0


@pytest.mark.usefixtures("tenant")
async def test_an_admin_raising_the_ceiling_to_100_lets_100_in_and_refuses_101(
    api: CheckedClient, submitter: CheckedClient, engine: AsyncEngine
) -> None:
    await grant_priority(api, 100)

    admitted = await submit(submitter, job_spec("at-ceiling", priority=100))
    before = await row_counts(engine)
    refused = await submitter.post("/v1/jobs", json=job_spec("above", priority=101))

    assert admitted["priority"] == 100
    assert refusal(refused) == (
        422,
        "application/problem+json",
        [
            (
                "/priority",
                "priority 101 is above tenant search's maximum priority 100 (an admin sets it)",
            )
        ],
    )
    assert await row_counts(engine) == before


@pytest.mark.usefixtures("tenant")
async def test_negative_priorities_are_accepted_down_to_the_spec_minimum(
    submitter: CheckedClient, engine: AsyncEngine
) -> None:
    lowest = await submit(submitter, job_spec("lowest", priority=-1000))
    low = await submit(submitter, job_spec("low", priority=-1))
    before = await row_counts(engine)

    below_the_range = await submitter.post("/v1/jobs", json=job_spec("x", priority=-1001))

    assert (lowest["priority"], low["priority"]) == (-1000, -1)
    assert below_the_range.status == 422, below_the_range.text
    assert ("/priority", "must be at least -1000") in refusal(below_the_range)[2]
    assert await row_counts(engine) == before


async def test_a_negative_ceiling_refuses_even_the_default_priority(api: CheckedClient) -> None:
    await create_tenant(api, max_priority=-10)

    default = await api.post("/v1/jobs", json=job_spec("default"))
    at_ceiling = await api.post("/v1/jobs", json=job_spec("at", priority=-10))

    assert refusal(default)[2] == [
        ("/priority", "priority 0 is above tenant search's maximum priority -10 (an admin sets it)")
    ]
    assert at_ceiling.status == 201, at_ceiling.text


@pytest.mark.usefixtures("tenant")
async def test_the_tenant_views_show_max_priority(
    api: CheckedClient, submitter: CheckedClient
) -> None:
    assert (await submitter.get("/v1/tenants/search")).body["max_priority"] == 0

    await grant_priority(api, 40)

    assert (await submitter.get("/v1/tenants/search")).body["max_priority"] == 40
    assert (await api.get("/v1/admin/tenants/search")).body["max_priority"] == 40
    listed = (await api.get("/v1/admin/tenants")).body["items"]
    assert [(t["name"], t["max_priority"]) for t in listed] == [("search", 40)]


async def test_put_sets_the_ceiling_and_a_put_without_it_puts_it_back_to_0(
    api: CheckedClient,
) -> None:
    created = await create_tenant(api, max_priority=250)
    patched = await api.patch("/v1/admin/tenants/search", json={"quota": {"cpu": "50"}})
    replaced = await api.put("/v1/admin/tenants/search", json={"quota": created["quota"]})

    assert created["max_priority"] == 250
    assert patched.body["max_priority"] == 250  # a PATCH keeps what it leaves out
    assert replaced.status == 200, replaced.text
    assert replaced.body["max_priority"] == 0  # a PUT replaces the whole tenant


@pytest.mark.usefixtures("tenant")
async def test_a_ceiling_change_is_audited_with_the_admin_and_before_and_after(
    api: CheckedClient,
) -> None:
    await grant_priority(api, 100)

    audit = (await api.get("/v1/admin/audit?tenant=search")).body["items"]

    assert [entry["action"] for entry in audit] == ["update", "create"]
    latest = audit[0]
    assert latest["actor"] == "admin@example.com"
    assert (latest["before"]["max_priority"], latest["after"]["max_priority"]) == (0, 100)
    assert audit[1]["after"]["max_priority"] == 0


@pytest.mark.usefixtures("tenant")
async def test_a_submitter_cannot_raise_its_own_ceiling(
    submitter: CheckedClient, engine: AsyncEngine
) -> None:
    before = await row_counts(engine)

    patch = await submitter.patch("/v1/admin/tenants/search", json={"max_priority": 1000})
    put = await submitter.put(
        "/v1/admin/tenants/search", json={"quota": {"cpu": "1"}, "max_priority": 1000}
    )

    assert (patch.status, put.status) == (403, 403)
    assert await row_counts(engine) == before
    assert (await submitter.get("/v1/tenants/search")).body["max_priority"] == 0


@pytest.mark.usefixtures("tenant")
async def test_an_idempotent_retry_meets_todays_ceiling(
    api: CheckedClient, submitter: CheckedClient, engine: AsyncEngine
) -> None:
    key = {"Idempotency-Key": "nightly-1"}
    refused = await submitter.post("/v1/jobs", json=job_spec(priority=1), headers=key)
    retried = await submitter.post("/v1/jobs", json=job_spec(priority=1), headers=key)
    assert refusal(refused) == refusal(retried) == CEILING_0_REFUSES_1

    await grant_priority(api, 1)
    first = await submitter.post("/v1/jobs", json=job_spec(priority=1), headers=key)
    assert first.status == 201, first.text
    await grant_priority(api, 0)
    before = await row_counts(engine)

    again = await submitter.post("/v1/jobs", json=job_spec(priority=1), headers=key)

    assert refusal(again) == CEILING_0_REFUSES_1
    assert await row_counts(engine) == before


@pytest.mark.usefixtures("tenant")
async def test_lowering_the_ceiling_leaves_jobs_already_queued_as_they_are(
    api: CheckedClient,
) -> None:
    await grant_priority(api, 50)
    queued = await submit(api, job_spec(priority=50))

    await grant_priority(api, 0)

    assert (await api.get(f"/v1/jobs/{queued['id']}")).body["priority"] == 50


@pytest.mark.usefixtures("tenant")
async def test_concurrent_submits_around_the_ceiling_each_get_the_answer_one_alone_would(
    api: CheckedClient, submitter: CheckedClient, engine: AsyncEngine
) -> None:
    # Arriving together, these go to the database in group-commit batches, where the ceiling is
    # checked in SQL; a job above it must still get its own 422, and not hold back the others.
    await grant_priority(api, 10)
    priorities = [-1000, -5, 0, 9, 10, 11, 500, 1000] * 3
    answers = await asyncio.gather(
        *(
            submitter.post("/v1/jobs", json=job_spec(f"j{i}", priority=p))
            for i, p in enumerate(priorities)
        )
    )

    expected = [201 if p <= 10 else 422 for p in priorities]
    assert [a.status for a in answers] == expected, [a.text for a in answers]
    for priority, answer in zip(priorities, answers, strict=True):
        if answer.status == 422:
            assert refusal(answer)[2] == [
                (
                    "/priority",
                    f"priority {priority} is above tenant search's maximum priority 10 "
                    "(an admin sets it)",
                )
            ]
    assert (await row_counts(engine))["jobs"] == expected.count(201)
    assert api.app[SUBMITS].batched > 0
