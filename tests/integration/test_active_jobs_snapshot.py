"""The reconciler reads the active jobs and their placements as of one moment: a cancel that
commits while it reads never shows it a running job without its pods (which made ``decide``
refuse the job and the whole reconcile pass fail)."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db import jobs as job_store
from gateway.db import lifecycle
from gateway.domain.scheduling.nodes import Node
from tests.integration.test_admission_cycle import cycle, job, make_tenant
from tests.openapi_check import CheckedClient

JOBS = 60


async def test_active_jobs_never_shows_a_job_without_its_placements(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api, max_running_jobs=1000, max_queued_jobs=1000, cpu="1000")
    ids = [
        (await api.post("/v1/jobs", json=job(f"j{i}", workers=2))).body["id"] for i in range(JOBS)
    ]
    assert len((await cycle(engine, nodes)).admitted) == JOBS
    torn: list[str] = []
    done = asyncio.Event()

    async def read_while_cancelling() -> None:
        while not done.is_set():
            for active in await lifecycle.active_jobs(engine):
                if len(active.placements) != 2:
                    torn.append(active.id)
            await asyncio.sleep(0)

    async def cancel_all() -> None:
        for job_id in ids:
            await job_store.cancel(engine, job_id, actor="test")
            await asyncio.sleep(0)
        done.set()

    await asyncio.gather(read_while_cancelling(), cancel_all())
    assert torn == []
