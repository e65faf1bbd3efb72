"""The leader SIGKILLed again and again under a steady load, with three replicas on one
database: after every kill another replica takes over, and the promises hold throughout: every
201 is exactly one job, no job is admitted twice, and no quota or node is ever over-committed.

The shortened form of ``bench/chaos.py``'s leader-kill scenario: a kill every 3 s, five times
(the bench: every 10 s for 5 minutes). Each killed replica is started again, as an orchestrator
would restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests import pg
from tests.acceptance.gateway_process import GatewayProcess, bearer, write_nodes
from tests.acceptance.test_two_gateways import (
    AUDIT,
    NODE_CPUS,
    NODES,
    create_tenants,
    finish_some,
    job,
)

pytestmark = pytest.mark.slow

REPLICAS = 3
KILLS = 5
KILL_EVERY = 3.0


async def leader_of(http: aiohttp.ClientSession, gateways: list[GatewayProcess]) -> int | None:
    """The index of the live replica that says it leads, if one does."""
    for index, gateway in enumerate(gateways):
        if gateway.proc is None or gateway.proc.poll() is not None:
            continue
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"{gateway.url}/metrics", timeout=aiohttp.ClientTimeout(2)) as r:
                if "\nmuster_leader 1.0" in "\n" + await r.text():
                    return index
    return None


async def admitted_beyond(conn: asyncpg.Connection, count: int) -> None:
    """Return once more than ``count`` admissions are recorded (polled: they come from other
    processes)."""
    for _ in range(1200):
        if await conn.fetchval("SELECT count(*) FROM job_events WHERE type = 'admitted'") > count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no admission within 60 s of the leader's death")


async def test_the_leader_killed_again_and_again_breaks_no_promise(
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
    }
    gateways = [GatewayProcess(env) for _ in range(REPLICAS)]
    created: list[str] = []
    statuses: dict[str, int] = {}
    audits: list[asyncpg.Record] = []
    recoveries: list[float] = []
    stop = asyncio.Event()
    try:
        await asyncio.gather(*(asyncio.to_thread(g.start) for g in gateways))
        async with aiohttp.ClientSession(headers=bearer()) as http:
            await create_tenants(http, gateways[0].url, max_jobs=10000)

            async def submit_steadily() -> None:
                for index in itertools.count():
                    if stop.is_set():
                        return
                    gateway = gateways[index % REPLICAS]
                    tenant = "alpha" if index % 2 else "beta"
                    try:
                        async with http.post(
                            f"{gateway.url}/v1/jobs", json=job(index, tenant)
                        ) as response:
                            answer: Any = await response.json(content_type=None)
                            key = str(response.status)
                            if response.status == 201:
                                created.append(answer["id"])
                    except aiohttp.ClientConnectionError:
                        key = "a killed replica"  # the client moves on to the next replica
                    statuses[key] = statuses.get(key, 0) + 1
                    await asyncio.sleep(0.03)

            async def kill_leaders(conn: asyncpg.Connection) -> None:
                for _ in range(KILLS):
                    await asyncio.sleep(KILL_EVERY)
                    leader = await leader_of(http, gateways)
                    assert leader is not None, "no replica leads"
                    before = await conn.fetchval(
                        "SELECT count(*) FROM job_events WHERE type = 'admitted'"
                    )
                    killed_at = time.monotonic()
                    gateways[leader].kill()
                    replacement = GatewayProcess(env)
                    starting = asyncio.create_task(asyncio.to_thread(replacement.start))
                    await admitted_beyond(conn, before)  # another replica took over
                    recoveries.append(time.monotonic() - killed_at)
                    await starting
                    gateways[leader] = replacement

            conn = await asyncpg.connect(dsn)
            watcher = await asyncpg.connect(dsn)
            finished = asyncio.Event()  # the finisher frees capacity until the very end
            finisher = asyncio.create_task(finish_some(dsn, finished))
            submitter = asyncio.create_task(submit_steadily())
            killer = asyncio.create_task(kill_leaders(watcher))
            try:
                while not killer.done():
                    async with conn.transaction(isolation="repeatable_read", readonly=True):
                        row = await conn.fetchrow(AUDIT, NODE_CPUS * 1000)
                    audits.append(row)
                    assert row["tenants_over"] == 0, row
                    assert row["nodes_over"] == 0, row
                    assert row["admitted_twice"] == 0, row
                    await asyncio.sleep(0.05)
                await killer
                stop.set()
                await submitter
                # Everything submitted is admitted in the end, once.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    admitted = await conn.fetchval(
                        "SELECT count(DISTINCT job_id) FROM job_events WHERE type = 'admitted' "
                        "AND job_id = ANY($1::uuid[])",
                        created,
                    )
                    if admitted == len(created):
                        break
                    await asyncio.sleep(0.2)
                row = await conn.fetchrow(AUDIT, NODE_CPUS * 1000)
                stored = await conn.fetchval(
                    "SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[])", created
                )
            finally:
                stop.set()
                finished.set()
                for task in (submitter, killer):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, AssertionError):
                        await task
                await finisher
                await conn.close()
                await watcher.close()
        print(
            f"{KILLS} leaders killed; took over and admitted again after "
            f"{', '.join(f'{r:.1f}' for r in recoveries)} s; answers {statuses}"
        )
        assert len(recoveries) == KILLS
        assert len(created) == len(set(created)) == stored
        assert admitted == len(created)
        assert row["admitted_twice"] == 0, row
        assert set(statuses) <= {"201", "a killed replica"}, statuses
        assert len(audits) > 50
    finally:
        for gateway in gateways:
            gateway.kill()
        await pg_server.drop_database(name)
