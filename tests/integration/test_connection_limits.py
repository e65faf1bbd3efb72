"""Connection limits in process: the cap on open connections, the header deadline of a request
that follows another on a kept-alive connection, and the body deadline's 408.

``tests/acceptance/test_slow_clients.py`` holds 200 hostile connections against ``muster serve``;
these tests look at one rule each, through the same ``GuardedSite``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.api.connections import Connections, GuardedSite
from gateway.backends.nodes_file import StaticInventory
from gateway.domain.scheduling.nodes import Node
from gateway.settings import Settings
from tests import rawhttp, tokens
from tests.integration.helpers import create_tenant, job_spec
from tests.openapi_check import CheckedClient

DEADLINE = 1.0
EARLY = 0.05  # timer and clock granularity
SLACK = 5.0  # how late a close may come on a busy machine


@pytest.fixture
def settings(settings: Settings) -> Settings:
    api = dataclasses.replace(settings.api, header_timeout=DEADLINE, body_timeout=DEADLINE)
    return dataclasses.replace(settings, api=api)


@contextlib.asynccontextmanager
async def guarded(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> AsyncIterator[tuple[int, Connections]]:
    """The application served as ``muster serve`` serves it: its port, and its connections."""
    runner = web.AppRunner(make_app(settings, engine, StaticInventory(nodes)), access_log=None)
    await runner.setup()
    site = GuardedSite(
        runner,
        "127.0.0.1",
        0,
        header_timeout=settings.api.header_timeout,
        max_connections=settings.api.max_connections,
    )
    await site.start()
    try:
        yield runner.addresses[0][1], site.connections
    finally:
        await runner.cleanup()


async def test_beyond_the_cap_a_new_connection_gets_503_while_open_ones_are_served(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    api = dataclasses.replace(settings.api, header_timeout=60.0, max_connections=3)
    capped = dataclasses.replace(settings, api=api)
    bearer = {"Authorization": f"Bearer {tokens.admin_token(settings)}"}
    async with (
        guarded(capped, engine, nodes) as (port, connections),
        contextlib.AsyncExitStack() as held,
    ):
        opened = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            held.callback(writer.close)
            writer.write(rawhttp.request("GET", "/healthz"))
            assert (await rawhttp.read_answer(reader)).status == 200
            opened.append((reader, writer))
        assert connections.open == 3

        # The fourth is answered 503 at once, without a request, and closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        held.callback(writer.close)
        async with asyncio.timeout(SLACK):
            refusal = await rawhttp.read_answer(reader)
            assert await rawhttp.wait_closed(reader) == b""
        assert refusal.status == 503
        assert refusal.headers["content-type"] == "application/problem+json"
        assert refusal.headers["retry-after"] == "1"
        assert refusal.json()["type"] == "https://muster.dev/problems/unavailable"
        assert (connections.open, connections.refused) == (3, 1)

        # The open ones are still served...
        reader, writer = opened[0]
        writer.write(rawhttp.request("GET", "/v1/jobs", headers=bearer))
        assert (await rawhttp.read_answer(reader)).status == 200

        # ... and once one closes, a new connection is accepted.
        opened[1][1].close()
        async with asyncio.timeout(SLACK):
            while connections.open > 2:  # noqa: ASYNC110 - the gateway sees the close
                await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        held.callback(writer.close)
        writer.write(rawhttp.request("GET", "/v1/jobs", headers=bearer))
        assert (await rawhttp.read_answer(reader)).status == 200
        assert connections.refused == 1


async def test_headers_that_arrive_in_pieces_within_the_deadline_are_served(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    async with guarded(settings, engine, nodes) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: muster\r\n", b"\r\n"):
                writer.write(piece)
                await asyncio.sleep(DEADLINE / 4)
            assert (await rawhttp.read_answer(reader)).status == 200
        finally:
            writer.close()


async def test_a_request_after_keep_alive_has_the_header_deadline_from_its_first_byte(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    """Idle, the kept-alive connection waits up to MUSTER_KEEPALIVE_TIMEOUT (75 s here); once
    the next request's first byte is in, its headers have MUSTER_HEADER_TIMEOUT."""
    async with guarded(settings, engine, nodes) as (port, connections):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(rawhttp.request("GET", "/healthz"))
            assert (await rawhttp.read_answer(reader)).status == 200
            await asyncio.sleep(DEADLINE * 1.5)  # idle longer than the header deadline: kept
            first_byte = time.monotonic()
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: mus")
            dripping = asyncio.create_task(rawhttp.trickle(writer, b"t", 0.1))
            async with asyncio.timeout(SLACK + DEADLINE):
                assert await rawhttp.wait_closed(reader) == b""
            dripping.cancel()
            assert time.monotonic() - first_byte >= DEADLINE - EARLY
        finally:
            writer.close()
        async with asyncio.timeout(SLACK):
            while connections.open:  # noqa: ASYNC110 - the gateway sees the close
                await asyncio.sleep(0.01)


async def _dribble(*pieces: bytes, pause: float) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
        await asyncio.sleep(pause)


async def test_a_body_that_arrives_in_pieces_within_the_deadline_is_read(
    api: CheckedClient,
) -> None:
    await create_tenant(api)
    body = json.dumps(job_spec()).encode()
    halves = body[: len(body) // 2], body[len(body) // 2 :]

    response = await api.post(
        "/v1/jobs",
        data=_dribble(*halves, pause=DEADLINE / 4),
        headers={"Content-Type": "application/json"},
    )

    assert response.status == 201, response.text


async def test_a_body_that_trickles_in_is_answered_408_and_the_connection_closed(
    api: CheckedClient,
) -> None:
    await create_tenant(api)
    started = time.monotonic()

    response = await api.post(
        "/v1/jobs",
        data=_dribble(b'{"name": ', pause=60),
        headers={"Content-Type": "application/json"},
    )

    assert response.status == 408
    assert response.body["type"] == "https://muster.dev/problems/request-timeout"
    assert response.headers["Connection"] == "close"
    assert DEADLINE - EARLY <= time.monotonic() - started <= DEADLINE + SLACK
    assert (await api.get("/v1/jobs")).body["items"] == []


async def test_a_client_that_goes_away_mid_body_is_no_server_error(
    settings: Settings,
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp raises ConnectionResetError("Connection lost") to the reader of a body whose client
    hung up: the body reader says 400 (heard by nobody), not the middleware's logged 500."""
    headers = {
        "Authorization": f"Bearer {tokens.admin_token(settings)}",
        "Content-Type": "application/json",
        "Content-Length": "1000",
    }
    with caplog.at_level(logging.DEBUG, logger="gateway.api"):
        async with guarded(settings, engine, nodes) as (port, _):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(rawhttp.request("POST", "/v1/jobs", headers=headers, body=b'{"name": '))
            await writer.drain()
            writer.close()
            async with asyncio.timeout(SLACK):
                while not _answered(caplog):  # noqa: ASYNC110 - until the gateway has answered
                    await asyncio.sleep(0.01)

    assert _answered(caplog)[0].startswith("POST /v1/jobs -> 400"), _answered(caplog)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def _answered(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The observability middleware's one line per request, for POST /v1/jobs."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("POST /v1/jobs ->")]
