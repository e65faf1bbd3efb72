"""What the HTTP server refuses before routing (a request line or a header over aiohttp's
limits, malformed HTTP) is answered as problem+json, like every other error: through the site
``muster serve`` listens with."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.api.connections import GuardedSite


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, header_timeout=10, max_connections=16)
    await site.start()
    port = runner.addresses[0][1]
    yield port
    await runner.cleanup()


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /?q=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"y" * 9000 + b"\r\n\r\n",
        b"THIS IS NOT HTTP\r\n\r\n",
    ],
    ids=["request line too long", "header too long", "malformed"],
)
async def test_what_aiohttp_refuses_itself_is_a_problem_document(port: int, raw: bytes) -> None:
    status, headers, body = await exchange(port, raw)
    assert status == 400
    assert headers["content-type"].startswith("application/problem+json")
    problem = json.loads(body)
    assert problem["status"] == 400
    assert problem["type"].endswith("/bad-request")
    assert problem["detail"]


async def test_a_good_request_is_served_as_before(port: int) -> None:
    status, _, body = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert (status, json.loads(body)) == (200, {"ok": True})
