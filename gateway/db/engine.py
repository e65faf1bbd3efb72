"""The SQLAlchemy async engine, where PostgreSQL's driver errors enter Muster, and the small SQL
helpers every repository shares.

Invariant: a failure of the database itself, rather than of a statement, leaves ``gateway.db`` as
``gateway.errors.DatabaseUnavailable``, raised ``from`` the driver's error, wherever it is met:

1. making a connection (a new pooled one, or the reconnect of an invalidated one): every failure,
   in the engine's ``do_connect`` event; the message names the database, password hidden;
2. checking one out of the pool: a wait past the pool timeout (MUSTER_DATABASE_POOL_TIMEOUT),
   or a failure while the new connection is set up (``_Pool.connect``);
3. a statement run through SQLAlchemy: what ``unavailable`` recognises, in the engine's
   ``handle_error`` event;
4. a statement run on the driver's own connection (``driver_connection``, ``driver_of``): the
   same test; and a connection the driver lost is invalidated, since SQLAlchemy cannot see that
   and would hand it out again, failing one more request for every such connection.

``unavailable`` recognises what asyncpg and SQLAlchemy 2.1 raise when the server goes away, is
restarted, is full or cancels: an ``OSError`` (no socket, connection refused or reset, a timeout);
the SQLSTATE classes 08 (connection exception: ``ConnectionDoesNotExistError``, "connection was
closed in the middle of operation"), 53 (insufficient resources: ``TooManyConnectionsError``, out
of memory, disk full) and 57 (operator intervention: ``AdminShutdownError`` from a shutdown or
``pg_terminate_backend``, ``CannotConnectNowError`` while the server starts or stops,
``QueryCanceledError`` from ``statement_timeout``); any error on a connection that is closed
(``InterfaceError`` "connection is closed", which SQLAlchemy reports as a disconnect); and
SQLAlchemy's wrappings of these (``DBAPIError`` with ``connection_invalidated``, the pool's
``TimeoutError``). Everything else passes through untouched: integrity and data errors above all,
which the repositories turn into ``Conflict`` or ``ValidationFailed`` on purpose.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import orjson
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import Dialect, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolProxiedConnection

from gateway.errors import ConfigError, DatabaseUnavailable, MusterError
from gateway.jsontext import json_text

#: SQLSTATE classes that say the server cannot serve now, not that the statement is wrong.
UNAVAILABLE_CLASSES = frozenset({"08", "53", "57"})
#: How long a checkout waits for a pooled connection by default (``muster serve`` passes
#: MUSTER_DATABASE_POOL_TIMEOUT).
POOL_TIMEOUT = 30.0


def normalize_url(url: str) -> str:
    """Accept ``postgres://``/``postgresql://`` URLs and select the asyncpg driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with little context
        raise ConfigError(f"MUSTER_DATABASE_URL is not a database URL: {exc}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError("MUSTER_DATABASE_URL must point at PostgreSQL")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def make_engine(
    url: str,
    *,
    pool_size: int = 20,
    pool_timeout: float = POOL_TIMEOUT,
    statement_timeout: float = 0.0,
) -> AsyncEngine:
    """The engine every part of Muster uses, with the driver's errors translated as the module
    docstring says. A checkout waits at most ``pool_timeout`` seconds; every statement on its
    connections is cancelled by PostgreSQL after ``statement_timeout`` seconds (0: never), and
    both end as ``DatabaseUnavailable`` (a 503 with Retry-After)."""
    url = normalize_url(url)
    server_settings = (
        {"statement_timeout": str(max(1, round(statement_timeout * 1000)))}
        if statement_timeout > 0
        else {}
    )
    engine = create_async_engine(
        url,
        poolclass=_Pool,
        pool_size=pool_size,
        pool_timeout=pool_timeout,
        connect_args={"server_settings": server_settings} if server_settings else {},
        # No overflow: SQLAlchemy closes an overflow connection when it is returned, and opening
        # one forks a PostgreSQL backend. Under load that churn cost more than queueing for a
        # pooled connection (bench/api.py: 2x fewer submits per second).
        max_overflow=0,
        # No pre-ping: it costs three round trips per checkout. Connections are recycled, and
        # one that broke (a database restart) fails its request with a 503 and is discarded.
        pool_recycle=300,
        # jsonb documents (job specs above all) in and out at orjson's speed.
        json_serializer=json_text,
        json_deserializer=orjson.loads,
        # A statement's parameters never reach an error message (and so a log): they hold
        # webhook secrets and tenants' input.
        hide_parameters=True,
    )
    where = unquote(make_url(url).render_as_string(hide_password=True))

    def connect(
        dialect: Dialect,
        record: ConnectionPoolEntry,
        cargs: tuple[Any, ...],
        cparams: dict[str, Any],
    ) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:  # whatever the reason, there is no database to talk to
            raise DatabaseUnavailable(f"cannot connect to {where}: {_describe(exc)}") from exc

    event.listen(engine.sync_engine, "do_connect", connect)
    event.listen(engine.sync_engine, "handle_error", _statement_failed)
    return engine


def unavailable(exc: BaseException, *, closed: bool = False) -> bool:
    """Whether ``exc``, raised by the driver or by SQLAlchemy around it, means the database cannot
    serve now (see the module docstring); ``closed``: the connection it came from is closed."""
    if not isinstance(exc, Exception) or isinstance(exc, MusterError):
        return False  # cancellation, or already translated
    if closed or isinstance(exc, OSError | sqlalchemy.exc.TimeoutError):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return exc.connection_invalidated or (exc.orig is not None and unavailable(exc.orig))
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in UNAVAILABLE_CLASSES


class _Pool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio queue pool; a checkout that fails for want of a database raises
    ``DatabaseUnavailable`` (step 2 of the module docstring)."""

    def connect(self) -> PoolProxiedConnection:
        try:
            return super().connect()
        except Exception as exc:
            if not unavailable(exc):
                raise
            if isinstance(exc, sqlalchemy.exc.TimeoutError):
                detail = f"no pooled connection came free within {self.timeout():g} s"
            else:
                detail = f"a new connection failed while being set up: {_describe(exc)}"
            raise DatabaseUnavailable(detail) from exc


def _statement_failed(context: ExceptionContext) -> BaseException | None:
    """The ``handle_error`` event: SQLAlchemy raises what this returns ``from`` the driver's
    error, and still invalidates a connection it found lost."""
    if context.is_pre_ping:
        return None  # the pool decides on its own ping's failure
    if not unavailable(context.original_exception, closed=context.is_disconnect):
        return None
    return DatabaseUnavailable(f"a statement failed: {_describe(context.original_exception)}")


def _describe(exc: BaseException) -> str:
    """The driver's own error under SQLAlchemy's adaptations, as ``Type: message``."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


@contextlib.asynccontextmanager
async def driver_of(conn: AsyncConnection) -> AsyncIterator[Any]:
    """The asyncpg connection under ``conn`` (inside ``conn``'s transaction, when a statement has
    begun one), its errors translated as SQLAlchemy's are (step 4 of the module docstring).

    Statements on it outside a transaction commit one by one. SQLAlchemy's dialect has installed
    codecs that make json and jsonb text on the wire: pass ``json.dumps`` strings and cast with
    ``::jsonb``.
    """
    driver: Any = (await conn.get_raw_connection()).driver_connection
    try:
        yield driver
    except Exception as exc:
        closed = bool(driver.is_closed())
        if closed:
            # Back in the pool it would fail the next checkout's first statement too.
            await conn.invalidate(exc)
        if unavailable(exc, closed=closed):
            raise DatabaseUnavailable(f"a statement failed: {_describe(exc)}") from exc
        raise


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled connection as the asyncpg driver's own connection, outside any transaction;
    ``driver_of`` says how its errors leave."""
    async with engine.connect() as conn, driver_of(conn) as driver:
        yield driver
