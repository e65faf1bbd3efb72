"""Running the gateway: database (embedded or external), migrations, the API, and shutdown.

Startup order: settings -> database -> migrations -> HTTP -> the background loops
(``gateway.loops.runtime``). Shutdown runs in reverse on SIGINT or SIGTERM, or when a loop ended
on its own: stop the loops and step down as leader, stop accepting and finish in-flight requests
(up to the grace period), close the pool, and let go of the embedded PostgreSQL, which stops when
no other gateway process uses it.

Once serving, the garbage collector leaves the objects of startup alone and runs its youngest
generation every 50,000 allocations instead of 700 (``_tune_garbage_collector``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.api.connections import (
    RESERVED_DESCRIPTORS,
    GuardedSite,
    connection_cap,
    raise_open_file_limit,
)
from gateway.api.serializers import job_view
from gateway.auth.keys import local_key_set
from gateway.backends.base import Inventory
from gateway.backends.factory import Backend, make_backend
from gateway.backends.kubernetes.inventory import KubernetesInventory
from gateway.backends.local import LocalRuntime
from gateway.backends.nodes_file import StaticInventory
from gateway.db.embedded import EmbeddedPostgres
from gateway.db.engine import make_engine
from gateway.db.migrate import upgrade
from gateway.db.tenants import create_first
from gateway.domain.resources import GPU_SHARES_PER_DEVICE
from gateway.domain.scheduling.quota import Quota
from gateway.domain.tenants import TenantSettings
from gateway.errors import ConfigError, DatabaseUnavailable
from gateway.loops.runtime import LoopRuntime
from gateway.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class Database:
    engine: AsyncEngine
    description: str


@contextlib.asynccontextmanager
async def open_database(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Database]:
    """Connect to MUSTER_DATABASE_URL, or start the embedded server; apply migrations."""
    embedded: EmbeddedPostgres | None = None
    if settings.database.url:
        url = settings.database.url
        description = make_url(url).render_as_string(hide_password=True)
    else:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = await embedded.start()
        description = f"embedded PostgreSQL in {embedded.pgdata}"
    engine = make_engine(
        url,
        pool_timeout=settings.database.pool_timeout,
        statement_timeout=settings.database.statement_timeout,
    )
    try:
        if migrate:
            try:
                await upgrade(engine)
            except DBAPIError as exc:
                # Connecting already failed as DatabaseUnavailable; this is a statement of a
                # migration refused.
                raise DatabaseUnavailable(
                    f"cannot apply the migrations ({description}): {exc}"
                ) from exc
        yield Database(engine=engine, description=description)
    finally:
        await engine.dispose()
        if embedded is not None:
            with _timed("let go of the embedded PostgreSQL (it stops when no gateway uses it)"):
                await embedded.stop()


async def _issuer_key(settings: Settings) -> None:
    """Create (or check) the local issuer's key; a key that cannot be read or made stops start."""
    try:
        await asyncio.to_thread(local_key_set, settings.issuer_key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"the local issuer's key {settings.issuer_key_file} cannot be read or created ({exc}); "
            "make one with `muster token --issuer-key FILE` and point MUSTER_ISSUER_KEY at it, "
            "or set MUSTER_OIDC_ISSUER"
        ) from exc


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Everything the gateway writes (keys, logs, state) is its user's alone.
    os.umask(0o077)
    _private_data_dir(settings)
    if settings.auth.oidc_issuer is None:  # the local issuer: its key exists before the first token
        await _issuer_key(settings)
    backend = await make_backend(settings)
    if isinstance(backend.inventory, StaticInventory):
        loop.add_signal_handler(signal.SIGHUP, _reload_nodes, backend.inventory)
    async with open_database(settings) as database:
        first_tenant = await _first_tenant(settings, database.engine, backend.inventory)
        loops = LoopRuntime(
            database.engine,
            inventory=backend.inventory,
            pods=backend.runtime,
            admission=settings.admission,
            webhooks=settings.webhooks,
            render_job=job_view,
            ttl_after_finished=settings.backend.job_ttl_seconds_after_finished,
        )
        app = make_app(
            settings,
            database.engine,
            backend.inventory,
            backend.runtime,
            is_leader=loops.is_leader,
            collectors=loops.collectors,
            on_queued=loops.queued,
        )
        runner = web.AppRunner(app, shutdown_timeout=settings.api.shutdown_grace, access_log=None)
        await runner.setup()
        try:
            site = GuardedSite(
                runner,
                settings.api.host,
                settings.api.port,
                header_timeout=settings.api.header_timeout,
                max_connections=_connection_cap(settings.api.max_connections),
            )
            await site.start()
            _tune_garbage_collector()
            # Leaving this block stops the loops first (an open admission transaction rolls
            # back whole, webhook attempts in flight get a few seconds to end, then the leader
            # lock is released); in-flight requests are finished after.
            async with loops.running(on_crash=stop.set):
                _announce(settings, runner, database, backend, first_tenant)
                if ready is not None:
                    ready.set()
                await stop.wait()
                print("Muster is shutting down", flush=True)
                stopping = time.monotonic()
            log.info("the background loops stopped in %.2f s", time.monotonic() - stopping)
        finally:
            with _timed("the HTTP server stopped"):
                await runner.cleanup()
            if isinstance(backend.inventory, KubernetesInventory):
                await backend.inventory.close()  # its watches
            if backend.runtime is not None:
                # Replicas keep running; the next gateway adopts them.
                await backend.runtime.close()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    print("Muster stopped", flush=True)


@contextlib.contextmanager
def _timed(what: str) -> Iterator[None]:
    """Log how long a step of shutdown took: a slow stop says which step held it."""
    started = time.monotonic()
    try:
        yield
    finally:
        log.info("%s in %.2f s", what, time.monotonic() - started)


def _reload_nodes(inventory: StaticInventory) -> None:
    """SIGHUP: read the static backend's node list again; nodes added are filled at once."""
    try:
        inventory.reload()
    except ConfigError as exc:
        log.error("the node list was not reloaded, the old one stays: %s", exc)
    else:
        log.info("node list reloaded")


DEFAULT_TENANT = "demo"


async def _first_tenant(settings: Settings, engine: AsyncEngine, inventory: Inventory) -> str:
    """On a fresh local install, make a tenant that may use the whole machine, so a newcomer can
    submit the examples at once. Never touches a database that already has tenants."""
    if settings.backend.kind != "local":
        return ""
    (node,) = await inventory.nodes()
    whole_machine = TenantSettings(
        namespace=DEFAULT_TENANT,
        quota=Quota(
            cpu_millis=node.cpu_millis,
            memory_bytes=node.memory_bytes,
            gpu_shares=node.gpu_devices * GPU_SHARES_PER_DEVICE,
            max_running_jobs=100,
            max_queued_jobs=1000,
        ),
        weight=1.0,
    )
    created = await create_first(engine, DEFAULT_TENANT, whole_machine, actor="muster serve")
    return (
        f"{DEFAULT_TENANT} (created for this machine: its CPUs, memory and GPUs)" if created else ""
    )


def _announce(
    settings: Settings,
    runner: web.AppRunner,
    database: Database,
    backend: Backend,
    first_tenant: str,
) -> None:
    """Say where the gateway listens, where its data lives and what it runs on."""
    port = _bound_port(runner, settings.api.port)
    print(f"Muster is listening on http://{settings.api.host}:{port}", flush=True)
    print(f"  data directory: {settings.data_dir}", flush=True)
    print(f"  database:       {database.description}", flush=True)
    print(f"  backend:        {settings.backend.kind}", flush=True)
    if isinstance(backend.runtime, LocalRuntime):
        isolation = backend.runtime.isolation
        print(f"  local jobs:     {isolation.describe()}", flush=True)
        for note in isolation.notes:
            print(f"                  ({note})", flush=True)
        if not isolation.isolated:
            log.warning("local jobs are not isolated: %s", isolation.describe())
    if first_tenant:
        print(f"  tenant:         {first_tenant}", flush=True)
    if settings.auth.oidc_issuer is None:
        print(f"  tokens:         muster token --help (key {settings.issuer_key_file})")
    else:
        print(f"  tokens:         from {settings.auth.oidc_issuer}", flush=True)


def _connection_cap(wanted: int) -> int:
    """MUSTER_MAX_CONNECTIONS, or less (with a warning) if the open-file limit cannot hold it."""
    cap = connection_cap(wanted, raise_open_file_limit(wanted + RESERVED_DESCRIPTORS))
    if cap < wanted:
        log.warning(
            "serving at most %d connections, not MUSTER_MAX_CONNECTIONS=%d: the open-file limit "
            "(ulimit -n) is too low and cannot be raised",
            cap,
            wanted,
        )
    return cap


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured


def _private_data_dir(settings: Settings) -> None:
    """The data directory exists and only the gateway's user may enter it (0700; the embedded
    PostgreSQL's own user gets passage when the gateway runs as root)."""
    for parent in reversed(settings.data_dir.parents):
        if not parent.exists():  # made for the data directory: others may pass, not list
            parent.mkdir(mode=0o711, exist_ok=True)
            parent.chmod(0o711)
    settings.data_dir.mkdir(mode=0o700, exist_ok=True)
    mode = settings.data_dir.stat().st_mode & 0o777
    if mode & 0o077 and not (os.geteuid() == 0 and mode == 0o710):
        settings.data_dir.chmod(0o700)


async def migrate_only(settings: Settings) -> str:
    os.umask(0o077)
    _private_data_dir(settings)
    async with open_database(settings) as database:
        return database.description


#: Container allocations between collections of the youngest generation (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


def _tune_garbage_collector() -> None:
    """Cheaper garbage collection for a server: what startup made (modules, the OpenAPI
    document, settings) lives as long as the process, so it is frozen out of every collection;
    and the youngest generation is collected less often, so the objects of requests in flight
    are not promoted to older generations (and scanned again and again) just for being alive at
    a collection. Under submit load this saved ~10 % of the CPU per request (bench/api.py)."""
    gc.collect()  # what startup left as garbage is freed, not frozen
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)
