"""Webhook delivery rate: N job completions -> N signed deliveries to a local receiver.

    python bench/webhooks.py                      # 1,000 jobs, 2 gateways
    python bench/webhooks.py --jobs 5000 --gateways 3
    python bench/webhooks.py --database-url postgresql://...   # a scratch database instead

Starts an embedded PostgreSQL (unless ``--database-url``) and ``--gateways`` real ``muster serve``
processes (static backend) that share it, so their delivery loops compete for the same outbox.
This process runs the receiver (aiohttp on 127.0.0.1, answering 204 and verifying every delivery
with the ``standardwebhooks`` package) and plays the cluster: it submits N jobs whose callback
wants ``job.succeeded``, waits until the gateways admitted them all, then writes each job's
success through ``gateway.db.lifecycle.apply``, exactly as a reconciler does (state, event and
outbox row in one transaction).

Two phases of N completions each:

1. live: the gateways run while the completions are written; the rate is N over the time from
   the first completion to the last event received (bounded by how fast completions come), and
   the latency is from a completion's commit to its delivery (p50, p99, max);
2. backlog: the completions are written while no gateway runs (as after an outage), then fresh
   gateways start; the rate is N over the time from the first to the last event received.

Then it counts attempts, duplicates (a webhook-id received more than once) and failed
verifications. Goal: every event delivered exactly once, none failing verification.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import asyncpg
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.db import lifecycle
from gateway.db.embedded import EmbeddedPostgres
from gateway.db.engine import make_engine, normalize_url
from gateway.db.migrate import upgrade
from gateway.domain.lifecycle.decisions import Decision, Reason
from gateway.domain.lifecycle.states import JobState
from tests.acceptance.gateway_process import GatewayProcess, bearer, write_nodes

QUOTA = {
    "cpu": "100000",
    "memory": "1000Ti",
    "gpu": 0,
    "max_running_jobs": 1000000,
    "max_queued_jobs": 1000000,
}
SUCCEEDED = Decision(transition=JobState.SUCCEEDED, reason=Reason.WORKER0_SUCCEEDED, message="ok")


class Receiver:
    def __init__(self) -> None:
        self.secret = ""
        self.ids: Counter[str] = Counter()
        self.unverified = 0
        self.first = 0.0  # the first delivery of the current phase
        self.last = 0.0
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.unverified += 1
        self.ids[request.headers["webhook-id"]] += 1
        self.last = time.perf_counter()
        self.first = self.first or self.last
        return web.Response(status=204)


def _latencies(rows: list[asyncpg.Record]) -> str:
    waits = sorted(float(row["wait"]) for row in rows)
    if not waits:
        return "-"
    p50 = statistics.median(waits)
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
    return f"p50 {p50 * 1000:6.0f} ms  p99 {p99 * 1000:6.0f} ms  max {waits[-1] * 1000:6.0f} ms"


async def _until(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll (the database, the receiver) until ``predicate`` holds; two minutes at most."""
    for _ in range(12_000):
        if await predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the bench waited two minutes for something that did not happen")


async def run(args: argparse.Namespace, url: str, root: Path) -> None:
    engine = make_engine(url, pool_size=20)
    await upgrade(engine)
    dsn = url.replace("postgresql+asyncpg", "postgresql")
    receiver = Receiver()
    await receiver.start()
    nodes = write_nodes(root / "nodes.yaml", 100, 64, 256)
    env = {
        "MUSTER_DATABASE_URL": url,
        "MUSTER_BACKEND": "static",
        "MUSTER_NODES_FILE": str(nodes),
        "MUSTER_DATA_DIR": str(root / "data"),
        "MUSTER_LOG_LEVEL": "WARNING",
        "MUSTER_ADMISSION_INTERVAL": "0.5",
        "MUSTER_WEBHOOK_ALLOW_HTTP": "true",
        "MUSTER_WEBHOOK_ALLOW_NETS": "127.0.0.1/32",
    }
    gateways = [GatewayProcess(env) for _ in range(args.gateways)]
    conn = await asyncpg.connect(dsn)
    rows: list[tuple[str, float, float, int, str]] = []

    async def complete(jobs: list[lifecycle.ActiveJob]) -> float:
        """Write each job's success as a reconciler does, from concurrent writers."""
        todo = iter(jobs)

        async def writer() -> None:
            for job in todo:
                assert await lifecycle.apply(engine, job, SUCCEEDED, time.time())

        began = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(args.writers)))
        return time.perf_counter() - began

    async def delivered(count: int) -> bool:
        return len(receiver.ids) >= count

    try:
        bases = [await asyncio.to_thread(g.start) for g in gateways]
        async with aiohttp.ClientSession(headers=bearer()) as http:
            async with http.put(f"{bases[0]}/v1/admin/tenants/bench", json={"quota": QUOTA}) as r:
                assert r.status == 201, await r.text()
            counter = iter(range(2 * args.jobs))

            async def submit() -> None:
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
                        "callback": {
                            "url": f"http://127.0.0.1:{receiver.port}/hook",
                            "events": ["job.succeeded"],
                        },
                    }
                    async with http.post(f"{bases[index % len(bases)]}/v1/jobs", json=body) as r:
                        assert r.status == 201, await r.text()

            await asyncio.gather(*(submit() for _ in range(16)))
        receiver.secret = await conn.fetchval("SELECT webhook_secret FROM tenants")

        async def all_admitted() -> bool:
            admitted = await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'admitted'")
            return bool(admitted == 2 * args.jobs)

        await _until(all_admitted)
        active = await lifecycle.active_jobs(engine)
        live, backlog = active[: args.jobs], active[args.jobs :]

        # 1. Live: the gateways deliver while the completions are being written.
        began = time.perf_counter()
        written = await complete(live)
        await _until(lambda: delivered(args.jobs))
        rows.append(("live", written, receiver.last - began, args.jobs, ""))

        # 2. Backlog: completions written while no gateway runs, then drained by fresh ones.
        for gateway in gateways:
            await asyncio.to_thread(gateway.stop)
        gateways = [GatewayProcess(env) for _ in range(args.gateways)]
        written = await complete(backlog)
        receiver.first = 0.0
        await asyncio.gather(*(asyncio.to_thread(g.start) for g in gateways))
        await _until(lambda: delivered(2 * args.jobs))
        rows.append(("backlog", written, receiver.last - receiver.first, args.jobs, ""))
        await asyncio.sleep(1.0)  # let stragglers (duplicates) arrive
        stats = await conn.fetchrow(
            """
            SELECT count(*) FILTER (WHERE status = 'delivered') AS delivered,
                   (SELECT count(*) FROM webhook_attempts) AS attempts
            FROM webhook_outbox
            """
        )
        live_ids = [job.id for job in live]
        latency = _latencies(
            await conn.fetch(
                "SELECT extract(epoch FROM delivered_at - created_at) AS wait FROM webhook_outbox "
                "WHERE job_id = ANY($1::uuid[])",
                live_ids,
            )
        )
    finally:
        await conn.close()
        for gateway in gateways:
            await asyncio.to_thread(gateway.close)
        if receiver.runner is not None:
            await receiver.runner.cleanup()
        await engine.dispose()

    received = sum(receiver.ids.values())
    print(
        f"{args.gateways} gateways, {args.jobs} completions per phase, "
        f"{args.writers} completion writers"
    )
    print(f"{'phase':<10}{'written in':>12}{'delivered in':>14}{'delivered/s':>13}")
    for name, written, took, count, _ in rows:
        print(f"{name:<10}{written:>10.2f} s{took:>12.2f} s{count / took:>13.0f}")
    print(f"live: completion committed -> delivered  {latency}")
    print(
        f"outbox rows delivered {stats['delivered']} of {2 * args.jobs}, "
        f"attempts {stats['attempts']}, duplicates {received - len(receiver.ids)}, "
        f"failed verification {receiver.unverified}"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--writers", type=int, default=8, help="concurrent completion writers")
    parser.add_argument("--database-url", help="a scratch PostgreSQL instead of an embedded one")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mw-", dir="/tmp"))
    embedded: EmbeddedPostgres | None = None
    try:
        if args.database_url:
            url = normalize_url(args.database_url)
        else:
            embedded = EmbeddedPostgres(root)
            url = await embedded.start()
        await run(args, url, root)
    finally:
        if embedded is not None:
            await embedded.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
