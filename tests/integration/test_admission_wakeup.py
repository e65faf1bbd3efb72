"""The admission loop wakes on a submit's NOTIFY, not only on its timer."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.backends.nodes_file import StaticInventory
from gateway.domain.scheduling.nodes import Node
from gateway.loops.admission import AdmissionLoop
from tests.integration.test_admission_cycle import job, make_tenant
from tests.openapi_check import CheckedClient


async def test_submit_wakes_the_leader_long_before_its_timer(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api)
    loop = AdmissionLoop(engine, StaticInventory(nodes), interval=600, starvation_seconds=300)
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(10):
            while loop.cycles < 1:  # noqa: ASYNC110 - the first cycle runs once it leads
                await asyncio.sleep(0.01)
        created = (await api.post("/v1/jobs", json=job("woken"))).body
        async with asyncio.timeout(10):  # the timer would take 600 s
            while (await api.get(f"/v1/jobs/{created['id']}")).body["state"] != "admitted":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert loop.leadership.is_leader
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not loop.leadership.is_leader
