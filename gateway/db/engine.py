"""The SQLAlchemy async engine and the small SQL helpers every repository shares."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.errors import ConfigError
from gateway.jsontext import json_text


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


def make_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    return create_async_engine(
        normalize_url(url),
        pool_size=pool_size,
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


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled connection as the asyncpg driver's own connection, outside any transaction.

    Statements on it commit one by one. SQLAlchemy's dialect has installed codecs that make
    json and jsonb text on the wire: pass ``json.dumps`` strings and cast with ``::jsonb``.
    """
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        yield raw.driver_connection
