"""Hostile clients against a real ``muster serve``: 200 slow and idle connections are each cut at
their deadline, none before it, while ordinary requests and an event stream keep being served,
and the gateway's file descriptors come back down.

The deadlines are a few seconds, and every bound is checked with slack: the machine is noisy.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tests import pg, rawhttp
from tests.acceptance.gateway_process import GatewayProcess, bearer

HEADER, BODY, KEEPALIVE = 2.0, 2.0, 3.0
LINGER = BODY  # a body left unread is discarded this long (min(10 s, MUSTER_BODY_TIMEOUT))
EARLY = 0.05  # timer and clock granularity
SLACK = 6.0  # how late a close may come on a busy machine
TRICKLE = 0.1  # seconds between two bytes of a slow client

# A node that is down: a submitted job stays queued, whatever the admission loop does.
NODES = 'nodes: [{name: n1, cpu: "8", memory: 32Gi, gpus: 0, ready: false}]\n'
TENANT = {
    "quota": {
        "cpu": "8",
        "memory": "32Gi",
        "gpu": 0,
        "max_running_jobs": 2,
        "max_queued_jobs": 1000,
    }
}


def job(name: str) -> dict[str, object]:
    return {"name": name, "tenant": "acme", "replicas": {"worker": {"image": "trainer:1"}}}


@dataclass(frozen=True, kw_only=True)
class Held:
    """One hostile connection: the gateway may not close it before ``earliest`` and should by
    ``latest`` (from clocks started before the gateway's could), and ``closed`` is when it did."""

    kind: str
    earliest: float
    latest: float
    closed: float


async def idle(host: str, port: int) -> Held:
    """Connects and says nothing: cut at the header deadline."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    connected = time.monotonic()
    try:
        assert await rawhttp.wait_closed(reader) == b""
        return Held(
            kind="idle",
            earliest=start + HEADER,
            latest=connected + HEADER,
            closed=time.monotonic(),
        )
    finally:
        writer.close()


async def slow_header(host: str, port: int) -> Held:
    """Sends a request line, then a header one byte at a time: cut at the header deadline."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    connected = time.monotonic()
    writer.write(b"GET /v1/jobs HTTP/1.1\r\nHost: muster\r\nX-Slow: ")
    dripping = asyncio.create_task(rawhttp.trickle(writer, b"x", TRICKLE))
    try:
        assert await rawhttp.wait_closed(reader) == b""
        return Held(
            kind="slow header",
            earliest=start + HEADER,
            latest=connected + HEADER,
            closed=time.monotonic(),
        )
    finally:
        dripping.cancel()
        writer.close()


async def slow_header_after_keep_alive(host: str, port: int) -> Held:
    """One request, then the next one's headers a byte at a time: cut at the header deadline
    from its first byte (or the keep-alive deadline from the answer, if that is sooner)."""
    reader, writer = await asyncio.open_connection(host, port)
    start = time.monotonic()
    writer.write(rawhttp.request("GET", "/healthz"))
    assert (await rawhttp.read_answer(reader)).status == 200
    first_byte = time.monotonic()
    writer.write(b"GET /v1/jobs HTTP/1.1\r\nHost: muster\r\nX-Slow: ")
    dripping = asyncio.create_task(rawhttp.trickle(writer, b"x", TRICKLE))
    try:
        assert await rawhttp.wait_closed(reader) == b""
        return Held(
            kind="slow header after keep-alive",
            earliest=min(first_byte + HEADER, start + KEEPALIVE),
            latest=first_byte + HEADER,
            closed=time.monotonic(),
        )
    finally:
        dripping.cancel()
        writer.close()


async def idle_after_keep_alive(host: str, port: int) -> Held:
    """One request, then nothing: cut at the keep-alive deadline from the answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        start = time.monotonic()
        writer.write(rawhttp.request("GET", "/healthz"))
        assert (await rawhttp.read_answer(reader)).status == 200
        answered = time.monotonic()
        assert await rawhttp.wait_closed(reader) == b""
        return Held(
            kind="idle after keep-alive",
            earliest=start + KEEPALIVE,
            latest=answered + KEEPALIVE,
            closed=time.monotonic(),
        )
    finally:
        writer.close()


async def _slow_body(host: str, port: int, *, token: bool) -> Held:
    """A submit whose headers promise 1000 bytes that then come one at a time. With a token the
    gateway reads it and answers 408 at the body deadline; without one it answers 401 at once.
    Either way what it has not read is discarded for LINGER more, then the connection closes."""
    reader, writer = await asyncio.open_connection(host, port)
    headers = {"Content-Type": "application/json", "Content-Length": "1000"}
    if token:
        headers.update(bearer())
    start = time.monotonic()
    writer.write(rawhttp.request("POST", "/v1/jobs", headers=headers) + b"{")
    dripping = asyncio.create_task(rawhttp.trickle(writer, b" ", TRICKLE))
    try:
        answer = await rawhttp.read_answer(reader)
        answered = time.monotonic()
        assert answer.status == (408 if token else 401), answer
        assert answer.headers["content-type"].startswith("application/problem+json")
        await rawhttp.wait_closed(reader)
        if token:
            assert answer.headers["connection"] == "close"
            assert answered >= start + BODY - EARLY
        return Held(
            kind="slow body" if token else "slow body, no token",
            earliest=start + (BODY if token else 0) + LINGER,
            latest=answered + LINGER,
            closed=time.monotonic(),
        )
    finally:
        dripping.cancel()
        writer.close()


async def slow_body(host: str, port: int) -> Held:
    return await _slow_body(host, port, token=True)


async def slow_body_without_token(host: str, port: int) -> Held:
    return await _slow_body(host, port, token=False)


Client = Callable[[str, int], Coroutine[Any, Any, Held]]

#: Each kind of hostile client, and how many of it.
KINDS: dict[Client, int] = {
    idle: 34,
    slow_header: 34,
    slow_header_after_keep_alive: 33,
    idle_after_keep_alive: 33,
    slow_body: 33,
    slow_body_without_token: 33,
}


def _descriptors(gateway: GatewayProcess) -> int:
    assert gateway.proc is not None
    return psutil.Process(gateway.proc.pid).num_fds()


async def test_slow_and_idle_connections_are_cut_while_others_are_served(
    pg_server: pg.TestServer, tmp_path: Path
) -> None:
    assert sum(KINDS.values()) == 200
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(NODES)
    gateway = GatewayProcess(
        {
            "MUSTER_DATABASE_URL": pg_server.url_for(await pg_server.create_database()),
            "MUSTER_BACKEND": "static",
            "MUSTER_NODES_FILE": str(nodes),
            "MUSTER_DATA_DIR": str(tmp_path / "data"),
            "MUSTER_HEADER_TIMEOUT": str(HEADER),
            "MUSTER_BODY_TIMEOUT": str(BODY),
            "MUSTER_KEEPALIVE_TIMEOUT": str(KEEPALIVE),
            "MUSTER_MAX_CONNECTIONS": "400",
        }
    )
    try:
        url = gateway.start()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(url, headers=bearer(), timeout=timeout) as http:
            async with http.put("/v1/admin/tenants/acme", json=TENANT) as response:
                assert response.status == 201
            async with http.get("/v1/events?type=submitted") as stream:
                assert stream.status == 200
                baseline = _descriptors(gateway)

                # 1. Ordinary requests run all along; each notes how many hostile connections
                #    were open when it was answered, and the gateway's descriptors then.
                held_open = 0
                seen_open: list[int] = []
                descriptors: list[int] = []
                statuses: list[int] = []
                attack_over = asyncio.Event()

                async def ordinary() -> None:
                    index = 0
                    while not attack_over.is_set():
                        index += 1
                        if index % 2:
                            response = await http.post("/v1/jobs", json=job(f"ok-{index}"))
                        else:
                            response = await http.get("/v1/jobs?tenant=acme&limit=5")
                        async with response:
                            await response.read()
                            statuses.append(response.status)
                        seen_open.append(held_open)
                        descriptors.append(_descriptors(gateway))
                        await asyncio.sleep(0.05)

                # 2. 200 hostile connections, opened 25 at a time (the listen backlog is 128).
                opening = asyncio.Semaphore(25)

                async def hostile(client: Client) -> Held:
                    nonlocal held_open
                    async with opening:
                        task = asyncio.create_task(client(host, int(port)))
                        await asyncio.sleep(0.01)
                    held_open += 1
                    try:
                        return await task
                    finally:
                        held_open -= 1

                serving = asyncio.create_task(ordinary())
                try:
                    async with asyncio.timeout(KEEPALIVE + BODY + LINGER + 30):
                        held = await asyncio.gather(
                            *(hostile(c) for c, count in KINDS.items() for _ in range(count))
                        )
                finally:
                    attack_over.set()
                    await serving

                # 3. Each was cut at its deadline: not before, and not much after.
                for one in held:
                    assert one.earliest - EARLY <= one.closed <= one.latest + SLACK, one

                # 4. Ordinary requests were answered all along, with every hostile one open.
                assert statuses, "no ordinary request was answered"
                assert set(statuses) <= {200, 201}, statuses
                assert max(seen_open) >= 190, seen_open
                assert max(descriptors) >= baseline + 190, (baseline, descriptors)

                # 5. The gateway's descriptors came back down.
                async with asyncio.timeout(10):
                    while _descriptors(gateway) > baseline + 10:  # noqa: ASYNC110 - another process
                        await asyncio.sleep(0.1)

                # 6. The event stream outlived every deadline: it still delivers.
                async with http.post("/v1/jobs", json=job("after")) as response:
                    assert response.status == 201
                    submitted = (await response.json())["id"]
                async with asyncio.timeout(10):
                    while True:
                        line = (await stream.content.readline()).decode()
                        if line.startswith("data: ") and json.loads(line[6:])["job_id"] == (
                            submitted
                        ):
                            break
        assert gateway.stop() == 0
        assert "Traceback" not in gateway.transcript(), gateway.transcript()
    finally:
        gateway.close()
