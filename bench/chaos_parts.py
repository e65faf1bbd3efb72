"""The pieces ``bench/chaos.py`` builds its scenarios from: a PostgreSQL it owns and can halt, a
background event loop, a submit storm, a slow TCP proxy, a webhook receiver, and the audit that
checks Muster's promises in the database after a scenario.

The audit's promises:

- every 201 is exactly one job (none lost, none duplicated: each submit has a unique name);
- each job was admitted at most once between requeues, and finished (a terminal event) once;
- no tenant's quota and no node's capacity was over-committed at any moment, judged by sweeping the
  placements' intervals ``[created_at, COALESCE(released_at, now()))``;
- each webhook event was delivered at least once, always with the same webhook-id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import shutil
import tempfile
import threading
import time
import urllib.error
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.db.embedded import PORT, EmbeddedPostgres
from gateway.db.engine import make_engine
from gateway.db.migrate import upgrade
from tests.acceptance.gateway_process import GatewayProcess, call

T = TypeVar("T")
HTTP_TIMEOUT = 30.0
TERMINAL = ("succeeded", "failed", "cancelled")
DRAIN_CAP = 900.0  # seconds an audit waits for a backlog in all, however steadily it drains
NODE_CPUS = 8
NODE_MEMORY_GI = 64
NODES = ("node-0", "node-1")
QUOTA_CPUS = 6  # two tenants of 6 CPUs on 16: each quota binds, and both together fit the nodes
TENANTS = ("alpha", "beta")
SWEEP_SLACK = 0.05  # seconds an over-commit by commit timestamps may last (see _sweep)
_storms = itertools.count()


# The background loop: receivers, proxies and audits run here, the storm's threads beside it. ---


class Loop:
    """An asyncio event loop in a daemon thread; ``run`` waits for a coroutine from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 300) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# HTTP, as a client with a platform admin's token. --------------------------------------------


def error_kind(exc: BaseException) -> str:
    """A client-side failure's name: the reason inside a URLError, else the exception's type."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return type(exc.reason).__name__
    return type(exc).__name__


def job_spec(
    tenant: str, name: str, *, command: list[str], callback: str | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tenant": tenant,
        "name": name,
        "replicas": {
            "worker": {
                "image": "x",
                "command": command,
                "resources": {"cpu": "1", "memory": "1Gi"},
            }
        },
    }
    if callback is not None:
        spec["callback"] = {
            "url": callback,
            "events": ["job.admitted", "job.running", "job.succeeded", "job.failed"],
        }
    return spec


def make_tenants(base: str) -> None:
    quota = {
        "cpu": str(QUOTA_CPUS),
        "memory": "1Ti",
        "gpu": 0,
        "max_running_jobs": 100000,
        "max_queued_jobs": 100000,
    }
    for tenant in TENANTS:
        status, answer, _ = call("PUT", f"{base}/v1/admin/tenants/{tenant}", {"quota": quota})
        if status not in (200, 201):
            raise RuntimeError(f"PUT tenant {tenant}: {status} {answer}")


def write_nodes(path: Path) -> Path:
    lines = ["nodes:"] + [
        f'  - {{name: {name}, cpu: "{NODE_CPUS}", memory: {NODE_MEMORY_GI}Gi, gpus: 0}}'
        for name in NODES
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def node_capacity() -> dict[str, tuple[int, int]]:
    """Node -> (cpu millis, memory bytes), as ``write_nodes`` wrote them."""
    return {name: (NODE_CPUS * 1000, NODE_MEMORY_GI * 2**30) for name in NODES}


# The storm: threads submitting as fast as the gateways answer. ------------------------------


class Storm:
    """``threads`` submitters, each sending to the next of ``bases()``; every answer recorded.

    Most jobs run ``true`` (done at once), one in twenty ``sleep 1``: the quotas bind at times."""

    def __init__(
        self,
        bases: Callable[[], list[str]],
        *,
        threads: int = 3,
        callback: str | None = None,
        pause: float = 0.0,
    ) -> None:
        self.bases = bases
        self.name = f"st{next(_storms)}"
        self.callback = callback
        self.pause = pause
        self.created: list[tuple[float, str]] = []  # (monotonic when answered, job id)
        self.kinds: Counter[str] = Counter()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.missing_retry_after = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._submit, args=(n,), daemon=True) for n in range(threads)
        ]

    def __enter__(self) -> Storm:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(HTTP_TIMEOUT + 5)

    @property
    def requests(self) -> int:
        return sum(self.kinds.values())

    def ids(self) -> list[str]:
        with self._lock:
            return [job_id for _, job_id in self.created]

    def first_201_after(self, moment: float) -> float | None:
        with self._lock:
            later = [at for at, _ in self.created if at > moment]
        return min(later) if later else None

    def wait_201_after(self, moment: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (at := self.first_201_after(moment)) is not None:
                return at
            time.sleep(0.05)
        return None

    def _submit(self, submitter: int) -> None:
        number = 0
        while not self.stop.is_set():
            number += 1
            bases = self.bases()
            if not bases:
                time.sleep(0.05)
                continue
            base = bases[(submitter + number) % len(bases)]
            tenant = TENANTS[number % len(TENANTS)]
            command = ["sleep", "1"] if number % 20 == 0 else ["true"]
            spec = job_spec(
                tenant, f"{self.name}-{submitter}-{number}", command=command, callback=self.callback
            )
            began = time.monotonic()
            try:
                status, answer, headers = call("POST", f"{base}/v1/jobs", spec)
            except OSError as exc:
                kind = error_kind(exc)
                with self._lock:
                    self.kinds[kind] += 1
                    self.latencies[kind].append(time.monotonic() - began)
                time.sleep(0.05)
                continue
            ended = time.monotonic()
            with self._lock:
                self.kinds[str(status)] += 1
                self.latencies[str(status)].append(ended - began)
                if status == 201:
                    self.created.append((ended, answer["id"]))
                elif status == 503 and not headers.get("Retry-After", "").isdigit():
                    self.missing_retry_after += 1
            if status != 201:
                time.sleep(0.05)
            elif self.pause:
                time.sleep(self.pause)


# A PostgreSQL the bench owns, with a plain DSN for its own connections. ----------------------


class Postgres:
    """The embedded server in a temporary directory, migrated; ``halt``/``resume`` it at will."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mc-", dir="/tmp"))
        self.root.chmod(0o755)
        self.embedded = EmbeddedPostgres(self.root / "pg")
        self.url = ""

    @property
    def dsn(self) -> str:
        return self.url.replace("postgresql+asyncpg", "postgresql", 1)

    @property
    def socket(self) -> str:
        return self.url.split("host=", 1)[1] + f"/.s.PGSQL.{PORT}"

    async def start(self) -> str:
        self.url = await self.embedded.start()
        engine = make_engine(self.url, pool_size=1)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
        # Commit timestamps let the audit order placements by when they took effect (see _sweep).
        conn = await _connect(self.dsn)
        try:
            await conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
        finally:
            await conn.close()
        await asyncio.to_thread(self.halt, "fast")
        await asyncio.to_thread(self.resume)
        (await _connect(self.dsn)).terminate()
        return self.url

    def halt(self, mode: str) -> None:
        self.embedded.halt(mode)

    def resume(self) -> None:
        self.embedded.resume()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.embedded.stop(), 30)
        _stop_postmaster(self.embedded.pgdata)
        shutil.rmtree(self.root, ignore_errors=True)


def _stop_postmaster(pgdata: Path) -> None:
    """The server by its pid file, should it outlive ``stop`` (SIGTERM, then SIGKILL)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        postmaster = psutil.Process(pid)
        if str(pgdata) not in " ".join(postmaster.cmdline()):
            return
        postmaster.terminate()
        try:
            postmaster.wait(10)
        except psutil.TimeoutExpired:
            postmaster.kill()
    except (OSError, ValueError, psutil.Error):
        pass


@contextlib.contextmanager
def gateways_closed(gateways: list[GatewayProcess]) -> Iterator[list[GatewayProcess]]:
    """Every gateway of the list (as it is at the end) killed afterwards, whatever happened."""
    try:
        yield gateways
    finally:
        for gateway in gateways:
            with contextlib.suppress(Exception):
                gateway.kill()


def gateway_trouble(gateways: list[GatewayProcess]) -> int:
    """Tracebacks and ERROR lines the gateways logged."""
    count = 0
    for gateway in gateways:
        for line in gateway.transcript().splitlines():
            if " ERROR " in line or line.startswith("Traceback"):
                count += 1
    return count


# A TCP proxy that delays every client -> server message. -----------------------------------


class SlowProxy:
    """127.0.0.1:<port> -> the server's Unix socket; ``delay`` seconds added to each chunk the
    client sends (order kept, throughput not limited)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            client_w.close()
            return
        pending: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read_client() -> None:
            while data := await client_r.read(65536):
                pending.put_nowait((time.monotonic() + self.delay, data))
            pending.put_nowait((0.0, b""))

        async def forward_client() -> None:
            while True:
                due, data = await pending.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                server_w.write(data)
                await server_w.drain()
            server_w.write_eof()

        async def forward_server() -> None:
            while data := await server_r.read(65536):
                client_w.write(data)
                await client_w.drain()

        parts = [
            asyncio.ensure_future(p) for p in (read_client(), forward_client(), forward_server())
        ]
        try:
            await asyncio.wait(parts, return_when=asyncio.FIRST_EXCEPTION)
            await asyncio.wait([parts[2]], timeout=1)
        finally:
            for part in parts:
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
            for writer in (client_w, server_w):
                writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 3)


# The webhook receiver. -------------------------------------------------------------------


@dataclass
class Receipt:
    webhook_id: str
    job_id: str
    event_type: str
    verified: bool
    answered: int


class Receiver:
    """POST /hook on 127.0.0.1: verifies each delivery (Standard Webhooks) and answers 204, or
    503 to the first try of one event in five, so retries show their webhook-id. ``away`` stops
    it listening (connections refused) until ``back``."""

    def __init__(self) -> None:
        self.secrets: list[str] = []  # every tenant's: a delivery verifies with one of them
        self.receipts: list[Receipt] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        webhook_id = headers.get("webhook-id", "")
        payload, verified = json.loads(body or b"{}"), False
        for secret in self.secrets:
            try:
                payload, verified = Webhook(secret).verify(body, headers), True
                break
            except (WebhookVerificationError, ValueError):
                continue
        first_try = all(r.webhook_id != webhook_id for r in self.receipts)
        flaky = int(hashlib.sha256(webhook_id.encode()).hexdigest(), 16) % 5 == 0
        answer = 503 if first_try and flaky else 204
        self.receipts.append(
            Receipt(
                webhook_id=webhook_id,
                job_id=str(payload.get("data", {}).get("id", "")),
                event_type=str(payload.get("type", "")),
                verified=verified,
                answered=answer,
            )
        )
        return web.Response(status=answer)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def away(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def back(self) -> None:
        await self.start()


# The audit. ------------------------------------------------------------------------------


@dataclass
class Audit:
    created: int = 0
    lost: int = 0
    duplicated: int = 0
    phantoms: int = 0  # jobs of answers other than 201 (503, dropped connections): not promised
    unfinished: int = 0
    unfinished_states: dict[str, int] = field(default_factory=dict)
    drain_seconds: float = 0.0  # from the audit's start until every job had finished
    finished_twice: int = 0
    failed: int = 0
    double_admissions: int = 0
    quota_breaches: int = 0
    node_breaches: int = 0
    placements: int = 0
    samples: int = 0
    sweep_quota_overlaps: int = 0
    sweep_node_overlaps: int = 0
    sweep_longest: float = 0.0  # seconds the longest over-commit by timestamps lasted
    peak_tenant_cpu: dict[str, int] = field(default_factory=dict)
    events: int = 0
    undelivered: int = 0
    ids_changed: int = 0
    unverified: int = 0

    def verdicts(self, *, webhooks: bool = False) -> list[tuple[str, int]]:
        rows = [
            ("jobs lost", self.lost),
            ("jobs duplicated", self.duplicated),
            ("jobs finished twice", self.finished_twice),
            ("jobs unfinished", self.unfinished),
            ("double admissions", self.double_admissions),
            ("quota breaches", self.quota_breaches),
            ("node over-commits", self.node_breaches),
        ]
        if webhooks:
            rows += [
                ("events undelivered", self.undelivered),
                ("webhook-id changed", self.ids_changed),
                ("failed verification", self.unverified),
            ]
        return rows


DOUBLE_ADMISSIONS = """
SELECT count(*) FROM (
  SELECT type, lag(type) OVER (PARTITION BY job_id ORDER BY id) AS before
  FROM job_events WHERE type IN ('admitted', 'requeued')) e
WHERE type = 'admitted' AND before = 'admitted'
"""
FINISHED_TWICE = """
SELECT count(*) FROM (
  SELECT job_id FROM job_events WHERE type IN ('succeeded', 'failed', 'cancelled')
  GROUP BY job_id HAVING count(*) > 1) d
"""
# A released placement's row was last written by the transaction that released it.
PLACEMENTS = """
SELECT j.tenant, p.node, p.cpu_millis, p.memory_bytes, p.job_id, p.attempt, p.created_at,
  p.released_at,
  CASE WHEN p.released_at IS NOT NULL THEN pg_xact_commit_timestamp(p.xmin) END AS released_commit
FROM placements p JOIN jobs j ON j.id = p.job_id
"""
ADMISSIONS = """
SELECT job_id, pg_xact_commit_timestamp(txid::text::xid) AS committed
FROM job_events WHERE type = 'admitted' ORDER BY id
"""


async def audit(dsn: str, created: list[str], *, finish_within: float) -> Audit:
    """Wait for the created jobs to finish (a backlog the storm left drains at the quotas'
    pace: the wait ends when none is left, when ``finish_within`` seconds passed without one
    finishing, or after ``DRAIN_CAP`` seconds in all), then check."""
    result = Audit(created=len(created))
    conn = await _connect(dsn)
    try:
        began = time.monotonic()
        progress, fewest = began, len(created) + 1
        while True:
            states = {
                row["state"]: row["n"]
                for row in await conn.fetch(
                    "SELECT state, count(*) AS n FROM jobs WHERE id = ANY($1::uuid[]) "
                    "AND state <> ALL($2) GROUP BY state",
                    created,
                    list(TERMINAL),
                )
            }
            result.unfinished, result.unfinished_states = sum(states.values()), states
            now = time.monotonic()
            if result.unfinished < fewest:
                progress, fewest = now, result.unfinished
            if result.unfinished == 0 or now - progress > finish_within or now - began > DRAIN_CAP:
                break
            await asyncio.sleep(0.5)
        result.drain_seconds = time.monotonic() - began
        known = {
            str(row["id"])
            for row in await conn.fetch("SELECT id FROM jobs WHERE id = ANY($1::uuid[])", created)
        }
        result.lost = len(set(created) - known)
        same_name = await conn.fetchval(
            "SELECT coalesce(sum(n - 1), 0) FROM "
            "(SELECT count(*) AS n FROM jobs GROUP BY tenant, name HAVING count(*) > 1) d"
        )
        result.duplicated = int(same_name) + len(created) - len(set(created))
        result.phantoms = await conn.fetchval("SELECT count(*) FROM jobs") - len(known)
        result.failed = await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'failed'")
        result.double_admissions = await conn.fetchval(DOUBLE_ADMISSIONS)
        result.finished_twice = await conn.fetchval(FINISHED_TWICE)
        quotas = {
            row["name"]: (row["quota_cpu_millis"], row["quota_memory_bytes"])
            for row in await conn.fetch(
                "SELECT name, quota_cpu_millis, quota_memory_bytes FROM tenants"
            )
        }
        placements = await conn.fetch(PLACEMENTS)
        admissions = await conn.fetch(ADMISSIONS)
        now = await conn.fetchval("SELECT now()")
    finally:
        await conn.close()
    result.placements = len(placements)
    _sweep(result, _intervals(placements, admissions, now), quotas, node_capacity(), now)
    return result


@dataclass(frozen=True)
class Interval:
    tenant: str
    node: str
    cpu_millis: int
    memory_bytes: int
    start: Any
    end: Any


def _intervals(
    placements: list[asyncpg.Record], admissions: list[asyncpg.Record], now: Any
) -> list[Interval]:
    """Each placement live from its admission's commit to its release's commit: the n-th
    admitted event of a job commits its n-th attempt's placements. Where a commit timestamp is
    missing, the row's own ``now()`` stamps stand in."""
    commits: dict[Any, list[Any]] = defaultdict(list)
    for row in admissions:
        commits[row["job_id"]].append(row["committed"])
    attempts: dict[Any, list[int]] = defaultdict(list)
    for row in placements:
        if row["attempt"] not in attempts[row["job_id"]]:
            attempts[row["job_id"]].append(row["attempt"])
    intervals = []
    for row in placements:
        order = sorted(attempts[row["job_id"]])
        admitted = commits.get(row["job_id"], [])
        index = order.index(row["attempt"])
        start = admitted[index] if len(admitted) == len(order) else None
        released = row["released_commit"] or row["released_at"]
        end = now if row["released_at"] is None else released
        intervals.append(
            Interval(
                tenant=row["tenant"],
                node=row["node"],
                cpu_millis=row["cpu_millis"],
                memory_bytes=row["memory_bytes"],
                start=start or row["created_at"],
                end=end,
            )
        )
    return intervals


def _sweep(
    result: Audit,
    placements: list[Interval],
    quotas: dict[str, tuple[int, int]],
    nodes: dict[str, tuple[int, int]],
    now: Any,
) -> None:
    """Walk the placements' starts and ends in time order (an end before a start at the same
    instant, as the interval is half open); count each start that put a tenant over its quota
    or a node over its capacity, and how long the longest such over-commit lasted.

    The times are commit timestamps (``track_commit_timestamp``), which follow commit order
    only as closely as the clock and the commit record's write allow: an over-commit shorter
    than ``SWEEP_SLACK`` is counted as an overlap but not as a breach. The snapshots of
    ``Sampler`` are exact."""
    moments: list[tuple[Any, int, Interval]] = []
    for row in placements:
        moments.append((row.start, 1, row))
        moments.append((row.end, 0, row))
    moments.sort(key=lambda m: (m[0], m[1]))
    use: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    over_since: dict[tuple[str, str], Any] = {}
    for at, starts, row in moments:
        sign = 1 if starts else -1
        for key, limit in (
            (("tenant", row.tenant), quotas.get(row.tenant, (0, 0))),
            (("node", row.node), nodes.get(row.node, (0, 0))),
        ):
            held = use[key]
            held[0] += sign * row.cpu_millis
            held[1] += sign * row.memory_bytes
            if key[0] == "tenant":
                peak = result.peak_tenant_cpu.get(key[1], 0)
                result.peak_tenant_cpu[key[1]] = max(peak, held[0])
            over = held[0] > limit[0] or held[1] > limit[1]
            if over and starts and key not in over_since:
                over_since[key] = at
                if key[0] == "tenant":
                    result.sweep_quota_overlaps += 1
                else:
                    result.sweep_node_overlaps += 1
            elif not over and key in over_since:
                lasted = (at - over_since.pop(key)).total_seconds()
                result.sweep_longest = max(result.sweep_longest, lasted)
    for since in over_since.values():
        result.sweep_longest = max(result.sweep_longest, (now - since).total_seconds())
    if result.sweep_longest > SWEEP_SLACK:
        result.quota_breaches += result.sweep_quota_overlaps
        result.node_breaches += result.sweep_node_overlaps


LIVE_USE = """
SELECT
  (SELECT count(*) FROM (
      SELECT j.tenant, sum(p.cpu_millis) AS cpu, sum(p.memory_bytes) AS memory
      FROM placements p JOIN jobs j ON j.id = p.job_id
      WHERE p.released_at IS NULL GROUP BY j.tenant) u
   JOIN tenants t ON t.name = u.tenant
   WHERE u.cpu > t.quota_cpu_millis OR u.memory > t.quota_memory_bytes) AS tenants_over,
  (SELECT coalesce(max(cpu), 0) FROM (
      SELECT sum(cpu_millis) AS cpu FROM placements WHERE released_at IS NULL GROUP BY node) n)
   AS node_cpu_peak
"""


class Sampler:
    """Checks the live placements in one snapshot ten times a second while a scenario runs:
    no tenant over its quota, no node over its capacity, at each of those moments."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples = 0
        self.tenants_over = 0
        self.nodes_over = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chaos-sampler")

    async def stop(self, result: Audit) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        result.samples = self.samples
        result.quota_breaches += self.tenants_over
        result.node_breaches += self.nodes_over

    async def _run(self) -> None:
        node_cpu = NODE_CPUS * 1000
        while True:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
                try:
                    while True:
                        async with conn.transaction(isolation="repeatable_read", readonly=True):
                            row = await conn.fetchrow(LIVE_USE)
                        self.samples += 1
                        self.tenants_over += row["tenants_over"] > 0
                        self.nodes_over += row["node_cpu_peak"] > node_cpu
                        await asyncio.sleep(0.1)
                finally:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                await asyncio.sleep(0.5)  # the database is away (a scenario's fault)


async def audit_webhooks(dsn: str, result: Audit, receiver: Receiver, *, within: float) -> None:
    """Every outbox row delivered (waiting up to ``within`` s) and received with a 2xx, each
    event's attempts under one webhook-id (the outbox row's)."""
    conn = await _connect(dsn)
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            pending = "SELECT count(*) FROM webhook_outbox WHERE status = 'pending'"
            if not await conn.fetchval(pending):
                break
            await asyncio.sleep(0.5)
        rows = await conn.fetch("SELECT id, job_id, event_type, status FROM webhook_outbox")
    finally:
        await conn.close()
    result.events = len(rows)
    ids_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    answered: set[str] = set()
    for receipt in receiver.receipts:
        ids_of[receipt.job_id, receipt.event_type].add(receipt.webhook_id)
        if receipt.answered < 300:
            answered.add(receipt.webhook_id)
        result.unverified += not receipt.verified
    result.ids_changed = sum(len(ids) > 1 for ids in ids_of.values())
    for row in rows:
        webhook_id = "msg_" + row["id"].hex
        if row["status"] != "delivered" or webhook_id not in answered:
            result.undelivered += 1


async def first_admission_after(dsn: str, wall: float) -> float | None:
    """Seconds from ``wall`` (time.time()) to the first admitted event written after it."""
    conn = await _connect(dsn)
    try:
        value = await conn.fetchval(
            "SELECT extract(epoch FROM min(created_at)) FROM job_events "
            "WHERE type = 'admitted' AND created_at > to_timestamp($1)",
            wall,
        )
    finally:
        await conn.close()
    return None if value is None else float(value) - wall


async def _connect(dsn: str) -> asyncpg.Connection:
    """Connect, retrying for a while (the server may just have come back)."""
    for attempt in range(60):
        try:
            return await asyncpg.connect(dsn, timeout=10)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            if attempt == 59:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


# The table. ------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("nan")


def print_table(
    title: str, rows: list[tuple[str, str]], verdicts: list[tuple[str, bool, str]]
) -> bool:
    """The scenario's figures, then a PASS/FAIL line per promise; True if all passed."""
    width = max(len(label) for label, _ in rows + [(v[0], "") for v in verdicts])
    print(f"\n== {title} " + "=" * max(0, 60 - len(title)))
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    for label, passed, value in verdicts:
        print(f"  {'PASS' if passed else 'FAIL'}  {label:<{width}}  {value}")
    ok = all(passed for _, passed, _ in verdicts)
    print(f"  verdict: {'PASS' if ok else 'FAIL'}")
    return ok


def audit_verdicts(result: Audit, *, webhooks: bool = False) -> list[tuple[str, bool, str]]:
    rows = [(label, value == 0, str(value)) for label, value in result.verdicts(webhooks=webhooks)]
    if result.unfinished_states:
        left = ", ".join(f"{n} {state}" for state, n in sorted(result.unfinished_states.items()))
        rows = [
            (label, ok, f"{detail} ({left}; when the audit stopped waiting)")
            if label == "jobs unfinished"
            else (label, ok, detail)
            for label, ok, detail in rows
        ]
    return rows


def kinds_text(kinds: Counter[str]) -> str:
    return ", ".join(f"{kind}: {count}" for kind, count in sorted(kinds.items())) or "-"


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def gateway_env(url: str, root: Path, nodes: Path, **extra: str) -> dict[str, str]:
    return {
        "MUSTER_DATABASE_URL": url,
        "MUSTER_BACKEND": "static",
        "MUSTER_NODES_FILE": str(nodes),
        "MUSTER_SIMULATE_RUNS": "true",
        "MUSTER_DATA_DIR": str(root / "data"),
        "MUSTER_ADMISSION_INTERVAL": "0.5",
        "MUSTER_DATABASE_POOL_TIMEOUT": "2",
        "MUSTER_LOG_LEVEL": "WARNING",
        **extra,
    }
