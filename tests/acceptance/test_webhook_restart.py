"""A gateway killed (SIGKILL) after a job finished and before its webhook was delivered: once a
gateway runs again, the event is delivered. Nothing is lost; a retry repeats the webhook-id."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web
from standardwebhooks import Webhook

from tests import pg
from tests.acceptance.gateway_process import GatewayProcess, bearer, write_nodes

QUOTA = {"cpu": "8", "memory": "32Gi", "gpu": 0, "max_running_jobs": 5, "max_queued_jobs": 5}
TIMEOUT = 1.0  # MUSTER_WEBHOOK_TIMEOUT: the lease the dead gateway left runs out 11 s later


async def test_an_event_survives_a_gateway_killed_while_delivering_it(
    pg_server: pg.TestServer, tmp_path: Path
) -> None:
    first_request = asyncio.Event()
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        if len(received) == 1:
            first_request.set()
            await asyncio.sleep(3600)  # never answers: the gateway dies waiting
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    name = await pg_server.create_database()
    env = {
        "MUSTER_DATABASE_URL": pg_server.url_for(name),
        "MUSTER_BACKEND": "static",
        "MUSTER_NODES_FILE": str(write_nodes(tmp_path / "nodes.yaml", 1, 8, 32)),
        "MUSTER_DATA_DIR": str(tmp_path / "data"),
        "MUSTER_WEBHOOK_ALLOW_HTTP": "true",
        "MUSTER_WEBHOOK_ALLOW_NETS": "127.0.0.1/32",
        "MUSTER_WEBHOOK_TIMEOUT": str(TIMEOUT),
    }
    first, second = GatewayProcess(env), GatewayProcess(env)
    try:
        url = await asyncio.to_thread(first.start)
        async with aiohttp.ClientSession(headers=bearer()) as http:
            async with http.put(f"{url}/v1/admin/tenants/acme", json={"quota": QUOTA}) as r:
                assert r.status == 201, await r.text()
            job = {
                "name": "train",
                "tenant": "acme",
                "replicas": {"worker": {"image": "trainer:1"}},
                "callback": {"url": f"http://127.0.0.1:{port}/hook"},
            }
            async with http.post(f"{url}/v1/jobs", json=job) as r:
                assert r.status == 201, await r.text()
                job_id = (await r.json())["id"]
            async with http.post(f"{url}/v1/jobs/{job_id}/cancel") as r:
                assert r.status == 200, await r.text()

            await asyncio.wait_for(first_request.wait(), 30)
            await asyncio.to_thread(first.kill)  # mid-delivery: no answer was recorded

            conn = await asyncpg.connect(pg_server.dsn_for(name))
            try:
                secret = await conn.fetchval("SELECT webhook_secret FROM tenants")
                status = await conn.fetchval("SELECT status FROM webhook_outbox")
                assert status == "pending"

                url = await asyncio.to_thread(second.start)
                for _ in range(300):  # the lease runs out after TIMEOUT + 10 s
                    if await conn.fetchval("SELECT status FROM webhook_outbox") == "delivered":
                        break
                    await asyncio.sleep(0.2)
            finally:
                await conn.close()
            async with http.get(f"{url}/v1/jobs/{job_id}/deliveries") as r:
                (delivery,) = (await r.json())["items"]
        assert await asyncio.to_thread(second.stop) == 0
    finally:
        first.kill()
        second.kill()
        await runner.cleanup()
        await pg_server.drop_database(name)

    assert len(received) == 2, [h["webhook-id"] for h, _ in received]
    assert {h["webhook-id"] for h, _ in received} == {delivery["webhook_id"]}
    for headers, body in received:
        assert Webhook(secret).verify(body, headers)["type"] == "job.cancelled"
    assert delivery["status"] == "delivered"
    # The killed gateway's attempt was never recorded; the second gateway's was.
    assert [(a["number"], a["status_code"]) for a in delivery["attempts"]] == [(2, 204)]
