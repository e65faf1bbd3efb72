"""The job and tenant API, end to end against a real PostgreSQL: what each endpoint promises."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import (
    TENANT,
    create_tenant,
    grant_priority,
    job_spec,
    row_counts,
    submit,
    tenant_body,
)
from tests.openapi_check import CheckedClient

CONTRACT = Path(__file__).resolve().parents[2] / "openapi" / "openapi.yaml"
ABSENT_ID = "0c6a3f2e-9b7d-4e1a-8c5f-2d4b6a8e0f13"


@pytest.fixture
async def tenant(api: CheckedClient) -> None:
    await create_tenant(api)


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def queued_counter(engine: AsyncEngine, tenant: str = "search") -> int:
    """Queued jobs holding a queue slot; slots are distinct and below the tenant's cap."""
    held = int(
        await scalar(
            engine,
            "SELECT count(DISTINCT j.queue_slot) FROM jobs j JOIN tenants t ON t.name = j.tenant "
            "WHERE j.tenant = :t AND j.state = 'queued' AND j.queue_slot < t.max_queued_jobs",
            t=tenant,
        )
    )
    queued = int(
        await scalar(
            engine, "SELECT count(*) FROM jobs WHERE tenant = :t AND state = 'queued'", t=tenant
        )
    )
    assert held == queued, "every submitted queued job holds its own slot below the cap"
    return held


# -- submit and read ------------------------------------------------------------------------------


@pytest.mark.usefixtures("tenant")
async def test_submit_returns_201_and_location_and_get_returns_the_job_with_defaults(
    api: CheckedClient,
) -> None:
    spec = job_spec("wide-deep", framework="tensorflow", labels={"team": "ranking"})

    created = await api.post("/v1/jobs", json=spec)

    assert created.status == 201, created.text
    job = created.body
    assert created.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert job["attempt"] == 0
    assert job["finished_at"] is None
    read = await api.get(created.headers["Location"])
    assert read.status == 200
    assert read.body == job
    stored = read.body["spec"]
    assert stored["framework"] == "tensorflow"
    assert stored["priority"] == 0
    assert stored["labels"] == {"team": "ranking"}
    assert stored["callback"] is None
    assert stored["run_policy"] == {
        "backoff_limit": 3,
        "active_deadline_seconds": None,
        "ready_timeout_seconds": 600,
        "clean_pod_policy": "Running",
        "success_policy": "Default",
        "ttl_seconds_after_finished": None,
    }
    assert stored["replicas"] == {
        "worker": {
            "count": 2,
            "image": "reg/wd:1",
            "command": [],
            "args": [],
            "env": {},
            "resources": {"cpu": "1", "memory": "1Gi", "gpu": 0},
            "exclusive_cpus": False,
            "restart_policy": "Never",
            "node_selector": {},
            "tolerations": [],
            "port": 2222,
            "termination_grace_period_seconds": None,
        }
    }


@pytest.mark.usefixtures("tenant")
async def test_submit_records_a_submitted_event(api: CheckedClient) -> None:
    job = await submit(api, job_spec())

    events = await api.get(f"/v1/jobs/{job['id']}/events")

    assert events.status == 200
    assert [(e["type"], e["from_state"], e["to_state"]) for e in events.body["items"]] == [
        ("submitted", None, "queued")
    ]


# -- idempotency ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("tenant")
async def test_idempotent_retry_returns_200_with_the_same_job_and_no_second_row(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "submit-1"}
    first = await api.post("/v1/jobs", json=job_spec(), headers=headers)
    assert first.status == 201, first.text
    before = await row_counts(engine)

    retry = await api.post("/v1/jobs", json=job_spec(), headers=headers)

    assert retry.status == 200, retry.text
    assert retry.body["id"] == first.body["id"]
    assert retry.headers["Location"] == first.headers["Location"]
    assert await row_counts(engine) == before


@pytest.mark.usefixtures("tenant")
async def test_idempotency_key_reused_with_a_different_body_is_409_and_writes_nothing(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "submit-1"}
    assert (await api.post("/v1/jobs", json=job_spec("a"), headers=headers)).status == 201
    before = await row_counts(engine)

    other = await api.post("/v1/jobs", json=job_spec("b"), headers=headers)

    assert other.status == 409, other.text
    assert other.content_type == "application/problem+json"
    assert await row_counts(engine) == before


@pytest.mark.usefixtures("tenant")
async def test_concurrent_identical_idempotent_submits_create_exactly_one_job(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    headers = {"Idempotency-Key": "burst"}

    responses = await asyncio.gather(
        *(api.post("/v1/jobs", json=job_spec(), headers=headers) for _ in range(10))
    )

    assert sorted(r.status for r in responses) == [200] * 9 + [201], [r.text for r in responses]
    assert len({r.body["id"] for r in responses}) == 1
    assert await scalar(engine, "SELECT count(*) FROM jobs") == 1
    assert await scalar(engine, "SELECT count(*) FROM job_events") == 1
    assert await queued_counter(engine) == 1


@pytest.mark.usefixtures("tenant")
async def test_concurrent_idempotent_retries_never_see_the_live_name_conflict(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    """Two retries that pass ON CONFLICT's arbiter check together meet again on the live-name
    index; the loser must still get the winner's job (200), not 409. The window is narrow, so
    many rounds make the race likely to be hit."""
    for round_ in range(20):
        headers = {"Idempotency-Key": f"burst-{round_}"}
        spec = job_spec(f"job-{round_}")

        responses = await asyncio.gather(
            *(api.post("/v1/jobs", json=spec, headers=headers) for _ in range(10))
        )

        assert sorted(r.status for r in responses) == [200] * 9 + [201], [
            r.text for r in responses if r.status >= 300
        ]
    assert await scalar(engine, "SELECT count(*) FROM jobs") == 20


# -- names ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("tenant")
async def test_a_live_name_is_taken_until_its_job_is_cancelled(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await grant_priority(api, 5)
    first = await submit(api, job_spec("wd"))
    before = await row_counts(engine)

    clash = await api.post("/v1/jobs", json=job_spec("wd", priority=5))

    assert clash.status == 409, clash.text
    assert await row_counts(engine) == before
    assert (await api.post(f"/v1/jobs/{first['id']}/cancel")).status == 200
    again = await api.post("/v1/jobs", json=job_spec("wd", priority=5))
    assert again.status == 201, again.text
    assert again.body["id"] != first["id"]


async def test_the_same_name_may_live_in_two_tenants(api: CheckedClient) -> None:
    await create_tenant(api, "search")
    await create_tenant(api, "ads")

    await submit(api, job_spec("wd", tenant="search"))
    await submit(api, job_spec("wd", tenant="ads"))


# -- listing --------------------------------------------------------------------------------------


@pytest.mark.usefixtures("tenant")
async def test_pages_of_three_return_all_seven_jobs_once_in_submit_order(
    api: CheckedClient,
) -> None:
    submitted = [(await submit(api, job_spec(f"job-{i}")))["id"] for i in range(7)]

    seen: list[str] = []
    cursors: list[str | None] = []
    params: dict[str, str] = {"limit": "3"}
    for _ in range(10):
        page = await api.get("/v1/jobs", params=params)
        assert page.status == 200, page.text
        assert len(page.body["items"]) <= 3
        seen += [item["id"] for item in page.body["items"]]
        cursors.append(page.body["next_cursor"])
        if page.body["next_cursor"] is None:
            break
        params = {"limit": "3", "cursor": page.body["next_cursor"]}

    assert seen == submitted
    assert len(cursors) == 3
    assert cursors[-1] is None
    assert all(cursors[:-1])


@pytest.mark.usefixtures("tenant")
async def test_a_page_that_ends_exactly_at_the_last_job_has_no_next_cursor(
    api: CheckedClient,
) -> None:
    for i in range(3):
        await submit(api, job_spec(f"job-{i}"))

    page = await api.get("/v1/jobs", params={"limit": "3"})

    assert len(page.body["items"]) == 3
    assert page.body["next_cursor"] is None


async def test_list_filters_by_state_tenant_and_label_selector(api: CheckedClient) -> None:
    await create_tenant(api, "search")
    await create_tenant(api, "ads")
    ranking = await submit(api, job_spec("a", labels={"team": "ranking", "tier": "gold"}))
    ranking_silver = await submit(api, job_spec("b", labels={"team": "ranking", "tier": "silver"}))
    other = await submit(api, job_spec("c", labels={"team": "infra"}))
    ads = await submit(api, job_spec("d", tenant="ads", labels={"team": "ranking"}))
    await api.post(f"/v1/jobs/{other['id']}/cancel")

    async def ids(**params: str) -> list[str]:
        response = await api.get("/v1/jobs", params=params)
        assert response.status == 200, response.text
        return [item["id"] for item in response.body["items"]]

    assert await ids(state="cancelled") == [other["id"]]
    assert await ids(state="queued") == [ranking["id"], ranking_silver["id"], ads["id"]]
    assert await ids(tenant="ads") == [ads["id"]]
    assert await ids(label="team=ranking") == [ranking["id"], ranking_silver["id"], ads["id"]]
    assert await ids(label="team=ranking,tier=gold") == [ranking["id"]]
    assert await ids(label="team=ranking", tenant="search") == [
        ranking["id"],
        ranking_silver["id"],
    ]
    assert await ids(state="succeeded") == []


# -- cancel ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("tenant")
async def test_cancelling_a_queued_job_finishes_it_and_records_the_event(
    api: CheckedClient,
) -> None:
    job = await submit(api, job_spec())

    cancelled = await api.post(f"/v1/jobs/{job['id']}/cancel")

    assert cancelled.status == 200, cancelled.text
    assert cancelled.body["state"] == "cancelled"
    assert cancelled.body["finished_at"] is not None
    assert (await api.get(f"/v1/jobs/{job['id']}")).body["state"] == "cancelled"
    events = (await api.get(f"/v1/jobs/{job['id']}/events")).body["items"]
    assert [(e["type"], e["from_state"], e["to_state"]) for e in events] == [
        ("submitted", None, "queued"),
        ("cancelled", "queued", "cancelled"),
    ]


@pytest.mark.usefixtures("tenant")
async def test_cancelling_twice_is_idempotent_with_one_cancelled_event(
    api: CheckedClient,
) -> None:
    job = await submit(api, job_spec())

    first = await api.post(f"/v1/jobs/{job['id']}/cancel")
    second = await api.post(f"/v1/jobs/{job['id']}/cancel")

    assert (first.status, second.status) == (200, 200)
    assert second.body == first.body
    events = (await api.get(f"/v1/jobs/{job['id']}/events")).body["items"]
    assert [e["type"] for e in events].count("cancelled") == 1


@pytest.mark.usefixtures("tenant")
async def test_cancelling_a_succeeded_job_is_409_and_changes_nothing(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    job = await submit(api, job_spec())
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = :id"),
            {"id": job["id"]},
        )
    before = await row_counts(engine)

    refused = await api.post(f"/v1/jobs/{job['id']}/cancel")

    assert refused.status == 409, refused.text
    assert refused.content_type == "application/problem+json"
    assert (await api.get(f"/v1/jobs/{job['id']}")).body["state"] == "succeeded"
    assert await row_counts(engine) == before


async def test_events_of_an_unknown_job_are_404(api: CheckedClient) -> None:
    response = await api.get(f"/v1/jobs/{ABSENT_ID}/events")

    assert response.status == 404
    assert response.content_type == "application/problem+json"


# -- the queued-job cap ---------------------------------------------------------------------------


async def test_a_tenant_over_max_queued_jobs_gets_429_with_retry_after_and_nothing_written(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await create_tenant(api, **tenant_body(max_queued_jobs=2))
    await submit(api, job_spec("a"))
    await submit(api, job_spec("b"))
    before = await row_counts(engine)

    refused = await api.post("/v1/jobs", json=job_spec("c"))

    assert refused.status == 429, refused.text
    assert refused.content_type == "application/problem+json"
    assert int(refused.headers["Retry-After"]) > 0
    assert await row_counts(engine) == before
    assert await queued_counter(engine) == 2


async def test_concurrent_submits_never_exceed_max_queued_jobs(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await create_tenant(api, **tenant_body(max_queued_jobs=5))

    responses = await asyncio.gather(
        *(api.post("/v1/jobs", json=job_spec(f"burst-{i}")) for i in range(20))
    )

    assert sorted(r.status for r in responses) == [201] * 5 + [429] * 15
    assert await queued_counter(engine) == 5


async def test_the_queued_counter_follows_cancels(api: CheckedClient, engine: AsyncEngine) -> None:
    await create_tenant(api, **tenant_body(max_queued_jobs=2))
    first = await submit(api, job_spec("a"))
    await submit(api, job_spec("b"))
    assert await queued_counter(engine) == 2
    assert (await api.post("/v1/jobs", json=job_spec("c"))).status == 429

    await api.post(f"/v1/jobs/{first['id']}/cancel")

    assert await queued_counter(engine) == 1
    assert (await api.post("/v1/jobs", json=job_spec("c"))).status == 201
    assert await queued_counter(engine) == 2


async def test_an_idempotent_retry_is_answered_even_when_the_tenant_is_at_its_cap(
    api: CheckedClient,
) -> None:
    await create_tenant(api, **tenant_body(max_queued_jobs=1))
    headers = {"Idempotency-Key": "only"}
    first = await api.post("/v1/jobs", json=job_spec(), headers=headers)

    retry = await api.post("/v1/jobs", json=job_spec(), headers=headers)

    assert (first.status, retry.status) == (201, 200)
    assert retry.body["id"] == first.body["id"]


# -- service endpoints ----------------------------------------------------------------------------


async def test_health_endpoints_answer_200(api: CheckedClient) -> None:
    assert (await api.get("/healthz")).body == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status == 200
    # No runtime in this app: nothing to be unsure about.
    assert ready.body == {"status": "ok", "cluster": {"status": "ok"}}


async def test_openapi_json_serves_the_contract(api: CheckedClient) -> None:
    response = await api.get("/openapi.json")

    assert response.status == 200
    assert response.body == yaml.safe_load(CONTRACT.read_text("utf-8"))
    assert response.body["openapi"].startswith("3.1")


# -- tenants --------------------------------------------------------------------------------------


async def test_put_tenant_twice_creates_then_replaces_and_audits_both(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    created = await api.put("/v1/admin/tenants/search", json=tenant_body())
    replaced = await api.put(
        "/v1/admin/tenants/search", json=tenant_body(cpu="200", max_queued_jobs=5)
    )

    assert created.status == 201, created.text
    assert created.headers["Location"] == "/v1/admin/tenants/search"
    assert replaced.status == 200, replaced.text
    assert replaced.body["quota"]["cpu"] == "200"
    assert replaced.body["quota"]["max_queued_jobs"] == 5
    assert (await api.get("/v1/admin/tenants/search")).body == replaced.body
    async with engine.connect() as conn:
        rows = (
            (
                await conn.execute(
                    text(
                        "SELECT actor, action, tenant, before, after FROM audit_log "
                        "WHERE tenant = 'search' ORDER BY id"
                    )
                )
            )
            .mappings()
            .all()
        )
    assert [(r["action"], r["tenant"]) for r in rows] == [
        ("create", "search"),
        ("replace", "search"),
    ]
    assert all(r["actor"] for r in rows)
    assert rows[0]["before"] is None
    assert rows[0]["after"]["quota_cpu_millis"] == 100_000
    assert rows[1]["before"] == rows[0]["after"]
    assert rows[1]["after"]["quota_cpu_millis"] == 200_000
    assert rows[1]["after"]["max_queued_jobs"] == 5


async def test_admin_tenant_list_includes_every_tenant(api: CheckedClient) -> None:
    await create_tenant(api, "search")
    await create_tenant(api, "ads", namespace="ads-prod")

    listed = await api.get("/v1/admin/tenants")

    assert listed.status == 200
    by_name = {t["name"]: t for t in listed.body["items"]}
    assert sorted(by_name) == ["ads", "search"]
    assert by_name["ads"]["namespace"] == "ads-prod"
    assert by_name["search"]["namespace"] == "search"
    assert by_name["search"]["quota"] == {
        "cpu": "100",
        "memory": "1Ti",
        "gpu": 8,
        "max_running_jobs": 10,
        "max_queued_jobs": 100,
    }
    assert by_name["search"]["max_priority"] == 0


async def test_a_namespace_taken_by_another_tenant_is_422_at_namespace(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await create_tenant(api, "search", namespace="shared")
    before = await row_counts(engine)

    clash = await api.put("/v1/admin/tenants/ads", json={**tenant_body(), "namespace": "shared"})

    assert clash.status == 422, clash.text
    assert "/namespace" in [e["pointer"] for e in clash.body["errors"]]
    assert await row_counts(engine) == before
    assert (await api.get("/v1/admin/tenants/ads")).status == 404


async def test_a_tenant_default_namespace_clashing_with_another_is_422(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await create_tenant(api, "search", namespace="ads")
    before = await row_counts(engine)

    clash = await api.put("/v1/admin/tenants/ads", json=tenant_body())

    assert clash.status == 422, clash.text
    assert "/namespace" in [e["pointer"] for e in clash.body["errors"]]
    assert await row_counts(engine) == before


# -- the database keeps its own invariants --------------------------------------------------------


@pytest.mark.usefixtures("tenant")
async def test_job_events_rows_cannot_be_updated(api: CheckedClient, engine: AsyncEngine) -> None:
    await submit(api, job_spec())

    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE job_events SET message = 'rewritten'"))

    assert await scalar(engine, "SELECT count(*) FROM job_events WHERE message IS NULL") == 1


async def test_a_dry_run_is_a_submit_for_who_may_do_it_and_writes_nothing(
    api: CheckedClient, settings: Settings, engine: AsyncEngine
) -> None:
    """A viewer's dry run is a 403 like its submit; another tenant's is a 422 naming no tenant
    it may not see; a submitter's answers the stored spec and the next cycle, writing nothing."""
    await create_tenant(api)
    await create_tenant(api, "other", namespace="other")
    before = await row_counts(engine)
    viewer = api.as_(tokens.token(settings, roles={TENANT: "viewer"}))
    refused = await viewer.post("/v1/jobs?dry_run=true", json=job_spec())
    assert refused.status == 403, refused.text
    submitter = api.as_(tokens.token(settings, roles={TENANT: "submitter"}))
    hidden = await submitter.post("/v1/jobs?dry_run=true", json=job_spec(tenant="other"))
    assert hidden.status == 422, hidden.text
    answered = await submitter.post("/v1/jobs?dry_run=true", json=job_spec())
    assert answered.status == 200, answered.text
    assert answered.body["dry_run"] is True
    assert answered.body["spec"]["name"] == "wd"
    assert answered.body["next_cycle"]["admitted"] is True
    assert await row_counts(engine) == before
