"""Two gateway processes on one database: one leader admits, nothing is admitted twice, no quota
or node is ever over-committed, and when the leader is killed the other takes over."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests import pg
from tests.acceptance.gateway_process import GatewayProcess, bearer, write_nodes

LEADS = "this replica is now the leader"
JOBS = 500
NODES = 4
NODE_CPUS = 8
TENANT_CPUS = {"alpha": 12, "beta": 20}

AUDIT = """
SELECT
  -- no tenant's live placements exceed its CPU quota
  (SELECT count(*) FROM (
      SELECT j.tenant, sum(p.cpu_millis) AS used FROM placements p JOIN jobs j ON j.id = p.job_id
      WHERE p.released_at IS NULL GROUP BY j.tenant) u
   JOIN tenants t ON t.name = u.tenant WHERE u.used > t.quota_cpu_millis) AS tenants_over,
  -- no node holds more than it has
  (SELECT count(*) FROM (
      SELECT node, sum(cpu_millis) AS used FROM placements WHERE released_at IS NULL
      GROUP BY node) n WHERE n.used > $1) AS nodes_over,
  -- no job admitted twice
  (SELECT count(*) FROM (
      SELECT job_id FROM job_events WHERE type = 'admitted' GROUP BY job_id
      HAVING count(*) > 1) d) AS admitted_twice,
  (SELECT count(*) FROM job_events WHERE type = 'admitted') AS admitted
"""


def job(index: int, tenant: str) -> dict[str, Any]:
    return {
        "name": f"j{index}",
        "tenant": tenant,
        "framework": "generic",
        "replicas": {
            "worker": {
                "count": 1 + index % 3,
                "image": "img",
                "resources": {"cpu": "1", "memory": "1Gi"},
            }
        },
    }


async def create_tenants(http: aiohttp.ClientSession, url: str, *, max_jobs: int) -> None:
    """The tenants of TENANT_CPUS, each with its CPU quota and room for ``max_jobs`` jobs."""
    for tenant, cpus in TENANT_CPUS.items():
        quota = {
            "cpu": str(cpus),
            "memory": "1Ti",
            "gpu": 0,
            "max_running_jobs": max_jobs,
            "max_queued_jobs": max_jobs,
        }
        async with http.put(f"{url}/v1/admin/tenants/{tenant}", json={"quota": quota}) as answer:
            assert answer.status == 201


async def finish_some(dsn: str, stop: asyncio.Event) -> None:
    """Stand in for a cluster where jobs end: succeed a few admitted jobs now and then."""
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            async with conn.transaction():
                ids = await conn.fetch(
                    "UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id IN ("
                    "SELECT id FROM jobs WHERE state = 'admitted' ORDER BY random() LIMIT 5"
                    ") RETURNING id"
                )
                await conn.execute(
                    "UPDATE placements SET released_at = now() WHERE job_id = ANY($1::uuid[])",
                    [row["id"] for row in ids],
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        await conn.close()


async def test_two_gateways_admit_each_job_once_within_quota(
    pg_server: pg.TestServer, tmp_path: Path
) -> None:
    name = await pg_server.create_database()
    dsn = pg_server.dsn_for(name)
    nodes = write_nodes(tmp_path / "nodes.yaml", NODES, NODE_CPUS, 64)
    env = {
        "MUSTER_DATABASE_URL": pg_server.url_for(name),
        "MUSTER_BACKEND": "static",
        "MUSTER_NODES_FILE": str(nodes),
        "MUSTER_ADMISSION_INTERVAL": "0.2",
        "MUSTER_DATA_DIR": str(tmp_path / "data"),
        "MUSTER_LOG_LEVEL": "INFO",
    }
    gateways = [GatewayProcess(env), GatewayProcess(env)]
    stop = asyncio.Event()
    audits: list[asyncpg.Record] = []
    try:
        urls = [g.start() for g in gateways]
        async with aiohttp.ClientSession(headers=bearer()) as http:
            await create_tenants(http, urls[0], max_jobs=1000)

            async def submit(index: int) -> int:
                tenant = "alpha" if index % 2 else "beta"
                async with http.post(
                    f"{urls[index % 2]}/v1/jobs", json=job(index, tenant)
                ) as response:
                    return response.status

            statuses = await asyncio.gather(*(submit(i) for i in range(JOBS)))
            assert statuses == [201] * JOBS

        finisher = asyncio.create_task(finish_some(dsn, stop))
        conn = await asyncpg.connect(dsn)
        killed = False
        try:
            deadline = asyncio.get_running_loop().time() + 120
            while asyncio.get_running_loop().time() < deadline:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    row = await conn.fetchrow(AUDIT, NODE_CPUS * 1000)
                audits.append(row)
                assert row["tenants_over"] == 0, row
                assert row["nodes_over"] == 0, row
                assert row["admitted_twice"] == 0, row
                if not killed and row["admitted"] >= JOBS // 3:
                    # Kill the leader, without a chance to clean up.
                    leaders = [g for g in gateways if LEADS in g.transcript()]
                    assert len(leaders) == 1, [g.transcript() for g in gateways]
                    leaders[0].kill()
                    survivor = next(g for g in gateways if g is not leaders[0])
                    killed = True
                if row["admitted"] == JOBS:
                    break
                await asyncio.sleep(0.05)
            assert audits[-1]["admitted"] == JOBS, audits[-1]
        finally:
            stop.set()
            await finisher
            await conn.close()
        assert killed
        assert LEADS in survivor.transcript()  # it took over
        assert survivor.stop() == 0
    finally:
        for gateway in gateways:
            gateway.kill()
        await pg_server.drop_database(name)
    assert len(audits) > 10
