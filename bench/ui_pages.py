"""Dashboard page load times with a full database: each /ui page next to the API call it makes.

    python bench/ui_pages.py                  # 10,000 jobs, 30 requests per page after 3 warm-ups
    python bench/ui_pages.py --quick          # 2,000 jobs, 15 requests per page
    python bench/ui_pages.py --jobs 50000 --requests 50

The database is a scratch database on MUSTER_TEST_DATABASE_URL when that is set (created and
dropped by this script), else an embedded PostgreSQL in a temporary directory under /tmp.

The application is ``gateway.api.app.make_app`` over a ``StaticInventory`` of 40 nodes (16 CPU
nodes, 16 nodes of 8 device-plugin GPUs, 8 nodes of 8 shared GPUs labelled
muster.dev/gpu-sharing=true), served in this process on a loopback port (no background loops:
nothing changes the rows while they are measured); an aiohttp ClientSession requests it.

Seeding, ~8 tenants of skewed sizes, so that every row is one the real code wrote or would write:

1. the finished jobs (about 87 %) are submitted through POST /v1/jobs:batch, then made
   succeeded, failed or cancelled in bulk SQL, backdated over the last week, with the events and
   released placements (GPU devices and half-GPU shares included) their runs would have left;
2. the live jobs are submitted the same way, then the real admission cycle
   (``gateway.db.admission.run_cycle``) admits what the tenants' max_running_jobs and the cluster
   allow, writing placements and events, and the queue positions of the rest (~10 % of the jobs);
   about 70 % of the admitted jobs are then moved to running (``gateway.db.transitions.move``).

Each page is requested with ``Accept: text/html`` and an admin's bearer token (the queue page
also with a session cookie from a sign-in link, and the jobs and queue pages as a viewer of one
tenant), alternating request by request with the main JSON API call that page makes, so both
see the same noise. The table gives p50, p95 and max in ms, the response size, the page/API
ratio, and a verdict: PASS when the page's p95 is under 300 ms. A second table, from one
instrumented request per page, shows how many API calls the page made, the slowest of them and
the time spent rendering the template. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import asyncpg
from aiohttp import web
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.api.dashboard import pages
from gateway.auth.keys import local_key_set
from gateway.auth.sessions import SESSION_COOKIE, mint_sign_in_code
from gateway.backends.nodes_file import StaticInventory
from gateway.db.admission import LeaderQueue, places_to_write, run_cycle, write_places
from gateway.db.embedded import EmbeddedPostgres
from gateway.db.engine import make_engine, normalize_url
from gateway.db.migrate import upgrade
from gateway.db.transitions import Change, move
from gateway.domain.lifecycle.decisions import Reason
from gateway.domain.lifecycle.states import JobState
from gateway.domain.resources import GPU_SHARES_PER_DEVICE
from gateway.domain.scheduling.nodes import GpuMode, Node
from gateway.settings import AuthSettings, BackendSettings, DatabaseSettings, Settings
from tests import tokens
from tests.pg import TestServer

GIB = 2**30
GOAL_MS = 300.0
BATCH = 500  # jobs per POST /v1/jobs:batch
IMAGE = "registry.example.com/ml/trainer:2024.06.1"
#: Tenants and their share of the jobs: a few big teams, a long tail.
TENANTS = {
    "search": 0.25,
    "ads": 0.20,
    "vision": 0.15,
    "speech": 0.12,
    "ranking": 0.10,
    "nlp": 0.08,
    "robotics": 0.06,
    "infra": 0.04,
}
VIEWED = "search"  # the tenant the viewer's token may read
SHARED = {"muster.dev/gpu-sharing": "true"}


@dataclass(frozen=True, kw_only=True)
class Role:
    name: str
    count: int
    cpu: int  # cores
    memory_gib: int
    gpu: float


#: name -> (framework, roles, weight in the mix)
SHAPES: dict[str, tuple[str, tuple[Role, ...], int]] = {
    "cpu": ("generic", (Role(name="worker", count=1, cpu=4, memory_gib=16, gpu=0),), 40),
    "sweep": ("generic", (Role(name="worker", count=4, cpu=2, memory_gib=8, gpu=0),), 15),
    "half": ("generic", (Role(name="worker", count=1, cpu=4, memory_gib=16, gpu=0.5),), 20),
    "ddp": (
        "pytorch",
        (
            Role(name="master", count=1, cpu=8, memory_gib=64, gpu=1),
            Role(name="worker", count=2, cpu=8, memory_gib=64, gpu=1),
        ),
        15,
    ),
    "tf": (
        "tensorflow",
        (
            Role(name="chief", count=1, cpu=4, memory_gib=16, gpu=1),
            Role(name="worker", count=2, cpu=8, memory_gib=32, gpu=1),
            Role(name="ps", count=1, cpu=4, memory_gib=24, gpu=0),
        ),
        10,
    ),
}


@dataclass(kw_only=True)
class Planned:
    """One job to seed: what is submitted, and for a finished one, how its run ended."""

    name: str
    tenant: str
    shape: str
    labels: dict[str, str]
    priority: int
    fate: JobState | None = None  # None: live (the admission cycle decides)
    ran: bool = True  # a cancelled job: whether it ran before it was cancelled
    id: str = ""

    def body(self) -> dict[str, Any]:
        framework, roles, _ = SHAPES[self.shape]
        replicas = {}
        for role in roles:
            resources: dict[str, Any] = {"cpu": str(role.cpu), "memory": f"{role.memory_gib}Gi"}
            if role.gpu:
                resources["gpu"] = role.gpu
            replicas[role.name] = {
                "count": role.count,
                "image": IMAGE,
                "command": ["python", "-m", f"{self.tenant}.train"],
                "args": [f"--role={role.name}", "--epochs=20"],
                "env": {"DATA_DIR": f"/data/{self.tenant}", "LOG_LEVEL": "info"},
                "resources": resources,
            }
        return {
            "name": self.name,
            "tenant": self.tenant,
            "framework": framework,
            "priority": self.priority,
            "labels": self.labels,
            "replicas": replicas,
        }


def cluster() -> tuple[Node, ...]:
    cpu = [Node(name=f"cpu-{i:02d}", cpu_millis=64_000, memory_bytes=256 * GIB) for i in range(16)]
    gpu = [
        Node(
            name=f"gpu-{i:02d}",
            cpu_millis=96_000,
            memory_bytes=1024 * GIB,
            gpu_mode=GpuMode.DEVICE_PLUGIN,
            gpu_devices=8,
        )
        for i in range(16)
    ]
    shared = [
        Node(
            name=f"shared-{i:02d}",
            cpu_millis=96_000,
            memory_bytes=1024 * GIB,
            gpu_mode=GpuMode.SHARED,
            gpu_devices=8,
            labels=SHARED,
        )
        for i in range(8)
    ]
    return (*cpu, *gpu, *shared)


def plan_jobs(
    total: int, rng: random.Random
) -> tuple[list[Planned], list[Planned], dict[str, int]]:
    """(finished jobs, live jobs, max_running_jobs per tenant) for ``total`` jobs."""
    live_share, running_share = 0.13, 0.032  # of the jobs: live ones, and admitted at most
    shapes = list(SHAPES)
    weights = [SHAPES[s][2] for s in shapes]
    tenants, shares = list(TENANTS), list(TENANTS.values())
    counter = Counter[str]()

    def one(fate: JobState | None) -> Planned:
        tenant = rng.choices(tenants, shares)[0]
        shape = rng.choices(shapes, weights)[0]
        counter[tenant] += 1
        labels = {}
        if rng.random() < 0.4:
            labels = {"team": tenant, "experiment": f"exp-{rng.randrange(40)}"}
        return Planned(
            name=f"{shape}-{counter[tenant]:06d}",
            tenant=tenant,
            shape=shape,
            labels=labels,
            priority=rng.choice((0, 0, 0, 10, 50)),
            fate=fate,
            ran=fate is not JobState.CANCELLED or rng.random() < 0.5,
        )

    live = round(total * live_share)
    fates = [JobState.SUCCEEDED] * 70 + [JobState.FAILED] * 15 + [JobState.CANCELLED] * 15
    finished = [one(rng.choice(fates)) for _ in range(total - live)]
    alive = [one(None) for _ in range(live)]
    caps = {t: max(2, round(total * running_share * s)) for t, s in TENANTS.items()}
    return finished, alive, caps


# -- the database -------------------------------------------------------------------------------


async def open_database(root: Path, cleanup: list[Callable[[], Awaitable[None]]]) -> str:
    """The SQLAlchemy URL of an empty database: a scratch one on MUSTER_TEST_DATABASE_URL, else
    an embedded server's. What removes it goes on ``cleanup``."""
    external = os.environ.get("MUSTER_TEST_DATABASE_URL")
    if external:
        server = TestServer(normalize_url(external))
        name = f"bench_ui_{uuid.uuid4().hex[:12]}"
        async with server.admin() as conn:
            await conn.execute(f'CREATE DATABASE "{name}"')
        cleanup.append(lambda: server.drop_database(name))
        print(f"database: {name} on MUSTER_TEST_DATABASE_URL (dropped afterwards)", flush=True)
        return server.url_for(name)
    embedded = EmbeddedPostgres(root)
    url = await embedded.start()
    cleanup.append(embedded.stop)
    print(f"database: embedded PostgreSQL in {embedded.pgdata}", flush=True)
    return url


# -- seeding ------------------------------------------------------------------------------------


async def submit(http: aiohttp.ClientSession, base: str, jobs: Sequence[Planned]) -> None:
    """POST /v1/jobs:batch in batches of BATCH, four in flight; sets each job's id."""
    chunks = iter(range(0, len(jobs), BATCH))

    async def worker() -> None:
        for start in chunks:
            chunk = jobs[start : start + BATCH]
            body = {"jobs": [{"job": job.body()} for job in chunk]}
            async with http.post(f"{base}/v1/jobs:batch", json=body) as response:
                answer = await response.json()
                if response.status != 200:
                    raise SystemExit(f"POST /v1/jobs:batch: HTTP {response.status} {answer}")
            for job, item in zip(chunk, answer["items"], strict=True):
                if item["status"] != 201:
                    raise SystemExit(f"job {job.name} was not created: {item}")
                job.id = item["job"]["id"]

    await asyncio.gather(*(worker() for _ in range(4)))


def pods_of(job: Planned) -> Iterator[tuple[str, int, Role]]:
    for role in SHAPES[job.shape][1]:
        for index in range(role.count):
            yield f"{job.name}-{role.name}-{index}", index, role


def place(role: Role, rng: random.Random) -> tuple[str, list[dict[str, int]]]:
    """A node and GPU slices for a pod of a finished job, as admission would have chosen."""
    if role.gpu >= 1:
        devices = rng.sample(range(8), int(role.gpu))
        node = f"gpu-{rng.randrange(16):02d}"
        return node, [{"device": d, "shares": GPU_SHARES_PER_DEVICE} for d in devices]
    if role.gpu:
        shares = round(role.gpu * GPU_SHARES_PER_DEVICE)
        return f"shared-{rng.randrange(8):02d}", [{"device": rng.randrange(8), "shares": shares}]
    return f"cpu-{rng.randrange(16):02d}", []


async def finish(dsn: str, jobs: Sequence[Planned], rng: random.Random) -> None:
    """Make the submitted ``jobs`` finished runs of the last week: state, times, events and
    released placements, in bulk."""
    now = datetime.now(UTC)
    week = timedelta(days=7).total_seconds()
    updates: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    placements: list[tuple[Any, ...]] = []
    for order, job in enumerate(jobs):  # submit order is time order
        created = now - timedelta(seconds=week * (1 - order / len(jobs)) + 3600)
        admitted = started = None
        if job.ran:
            admitted = created + timedelta(seconds=rng.uniform(1, 900))
            started = admitted + timedelta(seconds=rng.uniform(5, 90))
            finished = started + timedelta(seconds=rng.uniform(300, 6 * 3600))
        else:
            finished = created + timedelta(seconds=rng.uniform(30, 3600))
        finished = min(finished, now - timedelta(seconds=60))
        reason, message = {
            JobState.SUCCEEDED: (Reason.WORKER0_SUCCEEDED.value, "worker-0 exited 0"),
            JobState.FAILED: (Reason.BACKOFF_LIMIT_EXCEEDED.value, "worker-0 exited 1, 3 times"),
            JobState.CANCELLED: ("Cancelled", "cancelled by someone@example.com"),
        }[job.fate or JobState.SUCCEEDED]
        ident = uuid.UUID(job.id)
        submitter = "bench@example.com"
        events.append(
            (ident, job.tenant, "submitted", None, "queued", None, None, submitter, "{}", created)
        )
        updates.append((ident, job.fate, reason, message, created, admitted, started, finished))
        if admitted is not None and started is not None:
            where = {}
            for pod, index, role in pods_of(job):
                node, gpu = place(role, rng)
                where[pod] = node
                placements.append(
                    (
                        ident,
                        0,
                        pod,
                        role.name,
                        index,
                        node,
                        role.cpu * 1000,
                        role.memory_gib * GIB,
                        round(role.gpu * GPU_SHARES_PER_DEVICE),
                        json.dumps(gpu),
                        admitted,
                        started,
                        finished,
                    )
                )
            data = json.dumps({"placements": where})
            events.append(
                (
                    ident,
                    job.tenant,
                    "admitted",
                    "queued",
                    "admitted",
                    None,
                    None,
                    None,
                    data,
                    admitted,
                )
            )
            events.append(
                (
                    ident,
                    job.tenant,
                    "running",
                    "admitted",
                    "running",
                    Reason.ALL_REPLICAS_RUNNING.value,
                    None,
                    None,
                    "{}",
                    started,
                )
            )
            before = "running"
        else:
            before = "queued"
        actor = "someone@example.com" if job.fate is JobState.CANCELLED else None
        kind = str(job.fate)
        events.append(
            (ident, job.tenant, kind, before, kind, reason, message, actor, "{}", finished)
        )
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                """
                UPDATE jobs j SET state = u.state, reason = u.reason, message = u.message,
                       created_at = u.created, updated_at = u.finished, queued_at = u.created,
                       admitted_at = u.admitted, started_at = u.started, finished_at = u.finished,
                       queue_position = NULL, tenant_queue_position = NULL
                FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                            $6::timestamptz[], $7::timestamptz[], $8::timestamptz[])
                     AS u(id, state, reason, message, created, admitted, started, finished)
                WHERE j.id = u.id
                """,
                *map(list, zip(*updates, strict=True)),
            )
            # job_events refuses UPDATE: the 'submitted' events are written again, backdated.
            await conn.execute(
                "DELETE FROM job_events WHERE job_id = ANY($1::uuid[]) AND type = 'submitted'",
                [row[0] for row in updates],
            )
            await conn.copy_records_to_table(
                "job_events",
                records=events,
                columns=[
                    "job_id", "tenant", "type", "from_state", "to_state", "reason", "message",
                    "actor", "data", "created_at",
                ],
            )  # fmt: skip
            await conn.copy_records_to_table(
                "placements",
                records=placements,
                columns=[
                    "job_id", "attempt", "pod_name", "role", "replica_index", "node",
                    "cpu_millis", "memory_bytes", "gpu_shares", "gpu", "created_at",
                    "started_at", "released_at",
                ],
            )  # fmt: skip
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def admit(engine: AsyncEngine, nodes: tuple[Node, ...], dsn: str) -> int:
    """Real admission cycles until one admits nothing, then the queue positions; then about 70 %
    of the admitted jobs run. How many cycles it took."""
    queue = LeaderQueue()
    cycles = 0
    while True:
        cycles += 1
        result = await run_cycle(engine, nodes, queue, clock=time.time, starvation_seconds=300.0)
        if not result.admitted or cycles >= 500:
            break
    await write_places(engine, queue, places_to_write(result.snapshot, queue.jobs, queue))
    conn = await asyncpg.connect(dsn)
    try:
        admitted = await conn.fetch(
            "SELECT CAST(id AS text) AS id, attempt FROM jobs WHERE state = 'admitted' ORDER BY seq"
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    running = [r for i, r in enumerate(admitted) if i % 10 < 7]
    async with engine.begin() as conn_:
        await move(
            conn_,
            JobState.RUNNING,
            [
                Change(
                    job_id=r["id"],
                    from_state=JobState.ADMITTED,
                    attempt=r["attempt"],
                    reason=Reason.ALL_REPLICAS_RUNNING.value,
                )
                for r in running
            ],
            now=time.time(),
        )
    return cycles


async def seed(
    http: aiohttp.ClientSession, base: str, engine: AsyncEngine, dsn: str, args: argparse.Namespace
) -> tuple[str, float]:
    """Tenants, grants and jobs (module docstring); a running job's id, and the seconds taken."""
    began = time.perf_counter()
    rng = random.Random(args.seed)
    finished, live, caps = plan_jobs(args.jobs, rng)
    for tenant, cap in caps.items():
        quota = {
            "cpu": "100000",
            "memory": "1000Ti",
            "gpu": 1000,
            "max_running_jobs": cap,
            "max_queued_jobs": 1000000,
        }
        body = {"quota": quota, "max_priority": 50}
        async with http.put(f"{base}/v1/admin/tenants/{tenant}", json=body) as response:
            if response.status not in (200, 201):
                raise SystemExit(f"tenant {tenant}: HTTP {response.status} {await response.text()}")
        grants = {
            "groups": {f"{tenant}-team": "submitter", f"{tenant}-leads": "tenant-admin"},
            "users": {f"auditor@{tenant}.example": "viewer"},
        }
        async with http.put(f"{base}/v1/admin/tenants/{tenant}/grants", json=grants) as response:
            if response.status != 200:
                raise SystemExit(f"grants {tenant}: HTTP {response.status} {await response.text()}")
    await submit(http, base, finished)
    await finish(dsn, finished, rng)
    await submit(http, base, live)
    cycles = await admit(engine, cluster(), dsn)
    print(f"seeded in {time.perf_counter() - began:.1f} s ({cycles} admission cycles)", flush=True)
    conn = await asyncpg.connect(dsn)
    try:
        running = await conn.fetchval(
            "SELECT CAST(j.id AS text) FROM jobs j WHERE j.state = 'running' AND EXISTS "
            "(SELECT 1 FROM placements p WHERE p.job_id = j.id AND p.gpu_shares > 0 "
            "AND p.released_at IS NULL) ORDER BY j.seq DESC LIMIT 1"
        ) or await conn.fetchval(
            "SELECT CAST(id AS text) FROM jobs WHERE state = 'running' ORDER BY seq DESC LIMIT 1"
        )
    finally:
        await conn.close()
    if running is None:
        raise SystemExit("no job runs after seeding")
    return str(running), time.perf_counter() - began


async def describe(dsn: str) -> list[str]:
    """The machine and what was seeded, as lines."""
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        states = await conn.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        tenants = await conn.fetch(
            "SELECT tenant, count(*) AS n FROM jobs GROUP BY tenant ORDER BY n DESC"
        )
        counts = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM job_events) AS events,
                   (SELECT count(*) FROM placements) AS placements,
                   (SELECT count(*) FROM placements WHERE released_at IS NULL) AS live,
                   (SELECT count(*) FROM placements WHERE released_at IS NULL
                        AND gpu_shares > 0 AND gpu_shares < 100) AS shares,
                   (SELECT count(*) FROM jobs WHERE queue_position IS NOT NULL) AS positioned,
                   (SELECT count(*) FROM jobs WHERE labels <> '{}') AS labelled
            """
        )
    finally:
        await conn.close()
    by_state = {row["state"]: row["n"] for row in states}
    order = [s.value for s in JobState]
    return [
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, PostgreSQL {version}",
        "jobs by state: "
        + ", ".join(f"{s} {by_state.get(s, 0)}" for s in order)
        + f" (total {sum(by_state.values())})",
        "jobs by tenant: " + ", ".join(f"{r['tenant']} {r['n']}" for r in tenants),
        f"job_events {counts['events']}, placements {counts['placements']} (live "
        f"{counts['live']}, of them {counts['shares']} on a fraction of a shared GPU), queued "
        f"with a position {counts['positioned']}, jobs with labels {counts['labelled']}",
    ]


# -- measuring ----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Sample:
    seconds: list[float] = field(default_factory=list)
    size: int = 0
    errors: int = 0
    first_error: str = ""

    def ms(self, q: float) -> float:
        if not self.seconds:
            return float("nan")
        ordered = sorted(self.seconds)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True, kw_only=True)
class Case:
    label: str
    who: str  # admin, cookie, viewer
    page: str
    api: str


async def fetch(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], sample: Sample | None
) -> None:
    started = time.perf_counter()
    async with http.get(url, headers=headers, allow_redirects=False) as response:
        body = await response.read()
        status = response.status
    elapsed = time.perf_counter() - started
    if sample is None:
        return
    if status != 200:
        sample.errors += 1
        sample.first_error = sample.first_error or f"{url}: HTTP {status} {body[:300]!r}"
        return
    sample.seconds.append(elapsed)
    sample.size = len(body)


async def measure(
    http: aiohttp.ClientSession,
    base: str,
    case: Case,
    headers: dict[str, str],
    args: argparse.Namespace,
) -> tuple[Sample, Sample]:
    """The page and its API call, alternating request by request."""
    page, api = Sample(), Sample()
    html = {**headers, "Accept": "text/html"}
    plain = {**headers, "Accept": "application/json"}
    for index in range(args.warmup + args.requests):
        counted = index >= args.warmup
        await fetch(http, base + case.page, html, page if counted else None)
        await fetch(http, base + case.api, plain, api if counted else None)
    return page, api


@dataclass(kw_only=True)
class Breakdown:
    calls: list[tuple[str, float]] = field(default_factory=list)
    render: float = 0.0


def instrument() -> Breakdown:
    """Count and time the API calls and the rendering of the pages (``pages.api_get``,
    ``pages.render``) from now on, in this process."""
    seen = Breakdown()
    api_get, render = pages.api_get, pages.render

    async def timed_api_get(request: web.Request, path: str, query: Any = None) -> Any:
        started = time.perf_counter()
        try:
            return await api_get(request, path, query)
        finally:
            seen.calls.append((path, time.perf_counter() - started))

    def timed_render(*a: Any, **kw: Any) -> web.Response:
        started = time.perf_counter()
        try:
            return render(*a, **kw)
        finally:
            seen.render += time.perf_counter() - started

    pages.api_get = timed_api_get  # type: ignore[assignment]
    pages.render = timed_render  # type: ignore[assignment]
    return seen


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "-"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in [header, *rows]]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


async def run(args: argparse.Namespace, root: Path) -> None:
    cleanup: list[Callable[[], Awaitable[None]]] = []
    try:
        url = await open_database(root, cleanup)
        engine = make_engine(url, pool_size=10)
        cleanup.append(engine.dispose)
        await upgrade(engine)
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        settings = Settings(
            data_dir=root,
            database=DatabaseSettings(url=url),
            backend=BackendSettings(kind="static", nodes_file=root / "nodes.yaml"),
            auth=AuthSettings(issuer_key=tokens.shared_key(root)),
        )
        app = make_app(settings, engine, StaticInventory(cluster()))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        cleanup.append(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        admin = {"Authorization": f"Bearer {tokens.admin_token(settings)}"}
        viewer_token = tokens.token(
            settings, user=f"viewer@{VIEWED}.example", roles={VIEWED: "viewer"}
        )
        viewer = {"Authorization": f"Bearer {viewer_token}"}
        connector = aiohttp.TCPConnector(limit=8)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
        ) as http:
            http_admin = aiohttp.ClientSession(
                headers=admin, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
            )
            async with http_admin:
                running, _ = await seed(http_admin, base, engine, dsn, args)
            cookie = {"Cookie": f"{SESSION_COOKIE}={await sign_in(http, base, settings)}"}
            who = {"admin": admin, "cookie": cookie, "viewer": viewer}
            top = max(TENANTS, key=TENANTS.__getitem__)
            cases = [
                Case(label="/ui/queue", who="admin", page="/ui/queue", api="/v1/queue?limit=100"),
                Case(label="/ui/queue", who="cookie", page="/ui/queue", api="/v1/queue?limit=100"),
                Case(label="/ui/queue", who="viewer", page="/ui/queue", api="/v1/queue?limit=100"),
                Case(
                    label="/ui/jobs",
                    who="admin",
                    page="/ui/jobs",
                    api="/v1/jobs?limit=50&order=newest",
                ),
                Case(
                    label="/ui/jobs",
                    who="viewer",
                    page="/ui/jobs",
                    api="/v1/jobs?limit=50&order=newest",
                ),
                Case(
                    label=f"/ui/jobs?state=succeeded&tenant={top}",
                    who="admin",
                    page=f"/ui/jobs?state=succeeded&tenant={top}",
                    api=f"/v1/jobs?state=succeeded&tenant={top}&limit=50&order=newest",
                ),
                Case(
                    label="/ui/jobs/{running id}",
                    who="admin",
                    page=f"/ui/jobs/{running}",
                    api=f"/v1/jobs/{running}",
                ),
                Case(label="/ui/cluster", who="admin", page="/ui/cluster", api="/v1/cluster"),
                Case(
                    label="/ui/tenants", who="admin", page="/ui/tenants", api=f"/v1/tenants/{top}"
                ),
                Case(label="/ui/admin", who="admin", page="/ui/admin", api="/v1/admin/tenants"),
            ]
            results = []
            for case in cases:
                page, api = await measure(http, base, case, who[case.who], args)
                results.append((case, page, api))
                print(f"  measured {case.label} as {case.who}", flush=True)
            seen = instrument()
            breakdown = []
            for case in cases:
                seen.calls.clear()
                seen.render = 0.0
                started = time.perf_counter()
                await fetch(http, base + case.page, {**who[case.who], "Accept": "text/html"}, None)
                total = time.perf_counter() - started
                breakdown.append((case, list(seen.calls), seen.render, total))
        for line in await describe(dsn):
            print(line)
    finally:
        for step in reversed(cleanup):
            await step()
    report(results, breakdown, args)


async def sign_in(http: aiohttp.ClientSession, base: str, settings: Settings) -> str:
    """A session cookie, as a browser gets one from a `muster ui` link."""
    code = mint_sign_in_code(
        local_key_set(settings.issuer_key_file),
        subject="admin@example.com",
        groups=[settings.auth.admin_groups[0]],
        extra={"email": "admin@example.com"},
    )
    async with http.get(f"{base}/ui/login", params={"code": code}, allow_redirects=False) as r:
        session = r.cookies.get(SESSION_COOKIE)
        if r.status != 303 or session is None:
            raise SystemExit(f"sign-in link: HTTP {r.status}, no {SESSION_COOKIE} cookie")
        return session.value


def report(
    results: Sequence[tuple[Case, Sample, Sample]],
    breakdown: Sequence[tuple[Case, list[tuple[str, float]], float, float]],
    args: argparse.Namespace,
) -> None:
    print(
        f"\n{args.jobs} jobs; {args.requests} requests per page and per API call after "
        f"{args.warmup} warm-ups, alternating; ms; goal: page p95 < {GOAL_MS:.0f} ms"
    )
    rows = []
    for case, page, api in results:
        verdict = "PASS" if page.ms(0.95) < GOAL_MS and not page.errors else "FAIL"
        rows.append(
            [
                case.label,
                case.who,
                f"{page.ms(0.5):.1f}",
                f"{page.ms(0.95):.1f}",
                f"{page.ms(1.0):.1f}",
                f"{page.size / 1024:.1f}",
                case.api.replace(case.page.removeprefix("/ui/jobs/"), "{id}")
                if case.page.startswith("/ui/jobs/")
                else case.api,
                f"{api.ms(0.5):.1f}",
                f"{api.ms(0.95):.1f}",
                f"{api.size / 1024:.1f}",
                ratio(page.ms(0.5), api.ms(0.5)),
                ratio(page.ms(0.95), api.ms(0.95)),
                verdict,
            ]
        )
    header = [
        "page", "as", "p50", "p95", "max", "KiB", "API call", "p50", "p95", "KiB",
        "page/API p50", "p95", f"< {GOAL_MS:.0f} ms",
    ]  # fmt: skip
    print(table(rows, header))
    for case, page, api in results:
        for sample in (page, api):
            if sample.errors:
                print(
                    f"{sample.errors} errors ({case.label} as {case.who}); first: {sample.first_error}"
                )
    print(
        "\none instrumented request per page: its API calls (run concurrently where the page gathers them) and its rendering"
    )
    rows = []
    for case, calls, render, total in breakdown:
        slowest = max(calls, key=lambda c: c[1]) if calls else ("-", 0.0)
        rows.append(
            [
                case.label,
                case.who,
                f"{total * 1000:.1f}",
                str(len(calls)),
                f"{sum(s for _, s in calls) * 1000:.1f}",
                f"{slowest[1] * 1000:.1f}",
                slowest[0].replace(case.page.removeprefix("/ui/jobs/"), "{id}"),
                f"{render * 1000:.1f}",
            ]
        )
    print(table(rows, ["page", "as", "total", "API calls", "sum", "slowest", "which", "render"]))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, help="jobs to seed (10000; --quick: 2000)")
    parser.add_argument("--requests", type=int, help="timed requests per page (30; --quick: 15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first (3)")
    parser.add_argument("--seed", type=int, default=7, help="of the random mix (7)")
    parser.add_argument("--quick", action="store_true", help="2,000 jobs, 15 requests per page")
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (2000 if args.quick else 10000)
    args.requests = args.requests or (15 if args.quick else 30)
    if args.jobs < 100 or args.requests < 1 or args.warmup < 0:
        parser.error("--jobs must be at least 100, --requests positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="mu-", dir="/tmp"))
    try:
        asyncio.run(run(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
