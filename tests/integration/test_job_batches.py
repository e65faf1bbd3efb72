"""POST /v1/jobs:batch: many jobs in one request, each answered as POST /v1/jobs would answer it
alone, all written in one transaction. Every response is checked against the OpenAPI document."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.api.context import SUBMITS
from gateway.backends.nodes_file import StaticInventory
from gateway.domain.scheduling.nodes import Node
from gateway.domain.scheduling.queueing import PendingJob
from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import (
    create_tenant,
    job_spec,
    row_counts,
    submit,
    tenant_body,
)
from tests.openapi_check import CheckedClient, Response

BATCH = "/v1/jobs:batch"


def batch(*jobs: dict[str, Any], keys: tuple[str | None, ...] = ()) -> dict[str, Any]:
    """The body of a batch: each job with the key at its place in ``keys``, if any."""
    items = []
    for index, job in enumerate(jobs):
        item: dict[str, Any] = {"job": job}
        if index < len(keys) and keys[index] is not None:
            item["idempotency_key"] = keys[index]
        items.append(item)
    return {"jobs": items}


def statuses(response: Response) -> list[int]:
    assert response.status == 200, response.text
    return [item["status"] for item in response.body["items"]]


def without_instance(problem: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in problem.items() if key != "instance"}


def tfjob(name: str, namespace: str) -> dict[str, Any]:
    container = {"name": "tensorflow", "image": "reg/wd:1"}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "tfReplicaSpecs": {
                "Worker": {"replicas": 2, "template": {"spec": {"containers": [container]}}}
            }
        },
    }


async def queued_jobs(engine: AsyncEngine, tenant: str) -> int:
    async with engine.connect() as conn:
        query = text("SELECT count(*) FROM jobs WHERE tenant = :t AND state = 'queued'")
        return int(await conn.scalar(query, {"t": tenant}) or 0)


# -- each job answered on its own ----------------------------------------------------------------


async def test_each_job_of_a_mixed_batch_gets_the_answer_the_single_endpoint_gives_it(
    api: CheckedClient, settings: Settings, engine: AsyncEngine
) -> None:
    await create_tenant(api, "search")
    await create_tenant(api, "full", **tenant_body(max_queued_jobs=1))
    await create_tenant(api, "theirs")  # alice is a viewer there
    await create_tenant(api, "hidden")  # alice has no role there
    await submit(api, job_spec("taken"))
    await submit(api, job_spec("queued", tenant="full"))
    await submit(api, job_spec("again"), headers={"Idempotency-Key": "again"})
    await submit(api, job_spec("reused"), headers={"Idempotency-Key": "reused"})
    roles = {"search": "submitter", "full": "submitter", "theirs": "viewer"}
    alice = api.as_(tokens.token(settings, user="alice@example.com", roles=roles))
    jobs = [
        job_spec("a"),  # 201
        job_spec("taken"),  # 409: a live job has the name
        job_spec("Bad_Name", replicas={"worker": {"count": 0, "image": "x"}}),  # 422
        job_spec("too-high", priority=5),  # 422: above the ceiling (0)
        job_spec("huge", replicas={"worker": {"image": "x", "resources": {"cpu": "1000"}}}),
        job_spec("c", tenant="full"),  # 429: its queue is full
        job_spec("d", tenant="theirs"),  # 403: a viewer may not submit
        job_spec("e", tenant="hidden"),  # 422: a tenant alice cannot see does not exist
        job_spec("again"),  # 200: the job an earlier request with its key made
        job_spec("reused", labels={"other": "body"}),  # 409: its key came with another body
        tfjob("tf", namespace="search"),  # 201
        job_spec("b"),  # 201
    ]
    keys = (None,) * 8 + ("again", "reused")
    before = await row_counts(engine)

    answered = await alice.post(BATCH, json=batch(*jobs, keys=keys))

    assert statuses(answered) == [201, 409, 422, 422, 422, 429, 403, 422, 200, 409, 201, 201]
    items = answered.body["items"]
    for item in items:
        if item["status"] in (200, 201):
            assert item["problem"] is None
            got = await alice.get(f"/v1/jobs/{item['job']['id']}")
            assert got.body == item["job"]
    # Each refusal is the single endpoint's, word for word, for the same job and key.
    for index, item in enumerate(items):
        if item["status"] in (200, 201):
            continue
        headers = {"Idempotency-Key": keys[index]} if index < len(keys) and keys[index] else {}
        alone = await alice.post("/v1/jobs", json=jobs[index], headers=headers)
        assert item["job"] is None
        assert (item["status"], item["problem"]) == (alone.status, without_instance(alone.body))
        if alone.status == 429:
            assert item["retry_after"] == int(alone.headers["Retry-After"])
    assert items[8]["job"]["name"] == "again"
    assert items[10]["job"]["tenant"] == "search"
    assert items[10]["job"]["framework"] == "tensorflow"
    after = await row_counts(engine)
    assert after == {**before, "jobs": before["jobs"] + 3, "job_events": before["job_events"] + 3}


async def test_a_tfjob_refused_in_a_batch_points_into_its_manifest(api: CheckedClient) -> None:
    await create_tenant(api, "search")
    big = tfjob("big", namespace="search")
    worker = big["spec"]["tfReplicaSpecs"]["Worker"]
    worker["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1000"}}

    answered = await api.post(BATCH, json=batch(big, tfjob("lost", namespace="nowhere")))

    assert statuses(answered) == [422, 422]
    never_fits, no_owner = (item["problem"] for item in answered.body["items"])
    alone = await api.post("/v1/jobs", json=big)
    assert never_fits == without_instance(alone.body)
    assert never_fits["errors"][0]["pointer"] == "/spec/tfReplicaSpecs"
    assert no_owner["errors"] == [
        {"pointer": "/metadata/namespace", "detail": "no tenant owns namespace 'nowhere'"}
    ]


async def test_queued_jobs_of_a_batch_are_handed_to_admission_after_it_commits(
    api: CheckedClient,
) -> None:
    await create_tenant(api, "search")
    handed: list[PendingJob] = []
    api.app[SUBMITS].on_queued = handed.append

    answered = await api.post(BATCH, json=batch(job_spec("a"), job_spec("b"), job_spec("a")))

    assert statuses(answered) == [201, 201, 409]
    assert [job.id for job in handed] == [item["job"]["id"] for item in answered.body["items"][:2]]
    assert all(len(job.pods) == 2 for job in handed)


# -- idempotent retries --------------------------------------------------------------------------


async def test_a_retried_batch_writes_nothing_and_answers_each_job_200_with_its_first_id(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await create_tenant(api, "search")
    jobs = [job_spec(f"sweep-{i}", labels={"lr": f"0.{i}"}) for i in range(5)]
    keys = tuple(f"sweep-{i}" for i in range(5))
    first = await api.post(BATCH, json=batch(*jobs, keys=keys))
    assert statuses(first) == [201] * 5
    written = await row_counts(engine)

    retried = await api.post(BATCH, json=batch(*jobs, keys=keys))

    assert statuses(retried) == [200] * 5
    ids = [item["job"]["id"] for item in first.body["items"]]
    assert [item["job"]["id"] for item in retried.body["items"]] == ids
    assert await row_counts(engine) == written
    # The keys are the single endpoint's too.
    alone = await api.post("/v1/jobs", json=jobs[2], headers={"Idempotency-Key": keys[2]})
    assert (alone.status, alone.body["id"]) == (200, ids[2])


async def test_a_retried_batch_is_answered_even_when_its_tenant_is_at_its_queued_cap(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await create_tenant(api, "search", **tenant_body(max_queued_jobs=3))
    jobs = [job_spec(f"j{i}") for i in range(3)]
    keys = ("k0", "k1", "k2")
    assert statuses(await api.post(BATCH, json=batch(*jobs, keys=keys))) == [201] * 3
    written = await row_counts(engine)

    retried = await api.post(BATCH, json=batch(*jobs, job_spec("j3"), keys=keys))

    assert statuses(retried) == [200, 200, 200, 429]
    assert await row_counts(engine) == written


# -- the queued cap ------------------------------------------------------------------------------


async def test_a_batch_past_the_queued_cap_is_201_up_to_the_cap_and_429_after_in_its_order(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await create_tenant(api, "search", **tenant_body(max_queued_jobs=5))
    await submit(api, job_spec("already"))
    jobs = [job_spec(f"j{i}") for i in range(8)]
    jobs[1] = job_spec("Not_Valid")  # refused before the queue: takes no slot

    answered = await api.post(BATCH, json=batch(*jobs))

    assert statuses(answered) == [201, 422, 201, 201, 201, 429, 429, 429]
    items = answered.body["items"]
    assert all(item["retry_after"] > 0 for item in items[5:])
    assert items[5]["problem"]["detail"] == (
        "tenant 'search' has 5 queued jobs, its limit; retry when some are admitted"
    )
    assert await queued_jobs(engine, "search") == 5


async def test_concurrent_batches_of_one_tenant_never_exceed_its_queued_cap(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await create_tenant(api, "search", **tenant_body(max_queued_jobs=30))

    answers = await asyncio.gather(
        *(
            api.post(BATCH, json=batch(*(job_spec(f"b{b}-j{i}") for i in range(20))))
            for b in range(4)
        )
    )

    # Which batch gets the last slots is a race, as between single submits; none goes past them.
    every = [status for answer in answers for status in statuses(answer)]
    assert sorted(every) == [201] * 30 + [429] * 50
    assert await queued_jobs(engine, "search") == 30


# -- one transaction -----------------------------------------------------------------------------


async def test_a_batch_that_fails_midway_leaves_none_of_its_jobs_written(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    # Failure injection in the database: the batch statement skips job "boom" (a trigger returns
    # no row the first time), so the careful path inserts it alone after the statement wrote the
    # others; that second insert fails as a database going away fails (SQLSTATE 57P01).
    await create_tenant(api, "search")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE SEQUENCE boom_inserts"))
        await conn.execute(
            text(
                """
                CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.name = 'boom' THEN
                        IF nextval('boom_inserts') = 1 THEN
                            RETURN NULL;
                        END IF;
                        RAISE EXCEPTION 'injected failure' USING ERRCODE = '57P01';
                    END IF;
                    RETURN NEW;
                END $$
                """
            )
        )
        await conn.execute(
            text("CREATE TRIGGER boom BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION boom()")
        )
    handed: list[PendingJob] = []
    api.app[SUBMITS].on_queued = handed.append
    before = await row_counts(engine)

    failed = await api.post(BATCH, json=batch(job_spec("a"), job_spec("boom"), job_spec("b")))

    assert failed.status == 503, failed.text
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT last_value FROM boom_inserts")) == 2
    assert await row_counts(engine) == before  # "a" and "b" were written, then rolled back
    assert handed == []
    # The same batch, once the database is well again, writes all three.
    async with engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER boom ON jobs"))
    assert statuses(await api.post(BATCH, json=batch(job_spec("a"), job_spec("boom")))) == [
        201,
        201,
    ]


# -- the envelope --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "pointer", "detail"),
    [
        (
            batch(*(job_spec(f"j{i}") for i in range(1001))),
            "/jobs",
            "must have at most 1000 items",
        ),
        (
            batch(job_spec("a"), job_spec("b"), job_spec("c"), keys=("k", "other", "k")),
            "/jobs/2/idempotency_key",
            "repeats the key of /jobs/0: each job of a batch needs its own",
        ),
        (
            batch(job_spec("a"), keys=("bell\x07",)),
            "/jobs/0/idempotency_key",
            "must be 1 to 255 printable ASCII characters",
        ),
        ({"jobs": [{"job": job_spec("a")}, {"job": "a"}]}, "/jobs/1/job", "must be of type object"),
        ({"jobs": [{"spec": job_spec("a")}]}, "/jobs/0/job", "is required"),
        ({"jobs": [], "tenant": "search"}, "/tenant", "unknown field"),
        (
            batch(job_spec("a", labels={"k": "nul\x00"})),
            "/jobs/0/job/labels/k",
            "the text contains a NUL character (\\u0000), which cannot be stored",
        ),
    ],
    ids=[
        "1001-jobs",
        "repeated-key",
        "unprintable-key",
        "job-not-object",
        "no-job",
        "extra",
        "nul",
    ],
)
async def test_a_malformed_batch_is_refused_whole_and_writes_nothing(
    api: CheckedClient, engine: AsyncEngine, body: dict[str, Any], pointer: str, detail: str
) -> None:
    await create_tenant(api, "search")
    before = await row_counts(engine)

    refused = await api.post(BATCH, json=body)

    assert refused.status == 422, refused.text
    assert {"pointer": pointer, "detail": detail} in refused.body["errors"]
    assert await row_counts(engine) == before


async def test_an_empty_batch_is_answered_with_no_items(api: CheckedClient) -> None:
    assert statuses(await api.post(BATCH, json={"jobs": []})) == []


async def test_a_caller_with_no_role_anywhere_is_refused_the_whole_batch(
    api: CheckedClient, settings: Settings, engine: AsyncEngine
) -> None:
    await create_tenant(api, "search")
    nobody = api.as_(tokens.token(settings, user="nobody@example.com", roles={}))
    before = await row_counts(engine)

    refused = await nobody.post(BATCH, json=batch(job_spec("a")))

    assert refused.status == 403, refused.text
    assert await row_counts(engine) == before


@pytest.fixture
async def small_bodies(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> AsyncIterator[CheckedClient]:
    """The API with a 2 KiB limit on bodies and a 16 KiB limit on batches."""
    api_settings = dataclasses.replace(
        settings.api, max_body_bytes=2048, max_batch_body_bytes=16 * 1024
    )
    app = make_app(dataclasses.replace(settings, api=api_settings), engine, StaticInventory(nodes))
    async with TestClient(TestServer(app)) as client:
        yield CheckedClient(client, tokens.admin_token(settings))


async def test_a_batch_has_its_own_body_limit(small_bodies: CheckedClient) -> None:
    await create_tenant(small_bodies, "search")
    twenty = batch(*(job_spec(f"j{i}") for i in range(20)))  # about 3 KiB
    too_many = batch(*(job_spec(f"j{i}") for i in range(200)))  # about 30 KiB

    answered = await small_bodies.post(BATCH, json=twenty)
    refused = await small_bodies.post(BATCH, json=too_many)

    assert statuses(answered) == [201] * 20
    assert refused.status == 413, refused.text
    assert "16384" in refused.body["detail"]
