"""A gateway shutting down ends its long-lived responses instead of waiting out the grace period
for them: an open event stream (a dashboard tab holds one) ends, and its client can resume."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.backends.nodes_file import StaticInventory
from gateway.domain.scheduling.nodes import Node
from gateway.settings import Settings
from tests import pg, tokens
from tests.integration.helpers import create_tenant, job_spec, submit
from tests.openapi_check import CheckedClient

#: Far longer than any test may take: only the streams ending by themselves lets shutdown finish.
GRACE = 3600.0


async def test_shutdown_ends_open_event_streams_at_once(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    app = make_app(settings, engine, StaticInventory(nodes))
    runner = web.AppRunner(app, shutdown_timeout=GRACE)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    headers = {"Authorization": f"Bearer {tokens.admin_token(settings)}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/v1/events?after=now", headers=headers) as stream,
    ):
        assert stream.status == 200
        assert await stream.content.readline() == b"retry: 1000\n"

        await asyncio.wait_for(runner.cleanup(), timeout=60)

        rest = await asyncio.wait_for(stream.content.read(), timeout=10)
        assert b"event:" not in rest  # ended cleanly, nothing half-written
        assert stream.content.at_eof()


async def test_an_event_stream_that_loses_its_database_ends_and_resumes(
    settings: Settings,
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    pg_server: pg.TestServer,
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The backends are terminated, as in a database restart: the open stream ends cleanly (no
    ERROR, nothing half-written), and a client resuming from its last id misses nothing."""
    app = make_app(settings, engine, StaticInventory(nodes))
    async with TestClient(TestServer(app)) as client:
        api = CheckedClient(client, tokens.admin_token(settings))
        await create_tenant(api)
        headers = {"Authorization": f"Bearer {tokens.admin_token(settings)}"}
        first = await submit(api, job_spec("before"))
        async with client.get("/v1/events", headers=headers) as stream:
            last = ""
            while first["id"] not in (line := (await stream.content.readline()).decode()):
                last = line[4:].strip() if line.startswith("id: ") else last
            await pg_server.terminate_backends(urlsplit(database).path.lstrip("/"))
            rest = await asyncio.wait_for(stream.content.read(), timeout=30)
        assert b"event:" not in rest
        second = await submit(api, job_spec("after"))
        async with client.get("/v1/events", headers={**headers, "Last-Event-ID": last}) as resumed:
            seen = ""
            while second["id"] not in seen:
                seen += (await resumed.content.readline()).decode()
        assert first["id"] not in seen  # resumed after its event: nothing repeated
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
