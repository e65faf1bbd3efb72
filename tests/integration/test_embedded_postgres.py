"""The embedded PostgreSQL asks every connection for a password, and only the gateway has it.

Each test starts a server of its own in a fresh data directory (a second or two each).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.db import embedded
from gateway.db.embedded import EmbeddedPostgres


@pytest.fixture
async def data_dir() -> AsyncIterator[Path]:
    # Short: the server's socket lives in its data directory.
    path = Path(tempfile.mkdtemp(prefix="ep-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _on_disk(data_dir: Path) -> tuple[str, int, int, set[str]]:
    """The password, its file's mode, the data directory's mode, and pg_hba.conf's methods."""
    password_file = data_dir / "postgres-password"
    hba = (data_dir / "postgres" / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    return (
        password_file.read_text().strip(),
        password_file.stat().st_mode & 0o777,
        data_dir.stat().st_mode & 0o777,
        {rule[-1] for rule in rules},
    )


def _trusting_server(data_dir: Path) -> None:
    """A data directory as an earlier Muster left it: initdb'd to trust the socket."""
    user = embedded._system_user()
    install = embedded._reachable_install(data_dir, user)
    pgdata = data_dir / "postgres"
    pgdata.mkdir(mode=0o700)
    if user is not None:
        os.chown(data_dir, -1, user.gid)
        data_dir.chmod(0o710)
        os.chown(pgdata, user.uid, user.gid)
    embedded._run(
        install / "bin" / "initdb", user, "-D", str(pgdata), "-U", "postgres", "--auth=trust"
    )


def _start_trusting(server: EmbeddedPostgres) -> None:
    """Start the server as it is (trusting), without the hardening a real start does."""
    user = embedded._system_user()
    install = embedded._reachable_install(server.data_dir, user)
    server._pg_ctl(install, user, "start", *server._start_options(server.pgdata))


def _socket(url: str) -> str:
    return url.rsplit("host=", 1)[1]


async def _refused_without_password(socket_dir: str) -> str:
    with pytest.raises(asyncpg.InvalidPasswordError) as refused:
        await asyncpg.connect(host=socket_dir, port=5432, user="postgres", database="postgres")
    return str(refused.value)


async def test_a_connection_without_the_password_is_refused_even_on_the_socket(
    data_dir: Path,
) -> None:
    server = EmbeddedPostgres(data_dir)
    url = await server.start()
    try:
        socket_dir = _socket(url)
        assert "password authentication failed" in await _refused_without_password(socket_dir)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(
                host=socket_dir, port=5432, user="postgres", password="guess", database="muster"
            )
        password, password_mode, data_mode, methods = _on_disk(data_dir)
        connection = await asyncpg.connect(
            host=socket_dir, port=5432, user="postgres", password=password, database="muster"
        )
        await connection.close()
        # The password is the gateway's user's alone, and so is the data directory.
        assert password_mode == 0o600
        assert data_mode & 0o007 == 0
        assert methods == {"scram-sha-256"}
    finally:
        await server.stop()


async def test_a_server_that_trusted_local_connections_asks_a_password_at_the_next_start(
    data_dir: Path,
) -> None:
    _trusting_server(data_dir)
    # A session opened while the server still trusted everyone must not survive the upgrade.
    trusting = EmbeddedPostgres(data_dir)
    await asyncio.to_thread(_start_trusting, trusting)
    held = await asyncpg.connect(host=str(data_dir / "postgres"), port=5432, user="postgres")
    server = EmbeddedPostgres(data_dir)
    url = await server.start()
    try:
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)):
            await held.fetchval("SELECT 1")
        assert "password authentication failed" in await _refused_without_password(_socket(url))
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        assert await connection.fetchval("SELECT current_database()") == "muster"
        await connection.close()
    finally:
        await server.stop()


async def test_the_server_stops_when_the_last_handle_lets_go(data_dir: Path) -> None:
    first, second = EmbeddedPostgres(data_dir), EmbeddedPostgres(data_dir)
    url = await first.start()
    assert await second.start() == url
    await first.stop()
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    await connection.close()  # still serving the other handle
    await second.stop()
    with pytest.raises(FileNotFoundError):  # the server and its socket are gone
        await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))


async def test_a_data_directory_too_deep_for_a_socket_path_gets_a_private_random_one() -> None:
    base = Path(tempfile.mkdtemp(prefix="ep-", dir="/tmp"))
    deep = base / ("d" * 60) / ("e" * 60)
    _searchable(base)
    try:
        server = EmbeddedPostgres(deep)
        url = await server.start()
        try:
            socket_dir = Path(_socket(url))
            mode, recorded = _socket_dir_facts(socket_dir, deep)
            assert not socket_dir.is_relative_to(deep)
            assert socket_dir.name.startswith("muster-pg-")
            assert len(socket_dir.name) > len("muster-pg-") + 4  # random, not derived
            assert mode & 0o077 == 0
            assert recorded == str(socket_dir)
        finally:
            await server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _searchable(path: Path) -> None:
    path.chmod(0o755)  # the server's own user passes through to the data directory


def _socket_dir_facts(socket_dir: Path, data_dir: Path) -> tuple[int, str]:
    return socket_dir.stat().st_mode, (data_dir / "postgres-socket-dir").read_text().strip()
