"""The SQLAlchemy async engine and the small SQL helpers every repository shares."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.errors import ConfigError


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


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        normalize_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs three round trips per checkout. Connections are recycled, and
        # one that broke (a database restart) fails its request with a 503 and is discarded.
        pool_recycle=300,
    )
