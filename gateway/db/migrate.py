"""Apply and inspect alembic migrations from inside the running gateway.

Invariant: migrations always run on a connection Muster hands to alembic, in one transaction that
holds an advisory lock (see ``migrations/env.py``), so concurrent starts are safe.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine


def migrations_dir() -> Path:
    """Where the migration scripts live: ``migrations/`` in a checkout, shipped in the wheel."""
    return Path(str(resources.files("gateway.migrations")))


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _downgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``, with no statement timeout (a migration of a large
    table may take longer than any request should)."""
    async with engine.begin() as connection:
        await connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
        await connection.run_sync(_upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Undo migrations down to ``revision``, with no statement timeout (as ``upgrade``)."""
    async with engine.begin() as connection:
        await connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
        await connection.run_sync(_downgrade, revision)
