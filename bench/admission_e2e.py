"""End-to-end admission throughput: submit -> admitted row committed, for N single-pod jobs.

Starts an embedded PostgreSQL and a real ``muster serve`` (static backend, a cluster big enough for
every job), posts N single-pod jobs from this process, and waits until every job is admitted.
Latencies come from the database (admitted_at - created_at), so they measure exactly "submit
committed" to "admission committed".

Two ways of submitting, side by side, each into an empty cluster (a fresh database and gateway):
one job per POST /v1/jobs with ``--concurrency`` requests in flight, and batches of ``--batch``
jobs per POST /v1/jobs:batch with ``--batch-concurrency`` in flight. ``--repeat`` runs each that
many times (the machine may be noisy).

    python bench/admission_e2e.py [--jobs 5000] [--concurrency 32] [--batch 100]
                                  [--batch-concurrency 4] [--repeat 1] [--max-queued 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.engine import make_engine
from gateway.db.migrate import upgrade
from tests.acceptance.gateway_process import GatewayProcess, bearer, write_nodes

QUOTA = {
    "cpu": "100000",
    "memory": "1000Ti",
    "gpu": 0,
    "max_running_jobs": 1000000,
    "max_queued_jobs": 1000000,
}


def job(index: int) -> dict[str, Any]:
    return {
        "name": f"j{index}",
        "tenant": "bench",
        "replicas": {"worker": {"image": "img", "resources": {"cpu": "100m", "memory": "64Mi"}}},
    }


async def submit_singly(
    http: aiohttp.ClientSession, base: str, jobs: int, concurrency: int
) -> None:
    counter = iter(range(jobs))

    async def worker() -> None:
        for index in counter:
            async with http.post(f"{base}/v1/jobs", json=job(index)) as response:
                assert response.status == 201, await response.text()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def submit_batches(
    http: aiohttp.ClientSession, base: str, jobs: int, size: int, concurrency: int
) -> None:
    def chunks() -> Iterator[range]:
        for start in range(0, jobs, size):
            yield range(start, min(start + size, jobs))

    batches = chunks()

    async def worker() -> None:
        for indices in batches:
            body = {"jobs": [{"job": job(index)} for index in indices]}
            async with http.post(f"{base}/v1/jobs:batch", json=body) as response:
                answer = await response.json()
                assert response.status == 200, answer
                assert {item["status"] for item in answer["items"]} == {201}, answer

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run(args: argparse.Namespace, batch: int) -> dict[str, float]:
    """One run into an empty cluster: single submits when ``batch`` is 0, else batches."""
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
            quota = {**QUOTA, "max_queued_jobs": args.max_queued}
            async with http.put(f"{base}/v1/admin/tenants/bench", json={"quota": quota}) as r:
                assert r.status == 201, await r.text()
            started = time.perf_counter()
            if batch:
                await submit_batches(http, base, args.jobs, batch, args.batch_concurrency)
            else:
                await submit_singly(http, base, args.jobs, args.concurrency)
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
    return {
        "submitted": submitted,
        "span": float(stats["span"]),
        "total": total,
        "p50": float(stats["p50"]),
        "p99": float(stats["p99"]),
        "cycles": float(stats["cycles"]),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32, help="single submits in flight")
    parser.add_argument("--batch", type=int, default=100, help="jobs per batch; 0: no batches")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="batches in flight")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each way")
    parser.add_argument(
        "--max-queued",
        type=int,
        default=1000000,
        help="the tenant's max_queued_jobs (a batch searches its free queue slots below it)",
    )
    args = parser.parse_args()

    modes = [0, args.batch] if args.batch else [0]
    results: dict[int, list[dict[str, float]]] = {mode: [] for mode in modes}
    print(
        f"{'submits':>14} {'jobs':>6} {'submit/s':>9} {'admitted/s':>11} {'p50 s':>7} "
        f"{'p99 s':>7} {'cycles':>7} {'wall s':>7}",
        flush=True,
    )
    for _ in range(args.repeat):
        for mode in modes:
            result = await run(args, mode)
            results[mode].append(result)
            way = f"batches of {mode}" if mode else "single"
            print(
                f"{way:>14} {args.jobs:>6} {args.jobs / result['submitted']:>9.0f} "
                f"{args.jobs / result['span']:>11.0f} {result['p50']:>7.3f} {result['p99']:>7.3f} "
                f"{result['cycles']:>7.0f} {result['total']:>7.2f}",
                flush=True,
            )
    if len(modes) == 2:
        # admitted/s is jobs / (first submit -> last admission committed), from the database.
        best = {mode: max(args.jobs / r["span"] for r in results[mode]) for mode in modes}
        print(
            f"end to end, best of {args.repeat}: single {best[0]:.0f} jobs/s, batches of "
            f"{args.batch} {best[args.batch]:.0f} jobs/s ({best[args.batch] / best[0]:.1f}x)"
        )


if __name__ == "__main__":
    asyncio.run(main())
