"""The admission cycle against PostgreSQL: plans become rows, in one transaction, exactly once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.admission import LeaderQueue
from gateway.domain.scheduling.nodes import GpuMode, Node
from tests.integration.helpers import admit_and_place
from tests.openapi_check import CheckedClient

GIB = 2**30
QUOTA = {
    "cpu": "1000",
    "memory": "10Ti",
    "gpu": 64,
    "max_running_jobs": 100,
    "max_queued_jobs": 1000,
}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def job(
    name: str, *, gpu: float = 0, workers: int = 1, tenant: str = "search", priority: int = 0
) -> dict[str, Any]:
    return {
        "name": name,
        "tenant": tenant,
        "framework": "generic",
        "priority": priority,
        "replicas": {
            "worker": {
                "count": workers,
                "image": "img",
                "resources": {"cpu": "1", "memory": "1Gi", "gpu": gpu},
            }
        },
    }


async def make_tenant(api: CheckedClient, name: str = "search", **quota: Any) -> None:
    response = await api.put(f"/v1/admin/tenants/{name}", json={"quota": {**QUOTA, **quota}})
    assert response.status in (200, 201), response.text


async def cycle(engine: AsyncEngine, nodes: tuple[Node, ...], now: float = 1e10) -> Any:
    """A cycle of a new leader (it loads the queue whole), then its pass over queue positions."""
    return await admit_and_place(engine, nodes, LeaderQueue(), Clock(now))


async def test_admitted_job_gets_state_placements_and_event(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api)
    created = (await api.post("/v1/jobs", json=job("a", workers=3))).body
    result = await cycle(engine, nodes)
    assert result.admitted == (created["id"],)
    got = (await api.get(f"/v1/jobs/{created['id']}")).body
    assert got["state"] == "admitted"
    assert got["admitted_at"] is not None
    assert got["queue"] is None
    async with engine.connect() as conn:
        pods = (
            await conn.execute(
                text("SELECT pod_name, role, replica_index, node FROM placements ORDER BY pod_name")
            )
        ).all()
    assert [(p.pod_name, p.role, p.replica_index) for p in pods] == [
        ("a-worker-0", "worker", 0),
        ("a-worker-1", "worker", 1),
        ("a-worker-2", "worker", 2),
    ]
    events = (await api.get(f"/v1/jobs/{created['id']}/events")).body["items"]
    assert [e["type"] for e in events] == ["submitted", "admitted"]
    assert set(events[1]["data"]["placements"]) == {"a-worker-0", "a-worker-1", "a-worker-2"}


async def test_second_cycle_admits_nothing_twice(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api)
    await api.post("/v1/jobs", json=job("a"))
    first = await cycle(engine, nodes)
    second = await cycle(engine, nodes)
    assert len(first.admitted) == 1
    assert second.admitted == ()
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM placements")) == 1


async def test_waiting_job_shows_reason_and_queue_position(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    small = (Node(name="n", cpu_millis=2000, memory_bytes=8 * GIB),)
    first = (await api.post("/v1/jobs", json=job("a", workers=2))).body
    second = (await api.post("/v1/jobs", json=job("b", workers=2))).body
    third = (await api.post("/v1/jobs", json=job("c", workers=1))).body
    await cycle(engine, small)
    assert (await api.get(f"/v1/jobs/{first['id']}")).body["state"] == "admitted"
    waiting = (await api.get(f"/v1/jobs/{second['id']}")).body
    assert waiting["state"] == "queued"
    assert waiting["reason"] == "InsufficientCapacity"
    assert waiting["queue"] == {"position": 1, "tenant_position": 1}
    assert (await api.get(f"/v1/jobs/{third['id']}")).body["queue"]["position"] == 2


async def test_quota_blocks_admission_with_waiting_for_quota(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api, cpu="3")
    await api.post("/v1/jobs", json=job("a", workers=2))
    blocked = (await api.post("/v1/jobs", json=job("b", workers=2))).body
    result = await cycle(engine, nodes)
    assert len(result.admitted) == 1
    assert (await api.get(f"/v1/jobs/{blocked['id']}")).body["reason"] == "WaitingForQuota"
    status = (await api.get("/v1/tenants/search")).body
    assert status["usage"] == {"cpu": "2", "memory": "2Gi", "gpu": 0}
    assert (status["running_jobs"], status["queued_jobs"]) == (1, 1)


async def test_two_half_gpu_jobs_share_one_device(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api)
    a = (await api.post("/v1/jobs", json=job("a", gpu=0.5))).body
    b = (await api.post("/v1/jobs", json=job("b", gpu=0.5))).body
    result = await cycle(engine, nodes)
    assert set(result.admitted) == {a["id"], b["id"]}
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT node, gpu FROM placements ORDER BY id"))).all()
    assert [row.node for row in rows] == ["shared-0", "shared-0"]
    assert rows[0].gpu == rows[1].gpu[:1] == [{"device": rows[0].gpu[0]["device"], "shares": 50}]
    cluster = (await api.get("/v1/cluster")).body
    shared = next(n for n in cluster["nodes"] if n["name"] == "shared-0")
    assert sorted(d["free_shares"] for d in shared["gpu_devices"]) == [0, 100, 100, 100]


async def test_cancelled_admitted_job_frees_its_resources(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    one = (Node(name="n", cpu_millis=1000, memory_bytes=8 * GIB),)
    a = (await api.post("/v1/jobs", json=job("a"))).body
    b = (await api.post("/v1/jobs", json=job("b"))).body
    await cycle(engine, one)
    await api.post(f"/v1/jobs/{a['id']}/cancel")
    result = await cycle(engine, one)
    assert result.admitted == (b["id"],)


async def test_job_larger_than_any_node_is_refused_at_submit(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    spec = job("huge")
    spec["replicas"]["worker"]["resources"]["cpu"] = "128"
    response = await api.post("/v1/jobs", json=spec)
    assert response.status == 422
    assert response.body["errors"][0]["detail"].startswith("cpu:")
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM jobs")) == 0


async def test_job_larger_than_quota_is_refused_at_submit(api: CheckedClient) -> None:
    await make_tenant(api, gpu=2)
    response = await api.post("/v1/jobs", json=job("greedy", gpu=1, workers=4))
    assert response.status == 422
    assert "gpu" in response.body["errors"][0]["detail"]


async def test_lowering_quota_stops_admissions_but_keeps_admitted_jobs(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api)
    a = (await api.post("/v1/jobs", json=job("a", workers=4))).body
    await cycle(engine, nodes)
    patched = await api.patch("/v1/admin/tenants/search", json={"quota": {"cpu": "2"}})
    assert patched.status == 200
    assert patched.body["quota"]["cpu"] == "2"
    assert patched.body["quota"]["max_running_jobs"] == QUOTA["max_running_jobs"]
    b = (await api.post("/v1/jobs", json=job("b", workers=1))).body
    await cycle(engine, nodes)
    assert (await api.get(f"/v1/jobs/{a['id']}")).body["state"] == "admitted"
    assert (await api.get(f"/v1/jobs/{b['id']}")).body["reason"] == "WaitingForQuota"
    audit = (await api.get("/v1/admin/audit?tenant=search")).body["items"]
    assert [entry["action"] for entry in audit] == ["update", "create"]
    assert audit[0]["before"]["quota_cpu_millis"] == 1_000_000
    assert audit[0]["after"]["quota_cpu_millis"] == 2000


async def test_delete_tenant_refused_while_jobs_are_live(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    a = (await api.post("/v1/jobs", json=job("a"))).body
    assert (await api.delete("/v1/admin/tenants/search")).status == 409
    await api.post(f"/v1/jobs/{a['id']}/cancel")
    assert (await api.delete("/v1/admin/tenants/search")).status == 204
    assert (await api.get("/v1/admin/tenants/search")).status == 404
    audit = (await api.get("/v1/admin/audit")).body["items"]
    assert audit[0]["action"] == "delete"


async def test_device_plugin_node_takes_whole_gpus_only(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    plugin_only = (
        Node(
            name="g",
            cpu_millis=32_000,
            memory_bytes=64 * GIB,
            gpu_mode=GpuMode.DEVICE_PLUGIN,
            gpu_devices=8,
        ),
    )
    # never_fits uses the api fixture's nodes (which include a shared node), so submit passes;
    # this cycle's cluster has only a device-plugin node, which cannot take a fraction.
    frac = (await api.post("/v1/jobs", json=job("frac", gpu=0.5))).body
    whole = (await api.post("/v1/jobs", json=job("whole", gpu=2))).body
    result = await cycle(engine, plugin_only)
    assert result.admitted == (whole["id"],)
    assert (await api.get(f"/v1/jobs/{frac['id']}")).body["state"] == "queued"
