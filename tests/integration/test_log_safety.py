"""Hostile requests on a real socket, and what the log says of them, in both formats: one line per
record (a traceback's lines indented), no record a client forged, and no byte of a token.

The requests: encoded line breaks, escape sequences and U+2028 in the path, which one route's
handler puts in a log message and in the message of the exception it fails with (as a handler
that echoes client input in an error would); a token in the path; raw control bytes in the request
line; an over-long ``Authorization`` header that starts with a real token; a token followed by a
control byte (llhttp quotes the whole line); a malformed request line and a bad method.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.backends.nodes_file import StaticInventory
from gateway.domain.scheduling.nodes import Node
from gateway.logs import TRACEBACK_INDENT, ContextFilter, JsonFormatter, TextFormatter
from gateway.settings import Settings
from tests import tokens

FORGED = "2026-01-01 00:00:00,000 INFO gateway.api.access: GET /v1/admin -> 200 in 1.0 ms"
TEXT_RECORD = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
)
# Any line break but \n (which ends each record's lines), and every other control character.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


class Captured(logging.Handler):
    """Every record, formatted as the configured handler would write it."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter)
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []
        self.written: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.written.append(self.format(record))

    @property
    def stream(self) -> str:
        return "".join(f"{entry}\n" for entry in self.written)  # StreamHandler's terminator


@pytest.fixture(params=["text", "json"])
def captured(request: pytest.FixtureRequest) -> Iterator[Captured]:
    handler = Captured(TextFormatter() if request.param == "text" else JsonFormatter())
    root = logging.getLogger()
    chosen = [logging.getLogger("gateway"), logging.getLogger("aiohttp.server")]
    levels = [logger.level for logger in chosen]
    root.addHandler(handler)
    for logger in chosen:
        logger.setLevel(logging.DEBUG)  # the access lines, and aiohttp's bad-method records
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger, level in zip(chosen, levels, strict=True):
            logger.setLevel(level)


async def fails_on_its_path(request: web.Request) -> web.Response:
    """Client text in a log message and in an exception's message."""
    logging.getLogger("gateway.test").warning("cannot serve %s", request.path)
    raise ValueError(f"no such thing: {request.match_info['thing']}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Gateway:
    host: str
    port: int
    token: bytes


@pytest.fixture
async def gateway(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> AsyncIterator[Gateway]:
    app = make_app(settings, engine, StaticInventory(nodes))
    app.router.add_get("/v1/fails/{thing}", fails_on_its_path)
    async with TestServer(app) as server:
        assert server.port is not None
        token = tokens.admin_token(settings).encode()
        yield Gateway(host=server.host, port=server.port, token=token)


async def send(gateway: Gateway, raw: bytes) -> bytes:
    """Write ``raw`` to the gateway's socket; its answer's status line."""
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return answer.split(b"\r\n", 1)[0]


def request(target: bytes, *headers: bytes) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: muster", *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def test_hostile_requests_neither_forge_records_nor_leak_tokens(
    gateway: Gateway, captured: Captured
) -> None:
    bearer = b"Authorization: Bearer " + gateway.token
    forged = quote(f"x\r\n{FORGED}\x1b[2J\u2028\n", safe="").encode()
    answers = [
        await send(gateway, request(b"/v1/fails/" + forged, bearer)),
        await send(gateway, request(b"/v1/fails/" + gateway.token, bearer)),
        await send(gateway, request(b"/v1/jobs/%0D%0A" + forged, bearer)),
        await send(gateway, request(b"/healthz\x1b[2J\x01\x7f\r" + FORGED.encode())),
        await send(gateway, request(b"/healthz", bearer + b"A" * 9000)),  # over 8190 bytes
        await send(gateway, request(b"/healthz", bearer + b"\x01")),
        await send(gateway, request(b"/healthz", bearer + b"\x00")),
        await send(gateway, b"GET /a b c\r\n" + bearer + b"\r\n\r\n"),
        await send(gateway, b"G\x01T /healthz HTTP/1.1\r\n" + bearer + b"\r\n\r\n"),
    ]

    assert answers[:3] == [
        b"HTTP/1.1 500 Internal Server Error",
        b"HTTP/1.1 500 Internal Server Error",
        b"HTTP/1.1 404 Not Found",
    ]
    assert all(answer.endswith(b" 400 Bad Request") for answer in answers[3:])
    stream = captured.stream
    # No token, whole or in part; no raw control character but the records' own line breaks.
    assert "eyJ" not in stream
    for segment in gateway.token.split(b"."):
        assert segment[3:23].decode() not in stream
    assert RAW_CONTROL.search(stream) is None
    # aiohttp's record of each malformed request names the error, not the bytes it quotes.
    refused = [r for r in captured.records if r.name == "aiohttp.server"]
    assert len(refused) == 6
    assert "LineTooLong" in stream
    assert "Authorization" not in stream
    assert "Bearer" not in stream
    assert "GET /a b c" not in stream
    assert "G\\x01T" not in stream
    if isinstance(captured.formatter, JsonFormatter):
        lines = stream.splitlines()  # at every Unicode line boundary
        assert len(lines) == len(captured.records)
        assert all(line.isascii() for line in lines)
        entries = [json.loads(line) for line in lines]
        shown = "\n".join(f"{e['message']}\n{e.get('error', '')}" for e in entries)
        continued = ""  # a traceback is one string
    else:
        lines = stream.splitlines()
        assert lines == stream.split("\n")[:-1]  # \n is the only line break written
        starts = [line for line in lines if TEXT_RECORD.match(line)]
        assert len(starts) == len(captured.records)
        assert all(TEXT_RECORD.match(line) or line.startswith(TRACEBACK_INDENT) for line in lines)
        shown, continued = stream, TRACEBACK_INDENT
    # The handler's records, escaped (a traceback keeps its lines); the paths as sent, still
    # encoded, in the access lines.
    assert f"cannot serve /v1/fails/x\\r\\n{FORGED}\\x1b[2J\\u2028\\n" in shown
    assert f"no such thing: x\\r\n{continued}{FORGED}\\x1b[2J\\u2028\n" in shown
    assert f"GET /v1/fails/{forged.decode()} -> 500" in shown
    assert f"GET /v1/jobs/%0D%0A{forged.decode()} -> 404" in shown
