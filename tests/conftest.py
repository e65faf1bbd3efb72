"""Shared fixtures: a real PostgreSQL, a fresh database per test, and the API under test.

Every response the ``api`` client receives is checked against the OpenAPI document (see
``tests/openapi_check.py``), so no test can pass on a response the contract does not describe.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.backends.nodes_file import StaticInventory
from gateway.db.engine import make_engine
from gateway.domain.scheduling.nodes import GpuMode, Node
from gateway.settings import AuthSettings, BackendSettings, DatabaseSettings, Settings
from tests import pg, tokens
from tests.openapi_check import CheckedClient


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.TestServer]:
    yield from pg.start_server()


@pytest.fixture
async def database(pg_server: pg.TestServer) -> AsyncIterator[str]:
    """The SQLAlchemy URL of a new database with the migrated schema, dropped afterwards."""
    name = await pg_server.create_database()
    try:
        yield pg_server.url_for(name)
    finally:
        await pg_server.drop_database(name)


@pytest.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database, pool_size=5)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def issuer_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local issuer's key file, shared by every test of the session."""
    return tokens.shared_key(tmp_path_factory.mktemp("issuer"))


@pytest.fixture
def settings(tmp_path: Path, database: str, issuer_key: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database=DatabaseSettings(url=database),
        backend=BackendSettings(kind="static", nodes_file=tmp_path / "nodes.yaml"),
        auth=AuthSettings(issuer_key=issuer_key),
    )


@pytest.fixture
def nodes() -> tuple[Node, ...]:
    """A small cluster: two CPU nodes, a device-plugin GPU node and a shared GPU node."""
    gib = 2**30
    return (
        Node(name="cpu-0", cpu_millis=64_000, memory_bytes=256 * gib),
        Node(name="cpu-1", cpu_millis=64_000, memory_bytes=256 * gib),
        Node(
            name="gpu-0",
            cpu_millis=32_000,
            memory_bytes=128 * gib,
            gpu_mode=GpuMode.DEVICE_PLUGIN,
            gpu_devices=8,
        ),
        Node(
            name="shared-0",
            cpu_millis=32_000,
            memory_bytes=128 * gib,
            gpu_mode=GpuMode.SHARED,
            gpu_devices=4,
            labels={"muster.dev/gpu-sharing": "true"},
        ),
    )


@pytest.fixture
async def api(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> AsyncIterator[CheckedClient]:
    app = make_app(settings, engine, StaticInventory(nodes))
    async with TestClient(TestServer(app)) as client:
        yield CheckedClient(client, tokens.admin_token(settings))
