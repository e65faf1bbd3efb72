"""A gateway shutting down ends its long-lived responses instead of waiting out the grace period
for them: an open event stream (a dashboard tab holds one) ends, and its client can resume."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.backends.nodes_file import StaticInventory
from gateway.domain.scheduling.nodes import Node
from gateway.settings import Settings
from tests import tokens

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
