"""Extended resources through the API and the database: admins limit them in quotas, jobs ask
for them, admission places them only where nodes offer them and counts what tenants hold.

The nodes here: cpu-0 offers no RDMA NIC; rdma-0 offers two. A tenant's quota limits the
extended resources it names; null in a PATCH takes a limit away."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain.scheduling.nodes import Node
from tests.integration.helpers import QUOTA, job_spec, row_counts
from tests.integration.test_preemption_cycle import START, cycle_at
from tests.openapi_check import CheckedClient

GIB = 2**30
RDMA = "rdma/hca"


@pytest.fixture
def nodes() -> tuple[Node, ...]:
    return (
        Node(name="cpu-0", cpu_millis=64_000, memory_bytes=256 * GIB),
        Node(name="rdma-0", cpu_millis=8_000, memory_bytes=64 * GIB, extended={RDMA: 2}),
    )


def rdma_job(name: str, nics: int | str, count: int = 1) -> dict[str, Any]:
    worker = {"count": count, "image": "reg/x:1", "resources": {"cpu": "1", RDMA: nics}}
    return job_spec(name, replicas={"worker": worker})


async def test_an_admin_limits_an_extended_resource_and_a_patch_of_null_lifts_it(
    api: CheckedClient,
) -> None:
    put = await api.put("/v1/admin/tenants/search", json={"quota": {**QUOTA, RDMA: 2}})
    assert put.status == 201, put.text
    assert put.body["quota"][RDMA] == "2"
    pages = await api.patch("/v1/admin/tenants/search", json={"quota": {"hugepages-2Mi": "1Gi"}})
    assert pages.status == 200, pages.text
    assert pages.body["quota"][RDMA] == "2"
    assert pages.body["quota"]["hugepages-2Mi"] == "1Gi"
    lifted = await api.patch("/v1/admin/tenants/search", json={"quota": {RDMA: None}})
    assert lifted.status == 200, lifted.text
    assert RDMA not in lifted.body["quota"]
    assert (await api.get("/v1/admin/tenants/search")).body["quota"]["hugepages-2Mi"] == "1Gi"


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("nvidia.com/gpu", 1, "requested as gpu"),
        ("kubernetes.io/batteries", 1, "Kubernetes' own"),
        (RDMA, "1.5", "not a whole number"),
        ("hugepages-2Mi", "3Mi", "2Mi pages"),
    ],
)
async def test_a_bad_extended_limit_is_a_422_at_its_key_and_writes_nothing(
    api: CheckedClient, engine: AsyncEngine, key: str, value: Any, words: str
) -> None:
    before = await row_counts(engine)
    response = await api.put("/v1/admin/tenants/search", json={"quota": {**QUOTA, key: value}})
    assert response.status == 422, response.text
    [error] = response.body["errors"]
    assert error["pointer"] == f"/quota/{key.replace('/', '~1')}"
    assert words in error["detail"]
    assert await row_counts(engine) == before


async def test_a_job_over_its_tenants_extended_quota_is_refused_at_submit(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    assert (
        await api.put("/v1/admin/tenants/search", json={"quota": {**QUOTA, RDMA: 1}})
    ).status == 201
    before = await row_counts(engine)
    response = await api.post("/v1/jobs", json=rdma_job("big", 1, count=2))
    assert response.status == 422, response.text
    assert any(RDMA in error["detail"] for error in response.body["errors"]), response.text
    assert await row_counts(engine) == before


async def test_a_bad_extended_request_is_a_422_at_its_pointer(api: CheckedClient) -> None:
    assert (await api.put("/v1/admin/tenants/search", json={"quota": QUOTA})).status == 201
    response = await api.post("/v1/jobs", json=rdma_job("odd", "500m"))
    assert response.status == 422, response.text
    pointers = [error["pointer"] for error in response.body["errors"]]
    assert pointers == ["/replicas/worker/resources/rdma~1hca"]


async def test_admission_places_nics_only_where_offered_and_counts_what_tenants_hold(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    assert (
        await api.put("/v1/admin/tenants/search", json={"quota": {**QUOTA, RDMA: 2}})
    ).status == 201
    first = (await api.post("/v1/jobs", json=rdma_job("first", 1))).body["id"]
    second = (await api.post("/v1/jobs", json=rdma_job("second", 1))).body["id"]
    third = (await api.post("/v1/jobs", json=rdma_job("third", 1))).body["id"]
    admitted = (await cycle_at(engine, nodes, START)).admitted
    assert sorted(admitted) == sorted([first, second])
    async with engine.connect() as conn:
        placed = (
            await conn.execute(text("SELECT node, extended FROM placements ORDER BY pod_name"))
        ).all()
    assert [tuple(row) for row in placed] == [("rdma-0", {RDMA: 1})] * 2
    waiting = (await api.get(f"/v1/jobs/{third}")).body
    assert waiting["reason"] == "WaitingForQuota"
    assert "rdma/hca" in waiting["message"]
    cluster = (await api.get("/v1/cluster")).body
    assert cluster["extended"] == {RDMA: {"capacity": "2", "free": "0"}}
    node = next(n for n in cluster["nodes"] if n["name"] == "rdma-0")
    assert node["extended"] == {RDMA: {"capacity": "2", "free": "0"}}
