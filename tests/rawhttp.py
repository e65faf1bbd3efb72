"""HTTP/1.1 over a bare socket, for tests that play clients no HTTP library would be: ones that
connect and say nothing, send their headers a byte at a time, or trickle a body."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """A whole request; ``Content-Length`` is the body's unless ``headers`` names another."""
    fields = {"Host": "muster", **(headers or {})}
    if body or method in {"POST", "PUT", "PATCH"}:
        fields.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (head + "\r\n").encode() + body


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One response with a Content-Length (as every answer of the gateway's but a stream has)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(status=int(status_line.split()[1]), headers=headers, body=body)


async def wait_closed(reader: asyncio.StreamReader) -> bytes:
    """Whatever the server still sends, until it closes the connection (EOF or reset)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(65536):
            received += chunk
    return received


async def trickle(writer: asyncio.StreamWriter, byte: bytes, every: float) -> None:
    """Send ``byte`` every ``every`` seconds until cancelled or the connection breaks."""
    with contextlib.suppress(ConnectionError):
        while not writer.is_closing():
            await asyncio.sleep(every)
            writer.write(byte)
            await writer.drain()
