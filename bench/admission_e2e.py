"""End-to-end admission throughput: submit -> admitted row committed, for N single-pod jobs.

Starts an embedded PostgreSQL and a real ``muster serve`` (static backend, a cluster big enough for
every job), posts N single-pod jobs from this process with fixed concurrency, and waits until every
job is admitted. Latencies come from the database (admitted_at - created_at), so they measure
exactly "submit committed" to "admission committed".

    python bench/admission_e2e.py [--jobs 5000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.engine import make_engine
from gateway.db.migrate import upgrade
from tests.acceptance.gateway_process import GatewayProcess, bearer, write_nodes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mb-", dir="/tmp"))
    embedded = EmbeddedPostgres(root)
    gateway: GatewayProcess | None = None
    try:
        url = await embedded.start()
        engine = make_engine(url, pool_size=1)
        await upgrade(engine)
        await engine.dispose()
        dsn = url.replace("postgresql+asyncpg", "postgresql")
        nodes = write_nodes(root / "nodes.yaml", 200, 64, 256)
        gateway = GatewayProcess(
            {
                "MUSTER_DATABASE_URL": url,
                "MUSTER_BACKEND": "static",
                "MUSTER_NODES_FILE": str(nodes),
                "MUSTER_DATA_DIR": str(root / "data"),
                "MUSTER_LOG_LEVEL": "WARNING",
                "MUSTER_ADMISSION_INTERVAL": "1",
            }
        )
        base = gateway.start()
        async with aiohttp.ClientSession(headers=bearer()) as http:
            quota = {
                "cpu": "100000",
                "memory": "1000Ti",
                "gpu": 0,
                "max_running_jobs": 1000000,
                "max_queued_jobs": 1000000,
            }
            async with http.put(f"{base}/v1/admin/tenants/bench", json={"quota": quota}) as r:
                assert r.status == 201, await r.text()
            counter = iter(range(args.jobs))

            async def worker() -> None:
                for index in counter:
                    body = {
                        "name": f"j{index}",
                        "tenant": "bench",
                        "replicas": {
                            "worker": {
                                "image": "img",
                                "resources": {"cpu": "100m", "memory": "64Mi"},
                            }
                        },
                    }
                    async with http.post(f"{base}/v1/jobs", json=body) as response:
                        assert response.status == 201, await response.text()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            submitted = time.perf_counter() - started
        conn = await asyncpg.connect(dsn)
        try:
            while True:
                admitted = await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'admitted'")
                if admitted == args.jobs:
                    break
                await asyncio.sleep(0.05)
            total = time.perf_counter() - started
            stats = await conn.fetchrow(
                """
                SELECT extract(epoch FROM max(admitted_at) - min(created_at)) AS span,
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY wait) AS p50,
                       percentile_cont(0.99) WITHIN GROUP (ORDER BY wait) AS p99,
                       count(DISTINCT admitted_at) AS cycles
                FROM (SELECT *, extract(epoch FROM admitted_at - created_at) AS wait FROM jobs) j
                """
            )
        finally:
            await conn.close()
    finally:
        if gateway is not None:
            gateway.stop()
        await embedded.stop()
        shutil.rmtree(root, ignore_errors=True)

    span = float(stats["span"])
    print(
        f"{'jobs':>8} {'submit/s':>10} {'admitted/s':>11} {'p50 s':>8} {'p99 s':>8} {'cycles':>7}"
    )
    print(
        f"{args.jobs:>8} {args.jobs / submitted:>10.0f} {args.jobs / span:>11.0f} "
        f"{float(stats['p50']):>8.3f} {float(stats['p99']):>8.3f} {stats['cycles']:>7}"
    )
    print(
        f"first submit -> last admission committed: {span:.2f} s "
        f"(wall clock incl. polling: {total:.2f} s)"
    )


if __name__ == "__main__":
    asyncio.run(main())
