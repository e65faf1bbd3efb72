"""A slow or stuck database sheds load: a request waits a bounded time for a pooled connection,
a statement runs a bounded time, and either way the answer is a 503 with Retry-After, after
which the gateway serves again by itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.backends.nodes_file import StaticInventory
from gateway.db.engine import make_engine
from gateway.domain.scheduling.nodes import Node
from gateway.settings import Settings
from tests import tokens
from tests.openapi_check import CheckedClient, Response


@pytest.fixture
async def tight_engine(database: str) -> AsyncIterator[AsyncEngine]:
    """Two pooled connections, a half-second wait for one, a half-second statement limit."""
    engine = make_engine(database, pool_size=2, pool_timeout=0.5, statement_timeout=0.5)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def shedding(
    settings: Settings, tight_engine: AsyncEngine, nodes: tuple[Node, ...]
) -> AsyncIterator[CheckedClient]:
    app = make_app(settings, tight_engine, StaticInventory(nodes))
    async with TestClient(TestServer(app)) as client:
        yield CheckedClient(client, tokens.admin_token(settings))


def assert_shed(response: Response) -> None:
    assert response.status == 503, response.text
    assert response.headers["Retry-After"].isdigit()
    assert response.content_type == "application/problem+json"


async def test_a_statement_stuck_behind_a_lock_is_cancelled_and_answered_503(
    shedding: CheckedClient, engine: AsyncEngine
) -> None:
    assert (await shedding.get("/v1/jobs")).status == 200
    async with engine.connect() as blocker:
        await blocker.execute(text("BEGIN"))
        await blocker.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
        assert_shed(await shedding.get("/v1/jobs"))
        await blocker.execute(text("ROLLBACK"))
    assert (await shedding.get("/v1/jobs")).status == 200


async def test_a_request_that_finds_no_free_connection_is_answered_503(
    shedding: CheckedClient, tight_engine: AsyncEngine
) -> None:
    async with tight_engine.connect() as first, tight_engine.connect() as second:
        await first.execute(text("SELECT 1"))
        await second.execute(text("SELECT 1"))
        assert_shed(await shedding.get("/v1/jobs"))
    assert (await shedding.get("/v1/jobs")).status == 200


async def test_migrations_run_without_the_statement_limit(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.db import migrate

    plain = make_engine(database)
    tight = make_engine(database, statement_timeout=0.2)
    real_upgrade = migrate._upgrade

    def slow_upgrade(connection: Any, revision: str) -> None:
        connection.exec_driver_sql("SELECT pg_sleep(0.5)")  # longer than the limit
        real_upgrade(connection, revision)

    monkeypatch.setattr(migrate, "_upgrade", slow_upgrade)
    try:
        async with tight.connect() as conn:
            assert await conn.scalar(text("SHOW statement_timeout")) == "200ms"
        await migrate.downgrade(plain, "base")
        await migrate.upgrade(tight)
        async with tight.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM sign_in_codes")) == 0
    finally:
        await tight.dispose()
        await plain.dispose()
