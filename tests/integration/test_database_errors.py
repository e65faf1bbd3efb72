"""PostgreSQL's failures leave ``gateway.db`` as ``DatabaseUnavailable``, on both roads a statement
takes (SQLAlchemy, and the asyncpg connection under it), and nothing else does.

Each case is what SQLAlchemy 2.1 and asyncpg really raise against a real server; the table at the
top holds the same errors as values, for the cases a shared test server cannot stage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db import engine as engine_module
from gateway.db.engine import driver_connection, make_engine, unavailable
from gateway.errors import DatabaseUnavailable, NotFound
from tests import pg


def _name(url: str) -> str:
    return make_url(url).database or ""


def _causes(exc: BaseException) -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    current: BaseException | None = exc
    while current is not None:
        found.append(type(current))
        current = current.__cause__
    return found


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # The server went away, is going or coming, is full, or cancelled the statement.
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle"), True),
        (asyncpg.AdminShutdownError("terminating connection due to administrator"), True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.TooManyConnectionsError("sorry, too many clients already"), True),
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), True),
        (ConnectionRefusedError("connection refused"), True),
        (FileNotFoundError(2, "No such file or directory"), True),
        (sqlalchemy.exc.TimeoutError("QueuePool limit of size 1 overflow 0 reached"), True),
        # The statement or its rows: the repositories handle these, on purpose.
        (asyncpg.UniqueViolationError("duplicate key value"), False),
        (asyncpg.ForeignKeyViolationError("violates foreign key constraint"), False),
        (asyncpg.CheckViolationError("violates check constraint"), False),
        (asyncpg.SerializationError("could not serialize access"), False),
        (asyncpg.DataError("invalid input for query argument"), False),
        (asyncpg.InterfaceError("another operation is in progress"), False),
        (asyncpg.UndefinedTableError('relation "nope" does not exist'), False),
        # Already translated, or no error at all but a cancellation.
        (NotFound("no such job"), False),
        (asyncio.CancelledError(), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_unavailable_tells_the_server_from_the_statement(
    error: BaseException, expected: bool
) -> None:
    assert unavailable(error) is expected


def test_any_error_on_a_closed_connection_is_unavailable() -> None:
    assert unavailable(asyncpg.InterfaceError("connection is closed"), closed=True)


@pytest.fixture
async def small(database: str) -> AsyncIterator[AsyncEngine]:
    """An engine with one pooled connection, so the next checkout is the connection just used."""
    engine = make_engine(database, pool_size=1)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _select(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT 1"))


async def _driver_select(engine: AsyncEngine) -> Any:
    async with driver_connection(engine) as conn:
        return await conn.fetchval("SELECT 1")


ROADS = {"sqlalchemy": _select, "driver": _driver_select}


@pytest.mark.parametrize("road", sorted(ROADS))
async def test_a_pooled_connection_the_server_ended_is_unavailable_once(
    pg_server: pg.TestServer, database: str, small: AsyncEngine, road: str
) -> None:
    select = ROADS[road]
    assert await select(small) == 1
    assert await pg_server.terminate_backends(_name(database)) == 1

    with pytest.raises(DatabaseUnavailable) as raised:
        await select(small)
    # asyncpg has seen the connection close: InterfaceError("connection is closed"), on
    # SQLAlchemy's road under its adapted InterfaceError. (Had the statement been sent before
    # asyncpg noticed, the server's FATAL 57P01 would answer it instead.)
    assert _causes(raised.value)[-1] in (asyncpg.InterfaceError, asyncpg.AdminShutdownError)
    # The lost connection was discarded, not handed out again: the next statement gets a new one.
    assert await select(small) == 1


@pytest.mark.parametrize("road", sorted(ROADS))
async def test_a_connection_ended_mid_statement_is_unavailable(
    pg_server: pg.TestServer, database: str, small: AsyncEngine, road: str
) -> None:
    async def sleep() -> None:
        if road == "driver":
            async with driver_connection(small) as conn:
                await conn.execute("SELECT pg_sleep(30)")
        else:
            async with small.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(30)"))

    sleeping = asyncio.create_task(sleep())
    async with pg_server.admin() as admin:
        for _ in range(500):  # until the statement runs
            await asyncio.sleep(0.01)
            running = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' "
                "AND query LIKE 'SELECT pg_sleep%'",
                _name(database),
            )
            if running:
                break
    assert await pg_server.terminate_backends(_name(database)) == 1
    with pytest.raises(DatabaseUnavailable) as raised:
        await sleeping
    # ConnectionDoesNotExistError("connection was closed in the middle of operation"), caused by
    # the server's AdminShutdownError (57P01); on SQLAlchemy's road under a DBAPIError.
    causes = _causes(raised.value)
    assert asyncpg.ConnectionDoesNotExistError in causes
    assert await ROADS[road](small) == 1


async def _timed_out(engine: AsyncEngine, road: str) -> None:
    """A statement that outlives its transaction's statement_timeout."""
    if road == "driver":
        async with driver_connection(engine) as conn, conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 50")
            await conn.execute("SELECT pg_sleep(5)")
    else:
        async with engine.begin() as conn:
            await conn.execute(text("SET LOCAL statement_timeout = 50"))
            await conn.execute(text("SELECT pg_sleep(5)"))


@pytest.mark.parametrize("road", sorted(ROADS))
async def test_a_statement_timeout_is_unavailable(small: AsyncEngine, road: str) -> None:
    with pytest.raises(DatabaseUnavailable) as raised:
        await _timed_out(small, road)
    assert _causes(raised.value)[-1] is asyncpg.QueryCanceledError
    assert await ROADS[road](small) == 1  # the connection itself was fine


async def test_integrity_errors_pass_through_untranslated(small: AsyncEngine) -> None:
    async with small.begin() as conn:
        await conn.execute(text("CREATE TEMP TABLE once (x int PRIMARY KEY) ON COMMIT DROP"))
        await conn.execute(text("INSERT INTO once VALUES (1)"))
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            async with conn.begin_nested():
                await conn.execute(text("INSERT INTO once VALUES (1)"))
    async with driver_connection(small) as conn:
        await conn.execute("CREATE TEMP TABLE twice (x int PRIMARY KEY)")
        await conn.execute("INSERT INTO twice VALUES (1)")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO twice VALUES (1)")
        assert await conn.fetchval("SELECT count(*) FROM twice") == 1  # still the same session


@pytest.mark.parametrize("road", sorted(ROADS))
async def test_a_wait_for_a_pooled_connection_that_times_out_is_unavailable(
    database: str, monkeypatch: pytest.MonkeyPatch, road: str
) -> None:
    monkeypatch.setattr(engine_module, "POOL_TIMEOUT", 0.1)
    engine = make_engine(database, pool_size=1)
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            with pytest.raises(
                DatabaseUnavailable, match="no pooled connection came free"
            ) as raised:
                await ROADS[road](engine)
        assert _causes(raised.value)[1] is sqlalchemy.exc.TimeoutError
    finally:
        await engine.dispose()


REFUSALS = {
    "starting-up": ("57P03", "the database system is starting up", asyncpg.CannotConnectNowError),
    "shutting-down": (
        "57P03",
        "the database system is shutting down",
        asyncpg.CannotConnectNowError,
    ),
    "too-many-clients": (
        "53300",
        "sorry, too many clients already",
        asyncpg.TooManyConnectionsError,
    ),
}


@pytest.mark.parametrize("road", sorted(ROADS))
@pytest.mark.parametrize("refusal", sorted(REFUSALS))
async def test_a_server_that_refuses_the_connection_is_unavailable(refusal: str, road: str) -> None:
    sqlstate, message, driver_error = REFUSALS[refusal]
    async with pg.refusing_server(sqlstate, message) as url:
        engine = make_engine(url, pool_size=1)
        try:
            with pytest.raises(DatabaseUnavailable, match=message) as raised:
                await ROADS[road](engine)
        finally:
            await engine.dispose()
    assert _causes(raised.value)[-1] is driver_error
    assert "secret" not in str(raised.value)  # the message names the database, not its password


@pytest.mark.parametrize("road", sorted(ROADS))
async def test_nothing_listening_is_unavailable(road: str) -> None:
    engine = make_engine(pg.closed_port_url(), pool_size=1)
    try:
        with pytest.raises(DatabaseUnavailable, match="cannot connect to") as raised:
            await ROADS[road](engine)
    finally:
        await engine.dispose()
    assert _causes(raised.value)[-1] is ConnectionRefusedError


async def test_a_role_over_its_connection_limit_is_unavailable(
    pg_server: pg.TestServer, database: str
) -> None:
    """The real server's too_many_connections (53300), for a role allowed no connection."""
    role = f"limited_{_name(database)}"
    async with pg_server.admin() as admin:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'limited' CONNECTION LIMIT 0")
    try:
        url = make_url(database).set(username=role, password="limited")
        engine = make_engine(url.render_as_string(hide_password=False), pool_size=1)
        try:
            with pytest.raises(DatabaseUnavailable, match="too many connections") as raised:
                await _select(engine)
        finally:
            await engine.dispose()
        assert _causes(raised.value)[-1] is asyncpg.TooManyConnectionsError
    finally:
        async with pg_server.admin() as admin:
            await admin.execute(f"DROP ROLE {role}")
