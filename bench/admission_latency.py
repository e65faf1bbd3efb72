"""Admission under a deep queue: refill latency, leader CPU per cycle, and the gateway's memory.

What it measures, against a real embedded PostgreSQL (``gateway.db.embedded``), at a shallow and
a deep queue (1,000 and 100,000 queued jobs; ``--quick``: 1,000 and 10,000), each depth in a
fresh database of one server, one depth after the other in one process:

(a) refill latency, the leader's ``muster_admission_refill_seconds``: from capacity coming free
    (a job's end committed by the reconciler) to the commit of the next admission cycle that
    admitted a job. A ``LoopRuntime`` (leadership, LISTEN/NOTIFY, the real reconciler, admission
    and its queue-positions writer, webhook delivery) runs in this process with a
    ``SimulatedRuntime`` over a ``StaticInventory`` of 50 nodes x 32 CPUs. 30 tenants with
    quotas larger than the cluster share the queue; a job is 1 pod (3 of 4 jobs) or 5 pods of
    ``--pod-cpus`` CPUs (8: four pods a node), whose command is ``sleep S`` with S in
    0.2 .. 1.0 s, so the cluster stays full and jobs end all the time (about 120 a second).
    The admission and reconciler ticks are an hour: only wake-ups drive them. A feeder submits
    (``Submits.submit_together``, then the API's NOTIFY) as many jobs as were admitted, every
    0.2 s, so the queue keeps its depth; its jobs are checked as the API checks them
    (``check_job_spec``, ``pod_requests``) on the event loop, as the API would. The garbage
    collector is tuned as ``muster serve`` tunes it. Every sample the histogram takes is also
    kept raw (its ``observe`` is wrapped). The window (``--seconds``) opens once the leader's
    first cycle (which loads the queue whole) and the first pass that writes every queue
    position are over, and ``--warmup`` seconds have passed; samples taken during that first
    pass are reported apart. 120 s by default: a pass over the queue positions rests 9x as long
    as it took, and at 100,000 queued one takes seconds, so the window holds one.
(b) leader CPU per admission cycle: after (a), on the same database (the cluster full, the queue
    at its depth), a new ``AdmissionLoop`` is driven by hand with nothing else running in this
    process. Its first cycle loads the queue whole (reported apart); then ``--cycles`` times: one
    admitted or running job is ended through the transition writer (``gateway.db.transitions.move``
    to succeeded, which releases its placements), then one ``AdmissionLoop.cycle()`` is timed:
    ``time.process_time`` (this process's CPU, every thread) and wall time. Then one pass of
    ``write_places`` (every queue position that changed; O(queue) by design, on its own schedule
    in the loop) is timed, for context.
    From the leader's start to the end of (b), PostgreSQL logs statements slower than
    ``--slow-ms`` and every autovacuum (``ALTER SYSTEM`` on this script's own server); they are
    printed, grouped, after the tables.
(c) ``--rss``: a real ``muster serve`` (static backend, one node of 8 CPUs: one five-pod job is
    admitted and every other stays queued), ``--rss-jobs`` five-pod jobs submitted through
    ``POST /v1/jobs:batch`` (``--rss-batch`` jobs a request, two requests in flight), then the
    gateway's resident memory (psutil: the gateway and its children; PostgreSQL is started by
    this script, and left out) once the leader holds the queue (``muster_admission_cycle_jobs``
    in /metrics) and every queue position is written; then the same after a restart, where the
    new leader loads the queue whole from the database. Peak RSS is the kernel's high-water mark
    (VmHWM).

Run it (from the repository root, in the virtual environment; about 10 minutes, --quick 2)::

    python bench/admission_latency.py [--quick] [--seconds 120] [--cycles 60] [--pod-cpus 8]
    python bench/admission_latency.py --rss [--rss-jobs 100000] [--rss-batch 1000]

What it prints: progress lines; for (a) and (b) one table each, every figure at both depths with
the ratio of the deep to the shallow one and, where there is one, its goal, met or MISSED; the
slow statements and autovacuum runs PostgreSQL logged at each depth; then the warnings and errors
the gateway's loggers wrote, counted. For (c) a table of RSS by stage, the verdict, and the
gateway's logged warnings and errors. Goals: (a) p50 <= 50 ms and p99 <= 250 ms at 100,000
queued; (b) CPU per cycle at 100,000 queued <= 2x that at 1,000; (c) RSS <= 300 MB (418 MB
before).

Invariants and assumptions:
- Every process it starts (PostgreSQL, gateways) is stopped before it exits, in ``finally``, on
  SIGINT and SIGTERM too (``timeout`` may end it), not on SIGKILL.
- Each depth has its own database, so neither sees the other's jobs or events; both depths run on
  the same machine in the same process: compare the two, not figures from other machines.
- The latency is the gateway's own figure (its histogram's samples). A wake-up whose cycle
  admitted nothing takes no sample (the metric's definition), so the figures are of the cycles
  that refilled capacity.
- The in-process runtime takes the leader lock before its loops start (see ``latency_run``).
- ``SimulatedRuntime`` runs no process: the CPU is that of the gateway's loops and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.api.serializers import job_view
from gateway.backends.nodes_file import StaticInventory, parse_nodes
from gateway.backends.simulated import SimulatedRuntime
from gateway.db import tenants
from gateway.db.channels import Channel
from gateway.db.embedded import EmbeddedPostgres
from gateway.db.engine import make_engine
from gateway.db.migrate import upgrade
from gateway.db.notify import Notifier
from gateway.db.submits import Submission, Submits
from gateway.db.transitions import Change, move
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.pods import pod_requests
from gateway.domain.lifecycle.states import JobState
from gateway.domain.scheduling.quota import Quota
from gateway.domain.tenants import TenantSettings
from gateway.loops.admission import AdmissionLoop
from gateway.loops.runtime import LoopRuntime
from gateway.server import _tune_garbage_collector as tune_gc_as_serve_does
from gateway.settings import AdmissionSettings, WebhookSettings

# -- the workload --------------------------------------------------------------------------------

NODES = 50
NODE_CPUS = 32
NODE_MEMORY_GI = 128
TENANTS = 30
POD_CPUS = 8  # --pod-cpus: 4 pods a node, about 120 jobs admitted a second on this cluster
FIVE_POD_SHARE = 0.25  # the other jobs have one pod
SLEEPS = (0.2, 0.4, 0.6, 0.8, 1.0)
BATCH = 1000  # jobs per submit_together, the API's limit for a batch
FEED_EVERY = 0.2
BIG = 10**12
STARVATION_SECONDS = 300.0

# -- goals ---------------------------------------------------------------------------------------

GOAL_P50 = 0.050
GOAL_P99 = 0.250
GOAL_CPU_RATIO = 2.0
GOAL_RSS_MB = 300.0
PREVIOUS_RSS_MB = 418.0


class Counted(logging.Handler):
    """Keeps every warning and error the gateway's loggers write, to print them counted."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().splitlines()[0][:160]
        self.lines[f"{record.levelname} {record.name}: {message}"] += 1


def pct(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0..1) of ``values``; NaN when there is none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def tenant_names() -> list[str]:
    return [f"t{index:02d}" for index in range(TENANTS)]


def nodes_document() -> dict[str, Any]:
    return {
        "nodes": [
            {"name": f"node-{i:02d}", "cpu": str(NODE_CPUS), "memory": f"{NODE_MEMORY_GI}Gi"}
            for i in range(NODES)
        ]
    }


def job_document(index: int, rng: random.Random, pod_cpus: int) -> dict[str, Any]:
    pods = 5 if rng.random() < FIVE_POD_SHARE else 1
    return {
        "name": f"j{index}",
        "tenant": tenant_names()[index % TENANTS],
        "framework": "generic",
        "replicas": {
            "worker": {
                "count": pods,
                "image": "img",
                "command": ["sleep", str(rng.choice(SLEEPS))],
                "resources": {"cpu": str(pod_cpus), "memory": f"{pod_cpus}Gi"},
            }
        },
    }


def submission(index: int, rng: random.Random, pod_cpus: int) -> Submission:
    """A job checked as the API checks it (``check_job_spec``, ``pod_requests``)."""
    spec = check_job_spec(job_document(index, rng, pod_cpus))
    assert not isinstance(spec, list), spec
    return Submission(
        spec=spec, body_hash="", idempotency_key=None, actor="bench", pods=pod_requests(spec)
    )


# -- the database --------------------------------------------------------------------------------


class Server:
    """One embedded PostgreSQL; a migrated template database, and a fresh copy per depth."""

    def __init__(self, root: Path) -> None:
        self.embedded = EmbeddedPostgres(root)
        self.url = ""
        self.made = 0

    async def start(self) -> None:
        self.url = await self.embedded.start()
        engine = make_engine(self.url, pool_size=1)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    def url_of(self, database: str) -> str:
        return make_url(self.url).set(database=database).render_as_string(hide_password=False)

    def dsn_of(self, database: str) -> str:
        url = make_url(self.url_of(database)).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    async def fresh(self) -> str:
        """A new database copied from the migrated one; its SQLAlchemy URL."""
        self.made += 1
        name = f"bench_{self.made}"
        template = make_url(self.url).database
        conn = await asyncpg.connect(self.dsn_of("postgres"))
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            await conn.close()
        return self.url_of(name)

    def postgres_cpu(self) -> float:
        """CPU seconds of the server and its live backends so far."""
        total = 0.0
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            pid = int((self.embedded.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
            main = psutil.Process(pid)
            for process in (main, *main.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    total += times.user + times.system
        return total

    @property
    def log_file(self) -> Path:
        return self.embedded.pgdata / "log"

    async def slow_log(self, threshold_ms: int | None) -> int:
        """Log statements slower than ``threshold_ms`` and every autovacuum (None: stop);
        where the server's log ends now."""
        settings = {
            "log_min_duration_statement": threshold_ms,
            "log_autovacuum_min_duration": None if threshold_ms is None else 0,
            "log_parameter_max_length": None if threshold_ms is None else 0,
        }
        conn = await asyncpg.connect(self.dsn_of("postgres"))
        try:
            for name, value in settings.items():
                await conn.execute(
                    f"ALTER SYSTEM RESET {name}"
                    if value is None
                    else f"ALTER SYSTEM SET {name} = {int(value)}"
                )
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        await asyncio.sleep(0.2)  # the backends reload their settings
        return self.log_file.stat().st_size

    def slow_since(self, offset: int) -> list[tuple[str, int, float, float]]:
        """What the server logged past ``offset``: (what, count, mean ms, max ms) of slow
        statements (by their first words) and of autovacuum runs (by table), most time first."""
        with self.log_file.open("rb") as log_file:
            log_file.seek(offset)
            lines = log_file.read().decode("utf-8", "replace").splitlines()
        entries: list[str] = []
        for line in lines:
            if line[:1] in ("\t", " ") and entries:
                entries[-1] += " " + line.strip()
            else:
                entries.append(line)
        seen: dict[str, list[float]] = {}
        for entry in entries:
            if found := _SLOW.search(entry):
                words = " ".join(found[2].split())[:110]
                seen.setdefault(words, []).append(float(found[1]))
            elif found := _VACUUM.search(entry):
                elapsed = _ELAPSED.search(entry)
                took = float(elapsed[1]) * 1000 if elapsed else math.nan
                seen.setdefault(f"automatic {found[1]} of {found[2]}", []).append(took)
        summary = [(k, len(v), mean(v), max(v)) for k, v in seen.items()]
        return sorted(summary, key=lambda row: -(row[1] * (row[2] if row[2] == row[2] else 0)))

    async def stop(self) -> None:
        await self.embedded.stop()


_SLOW = re.compile(
    r"duration: ([\d.]+) ms\s+(?:statement|execute [^:]*|parse [^:]*|bind [^:]*):(.*)"
)
_VACUUM = re.compile(r"automatic (vacuum|analyze) of table \"([^\"]+)\"")
_ELAPSED = re.compile(r"elapsed: ([\d.]+) s")


async def make_tenants(engine: AsyncEngine) -> None:
    quota = Quota(
        cpu_millis=BIG,
        memory_bytes=BIG * 1024,
        gpu_shares=0,
        max_running_jobs=10**6,
        max_queued_jobs=10**6,
    )
    for name in tenant_names():
        await tenants.put(
            engine,
            name,
            TenantSettings(namespace=name, quota=quota, weight=1.0),
            actor="bench",
        )


class Jobs:
    """Makes and submits the workload's jobs, each with a new name."""

    def __init__(self, submits: Submits, seed: int, pod_cpus: int) -> None:
        self.submits = submits
        self.pod_cpus = pod_cpus
        self.rng = random.Random(seed)
        self.next = 0
        self.submitted = 0

    async def submit(self, count: int) -> None:
        """Check ``count`` new jobs as the API does and write them as one batch request."""
        batch = [submission(self.next + i, self.rng, self.pod_cpus) for i in range(count)]
        self.next += count
        outcomes = await self.submits.submit_together(batch)
        refused = [o for o in outcomes if isinstance(o, Exception)]
        assert not refused, refused[:3]
        self.submitted += count

    async def fill(self, count: int, *, concurrency: int = 2) -> float:
        """Submit ``count`` jobs in batches; the seconds it took."""
        started = time.perf_counter()
        sizes = [min(BATCH, count - start) for start in range(0, count, BATCH)]

        async def worker() -> None:
            while sizes:
                await self.submit(sizes.pop())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def queued_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT count(*) FROM jobs WHERE state = 'queued'")))


# -- (a) refill latency --------------------------------------------------------------------------


@dataclass
class Latency:
    depth: int
    fill_seconds: float = 0.0
    load_seconds: float = 0.0  # the first cycle's (catch-up to commit) of the new leader
    first_places_seconds: float = 0.0  # the first pass over every queue position
    window: float = 0.0
    samples: list[float] = field(default_factory=list)
    #: The samples taken while a queue-positions pass was writing (or computing) rows.
    during_places: list[float] = field(default_factory=list)
    outside_places: list[float] = field(default_factory=list)
    #: Samples before the window, while the first pass over every queue position ran.
    first_places: list[float] = field(default_factory=list)
    cycles: int = 0
    admitting_cycles: int = 0
    admitted: int = 0
    cycle_seconds: list[float] = field(default_factory=list)
    places_passes: list[tuple[float, int]] = field(default_factory=list)  # (seconds, rows)
    fed: int = 0
    depths: list[int] = field(default_factory=list)  # the queue's depth, every feeder tick
    cpu_share: float = 0.0  # this process's CPU over the window, in cores
    postgres_share: float = 0.0
    gc_pauses: list[float] = field(default_factory=list)  # full collections in the window
    queued_after: int = 0
    crashed: bool = False


async def wait_until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {limit:.0f} s")
        await asyncio.sleep(0.05)


async def latency_run(
    server: Server,
    engine: AsyncEngine,
    inventory: StaticInventory,
    jobs: Jobs,
    result: Latency,
    *,
    seconds: float,
    warmup: float,
) -> None:
    pods = SimulatedRuntime(inventory)
    runtime = LoopRuntime(
        engine,
        inventory=inventory,
        pods=pods,
        admission=AdmissionSettings(interval=3600.0, starvation_seconds=STARVATION_SECONDS),
        webhooks=WebhookSettings(),
        render_job=job_view,
    )
    assert runtime.reconciler is not None
    runtime.reconciler.interval = 3600.0
    admission = runtime.admission
    jobs.submits.on_queued = runtime.queued
    notifier = Notifier(engine, Channel.JOBS)

    window: list[float] = []  # [start] once the window opened, [start, end] once closed
    places_done = 0
    places_open: list[float] = []  # start of the places pass in progress, if any

    def in_window() -> bool:
        return len(window) == 1

    # Every sample of the histogram, kept raw.
    histogram = admission.freed_to_admitted
    observe = histogram.observe

    def observed(amount: float, exemplar: Any = None) -> None:
        if in_window():
            result.samples.append(amount)
            (result.during_places if places_open else result.outside_places).append(amount)
        elif places_open and places_done == 0:
            result.first_places.append(amount)
        observe(amount, exemplar)

    histogram.observe = observed  # type: ignore[method-assign]

    # Every cycle: what it admitted (for the feeder) and how long it took.
    admitted_total = 0
    cycle = admission.cycle

    async def counted_cycle() -> Any:
        nonlocal admitted_total
        done = await cycle()
        admitted_total += len(done.admitted)
        if in_window():
            result.cycles += 1
            result.admitted += len(done.admitted)
            result.admitting_cycles += bool(done.admitted)
            result.cycle_seconds.append(done.seconds)
        return done

    admission.cycle = counted_cycle  # type: ignore[method-assign]

    write_places = admission.write_places

    async def timed_places() -> int:
        nonlocal places_done
        started = time.perf_counter()
        places_open.append(started)
        try:
            rows = await write_places()
        finally:
            places_open.clear()
        took = time.perf_counter() - started
        if places_done == 0:
            result.first_places_seconds = took
        elif in_window():
            result.places_passes.append((took, rows))
        places_done += 1
        return rows

    admission.write_places = timed_places  # type: ignore[method-assign]

    def gc_timer(phase: str, info: dict[str, Any], began: list[float] = [0.0]) -> None:  # noqa: B006
        if info.get("generation") != 2:
            return
        if phase == "start":
            began[0] = time.perf_counter()
        elif in_window():
            result.gc_pauses.append(time.perf_counter() - began[0])

    fed = 0

    async def feeder() -> None:
        """Every tick, submit what was admitted since (a batch at most), so the queue keeps its
        depth; the queue's depth is noted before."""
        nonlocal fed
        while True:
            await asyncio.sleep(FEED_EVERY)
            missing = admitted_total - fed
            if in_window():
                result.depths.append(result.depth - missing)
            if missing > 0:
                count = min(missing, BATCH)
                await jobs.submit(count)
                fed += count
                notifier.poke()  # as the API does after a submit: NOTIFY muster_jobs

    crashed = asyncio.Event()
    gc.callbacks.append(gc_timer)
    tasks: list[asyncio.Task[None]] = []
    try:
        started = time.perf_counter()
        # Lead before the loops start, so that the listener's first hand-offs find a leader and
        # the run does not hang on who wins that race. (Trees before 2026-12-05 09:41 hung here
        # at 100 % CPU when the listener won: a follower's ``AdmissionLoop.run`` kept ``freed``
        # set and spun without yielding the event loop.)
        assert await runtime.leadership.check(), "another process holds the leader lock"
        async with runtime.running(on_crash=crashed.set):
            tasks.append(asyncio.create_task(notifier.run(), name="notifier"))
            await wait_until(lambda: admission.cycles >= 1 or crashed.is_set(), 600, "a cycle")
            assert admission.last is not None
            result.load_seconds = admission.last.seconds
            tasks.append(asyncio.create_task(feeder(), name="feeder"))
            # Warm-up: the first pass over every queue position, then ``warmup`` seconds.
            await wait_until(lambda: places_done >= 1 or crashed.is_set(), 900, "queue places")
            await asyncio.sleep(max(0.0, warmup - (time.perf_counter() - started)))
            print(
                f"depth {result.depth:,}: leader loaded in {result.load_seconds:.2f} s, first "
                f"places pass {result.first_places_seconds:.2f} s; window opens",
                flush=True,
            )
            cpu, pg = time.process_time(), server.postgres_cpu()
            window.append(time.perf_counter())
            fed_before = fed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(crashed.wait(), seconds)
            window.append(time.perf_counter())
            result.window = window[1] - window[0]
            result.cpu_share = (time.process_time() - cpu) / result.window
            result.postgres_share = (server.postgres_cpu() - pg) / result.window
            result.fed = fed - fed_before
            result.crashed = crashed.is_set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks.clear()
    finally:
        gc.callbacks.remove(gc_timer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pods.close()
        jobs.submits.on_queued = None
    result.queued_after = await queued_count(engine)


# -- (b) leader CPU per cycle --------------------------------------------------------------------


@dataclass
class CycleCost:
    depth: int
    queued: int = 0
    load_wall: float = 0.0
    load_cpu: float = 0.0
    load_admitted: int = 0
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    admitted: list[int] = field(default_factory=list)
    places_wall: float = 0.0
    places_cpu: float = 0.0
    places_rows: int = 0


async def timed(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float, float]:
    """``work()``'s answer, wall seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    answer = await work()
    return answer, time.perf_counter() - wall, time.process_time() - cpu


_ACTIVE = text(
    "SELECT CAST(id AS text) AS id, state, attempt FROM jobs WHERE state IN ('admitted', 'running')"
)


async def end_one(engine: AsyncEngine, rng: random.Random) -> None:
    """End one admitted or running job, as the reconciler would: succeeded, placements released."""
    async with engine.begin() as conn:
        active = (await conn.execute(_ACTIVE)).all()
        assert active, "no job holds capacity"
        chosen = rng.choice(active)
        moved = await move(
            conn,
            JobState.SUCCEEDED,
            [
                Change(
                    job_id=chosen.id,
                    from_state=JobState(chosen.state),
                    attempt=chosen.attempt,
                    reason="Completed",
                    message="ended by the benchmark",
                )
            ],
            now=time.time(),
        )
        assert moved == [chosen.id]


async def cycle_costs(
    engine: AsyncEngine, inventory: StaticInventory, result: CycleCost, *, cycles: int, seed: int
) -> None:
    loop = AdmissionLoop(
        engine,
        inventory,
        is_leader=lambda: True,
        interval=3600.0,
        starvation_seconds=STARVATION_SECONDS,
    )
    rng = random.Random(seed)
    gc.collect()
    first, result.load_wall, result.load_cpu = await timed(loop.cycle)
    result.queued = first.queued
    result.load_admitted = len(first.admitted)
    for _ in range(cycles):
        await end_one(engine, rng)
        done, wall, cpu = await timed(loop.cycle)
        result.wall.append(wall)
        result.cpu.append(cpu)
        result.admitted.append(len(done.admitted))
    result.places_rows, result.places_wall, result.places_cpu = await timed(loop.write_places)


# -- the run and its tables ----------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.1f} ms"


def ratio(deep: float, shallow: float) -> str:
    if math.isnan(deep) or math.isnan(shallow) or shallow == 0:
        return "-"
    return f"{deep / shallow:.2f}x"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def print_latency(shallow: Latency, deep: Latency) -> None:
    s, d = shallow, deep
    head = ["figure", f"{s.depth:,} queued", f"{d.depth:,} queued", "ratio", "goal", "verdict"]
    p50s, p50d = pct(s.samples, 0.5), pct(d.samples, 0.5)
    p99s, p99d = pct(s.samples, 0.99), pct(d.samples, 0.99)
    outside_s, outside_d = s.outside_places, d.outside_places

    def passes(r: Latency) -> str:
        if not r.places_passes:
            return "0"
        took = [t for t, _ in r.places_passes]
        rows = [float(n) for _, n in r.places_passes]
        busy = sum(took) / r.window if r.window else math.nan
        return f"{len(took)}, {mean(took):.2f} s, {mean(rows):,.0f}, {busy:.0%}"

    def per_s(r: Latency) -> str:
        return f"{r.admitted / r.window:.0f}" if r.window else "-"

    rows = [
        ["samples (refills)", f"{len(s.samples)}", f"{len(d.samples)}", "", "", ""],
        [
            "refill p50",
            ms(p50s),
            ms(p50d),
            ratio(p50d, p50s),
            f"<= {GOAL_P50 * 1000:.0f} ms",
            verdict(p50d <= GOAL_P50),
        ],
        [
            "refill p99",
            ms(p99s),
            ms(p99d),
            ratio(p99d, p99s),
            f"<= {GOAL_P99 * 1000:.0f} ms",
            verdict(p99d <= GOAL_P99),
        ],
        [
            "refill max",
            ms(max(s.samples, default=math.nan)),
            ms(max(d.samples, default=math.nan)),
            "",
            "",
            "",
        ],
        [
            "refill p99, no places pass running",
            ms(pct(outside_s, 0.99)),
            ms(pct(outside_d, 0.99)),
            "",
            "",
            "",
        ],
        [
            "samples during a places pass",
            f"{len(s.during_places)}",
            f"{len(d.during_places)}",
            "",
            "",
            "",
        ],
        [
            "cycles (admitting)",
            f"{s.cycles} ({s.admitting_cycles})",
            f"{d.cycles} ({d.admitting_cycles})",
            "",
            "",
            "",
        ],
        [
            "cycle p50 / p99 (catch-up to commit)",
            f"{ms(pct(s.cycle_seconds, 0.5))} / {ms(pct(s.cycle_seconds, 0.99))}",
            f"{ms(pct(d.cycle_seconds, 0.5))} / {ms(pct(d.cycle_seconds, 0.99))}",
            "",
            "",
            "",
        ],
        ["admitted/s (jobs)", per_s(s), per_s(d), "", "", ""],
        ["jobs fed during the window", f"{s.fed}", f"{d.fed}", "", "", ""],
        [
            "queue depth in the window, min / mean",
            f"{min(s.depths, default=0):,} / {mean(s.depths):,.0f}",
            f"{min(d.depths, default=0):,} / {mean(d.depths):,.0f}",
            "",
            "",
            "",
        ],
        ["queued after", f"{s.queued_after:,}", f"{d.queued_after:,}", "", "", ""],
        ["places passes in window: n, mean s, mean rows, busy", passes(s), passes(d), "", "", ""],
        [
            "refill p50 / p99 during the first places pass (warm-up)",
            f"{ms(pct(s.first_places, 0.5))} / {ms(pct(s.first_places, 0.99))} "
            f"({len(s.first_places)})",
            f"{ms(pct(d.first_places, 0.5))} / {ms(pct(d.first_places, 0.99))} "
            f"({len(d.first_places)})",
            "",
            "",
            "",
        ],
        [
            "full GC pauses in window",
            f"{len(s.gc_pauses)}, max {ms(max(s.gc_pauses, default=math.nan))}",
            f"{len(d.gc_pauses)}, max {ms(max(d.gc_pauses, default=math.nan))}",
            "",
            "",
            "",
        ],
        ["gateway CPU (cores)", f"{s.cpu_share:.2f}", f"{d.cpu_share:.2f}", "", "", ""],
        [
            "PostgreSQL CPU (cores)",
            f"{s.postgres_share:.2f}",
            f"{d.postgres_share:.2f}",
            "",
            "",
            "",
        ],
        ["setup: fill (s)", f"{s.fill_seconds:.1f}", f"{d.fill_seconds:.1f}", "", "", ""],
        [
            "setup: leader's first cycle, load (s)",
            f"{s.load_seconds:.2f}",
            f"{d.load_seconds:.2f}",
            "",
            "",
            "",
        ],
        [
            "setup: first places pass (s)",
            f"{s.first_places_seconds:.2f}",
            f"{d.first_places_seconds:.2f}",
            "",
            "",
            "",
        ],
        ["window (s)", f"{s.window:.1f}", f"{d.window:.1f}", "", "", ""],
    ]
    table(
        "(a) freed capacity -> next admission committed (muster_admission_refill_seconds)",
        head,
        rows,
    )
    if s.crashed or d.crashed:
        print("\nA loop crashed during the window: see the log lines below.")


def print_costs(shallow: CycleCost, deep: CycleCost) -> None:
    s, d = shallow, deep
    head = ["figure", f"{s.depth:,} queued", f"{d.depth:,} queued", "ratio", "goal", "verdict"]
    cpu_s, cpu_d = mean(s.cpu), mean(d.cpu)
    rows = [
        ["cycles timed", f"{len(s.cpu)}", f"{len(d.cpu)}", "", "", ""],
        [
            "CPU per cycle, mean",
            ms(cpu_s),
            ms(cpu_d),
            ratio(cpu_d, cpu_s),
            f"<= {GOAL_CPU_RATIO:.0f}x",
            verdict(cpu_d <= GOAL_CPU_RATIO * cpu_s),
        ],
        [
            "CPU per cycle, p99",
            ms(pct(s.cpu, 0.99)),
            ms(pct(d.cpu, 0.99)),
            ratio(pct(d.cpu, 0.99), pct(s.cpu, 0.99)),
            "",
            "",
        ],
        [
            "wall per cycle, mean",
            ms(mean(s.wall)),
            ms(mean(d.wall)),
            ratio(mean(d.wall), mean(s.wall)),
            "",
            "",
        ],
        [
            "wall per cycle, p99",
            ms(pct(s.wall, 0.99)),
            ms(pct(d.wall, 0.99)),
            ratio(pct(d.wall, 0.99), pct(s.wall, 0.99)),
            "",
            "",
        ],
        [
            "jobs admitted per cycle, mean",
            f"{mean(s.admitted):.2f}",
            f"{mean(d.admitted):.2f}",
            "",
            "",
            "",
        ],
        ["queue held at the load", f"{s.queued:,}", f"{d.queued:,}", "", "", ""],
        [
            "load (first cycle): wall",
            f"{s.load_wall:.3f} s",
            f"{d.load_wall:.3f} s",
            ratio(d.load_wall, s.load_wall),
            "(excluded above)",
            "",
        ],
        [
            "load (first cycle): CPU",
            f"{s.load_cpu:.3f} s",
            f"{d.load_cpu:.3f} s",
            ratio(d.load_cpu, s.load_cpu),
            "",
            "",
        ],
        [
            "places pass after: wall / CPU / rows",
            f"{s.places_wall:.2f} s / {s.places_cpu:.2f} s / {s.places_rows:,}",
            f"{d.places_wall:.2f} s / {d.places_cpu:.2f} s / {d.places_rows:,}",
            "",
            "(own schedule)",
            "",
        ],
    ]
    table("(b) leader CPU per admission cycle (AdmissionLoop.cycle() driven by hand)", head, rows)


async def latency_and_costs(args: argparse.Namespace, counted: Counted) -> None:
    root = Path(tempfile.mkdtemp(prefix="mal-", dir="/tmp"))
    server = Server(root)
    latencies: list[Latency] = []
    costs: list[CycleCost] = []
    slow: dict[int, list[tuple[str, int, float, float]]] = {}
    try:
        await server.start()
        nodes = parse_nodes(nodes_document(), "bench")
        for depth in args.depths:
            url = await server.fresh()
            engine = make_engine(url)
            try:
                await make_tenants(engine)
                jobs = Jobs(Submits(engine), seed=depth, pod_cpus=args.pod_cpus)
                latency = Latency(depth=depth)
                print(f"depth {depth:,}: submitting ...", flush=True)
                latency.fill_seconds = await jobs.fill(depth)
                print(
                    f"depth {depth:,}: {depth:,} jobs queued in {latency.fill_seconds:.1f} s "
                    f"({depth / latency.fill_seconds:.0f} jobs/s); running the loops for "
                    f"{args.seconds:.0f} s ...",
                    flush=True,
                )
                inventory = StaticInventory(nodes)
                # As ``muster serve`` does once started: what exists now is frozen out of
                # collections, and the youngest generation is collected less often.
                tune_gc_as_serve_does()
                offset = await server.slow_log(args.slow_ms)
                await latency_run(
                    server,
                    engine,
                    inventory,
                    jobs,
                    latency,
                    seconds=args.seconds,
                    warmup=args.warmup,
                )
                latencies.append(latency)
                print(
                    f"depth {depth:,}: {len(latency.samples)} refills, p50 "
                    f"{ms(pct(latency.samples, 0.5))}, p99 {ms(pct(latency.samples, 0.99))}; "
                    f"timing {args.cycles} cycles by hand ...",
                    flush=True,
                )
                cost = CycleCost(depth=depth)
                await cycle_costs(
                    engine, StaticInventory(nodes), cost, cycles=args.cycles, seed=depth
                )
                costs.append(cost)
                await server.slow_log(None)
                slow[depth] = server.slow_since(offset)
                print(
                    f"depth {depth:,}: load {cost.load_wall:.2f} s, CPU per cycle "
                    f"{ms(mean(cost.cpu))} mean",
                    flush=True,
                )
                await jobs.submits.close()
            finally:
                await engine.dispose()
    finally:
        await server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\nmachine: {psutil.cpu_count()} CPUs; cluster {NODES} nodes x {NODE_CPUS} CPUs, "
        f"{TENANTS} tenants, pods of {args.pod_cpus} CPUs, {FIVE_POD_SHARE:.0%} of jobs 5 pods, "
        f"sleep {SLEEPS[0]}..{SLEEPS[-1]} s"
    )
    print_latency(latencies[0], latencies[-1])
    print_costs(costs[0], costs[-1])
    for depth, rows in slow.items():
        table(
            f"PostgreSQL at {depth:,} queued, from the leader's start to the end of (b): "
            f"statements over {args.slow_ms} ms, and autovacuum runs",
            ["count", "mean", "max", "statement or table"],
            [[f"{n}", f"{m:.0f} ms", f"{x:.0f} ms", what] for what, n, m, x in rows[:12]]
            or [["0", "-", "-", "-"]],
        )
    print_log(counted)


def print_log(counted: Counted) -> None:
    lines = counted.lines
    print("\nwarnings and errors logged by the gateway's code:", "none" if not lines else "")
    for line, count in sorted(lines.items(), key=lambda item: -item[1]):
        print(f"  {count:>6} x {line}")


# -- (c) the gateway's memory --------------------------------------------------------------------


_CYCLE_JOBS = re.compile(r"^muster_admission_cycle_jobs (\S+)$", re.MULTILINE)


def rss_of(pid: int) -> tuple[float, float]:
    """RSS and its high-water mark (MB) of ``pid`` and its children, PostgreSQL left out."""
    main = psutil.Process(pid)
    rss = peak = 0.0
    for process in (main, *main.children(recursive=True)):
        with contextlib.suppress(psutil.Error, OSError):
            if process.name().startswith("postgres"):
                continue
            rss += process.memory_info().rss
            status = Path(f"/proc/{process.pid}/status").read_text()
            found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
            peak += int(found[1]) * 1024 if found else 0
    return rss / 1e6, peak / 1e6


async def rss_run(args: argparse.Namespace) -> None:
    from tests.acceptance.gateway_process import GatewayProcess, bearer, write_nodes

    root = Path(tempfile.mkdtemp(prefix="mar-", dir="/tmp"))
    server = Server(root)
    gateway: GatewayProcess | None = None
    stages: list[tuple[str, float, float, str]] = []
    total = args.rss_jobs
    try:
        await server.start()
        dsn = server.dsn_of(make_url(server.url).database or "muster")
        env = {
            "MUSTER_DATABASE_URL": server.url,
            "MUSTER_BACKEND": "static",
            "MUSTER_NODES_FILE": str(write_nodes(root / "nodes.yaml", 1, 8, 64)),
            "MUSTER_DATA_DIR": str(root / "data"),
            "MUSTER_LOG_LEVEL": "WARNING",
        }

        def start() -> tuple[GatewayProcess, str]:
            process = GatewayProcess(env)
            return process, process.start()

        def stage(name: str, note: str = "") -> None:
            assert gateway is not None
            assert gateway.proc is not None
            rss, peak = rss_of(gateway.proc.pid)
            stages.append((name, rss, peak, note))
            print(f"  {name}: RSS {rss:.0f} MB, peak {peak:.0f} MB {note}", flush=True)

        gateway, base = start()
        conn = await asyncpg.connect(dsn)
        try:
            async with aiohttp.ClientSession(headers=bearer()) as http:
                quota = {
                    "cpu": "1000000",
                    "memory": "1000Ti",
                    "gpu": 0,
                    "max_running_jobs": 1000000,
                    "max_queued_jobs": 1000000,
                }
                async with http.put(
                    f"{base}/v1/admin/tenants/bench", json={"quota": quota}
                ) as response:
                    assert response.status == 201, await response.text()
                await asyncio.sleep(2)
                stage("idle, after start")
                started = time.perf_counter()
                await post_batches(http, base, total, args.rss_batch)
                took = time.perf_counter() - started
                stage("after the submits", f"({total:,} jobs in {took:.0f} s)")
                held = await leader_holds(http, conn, base, total)
                stage("leader holds the queue, positions written", held)
                await asyncio.sleep(10)
                stage("10 s later")
            gateway.stop()
            logs = gateway.transcript()
            gateway = None
            gateway, base = start()
            async with aiohttp.ClientSession(headers=bearer()) as http:
                held = await leader_holds(http, conn, base, total)
                stage("restarted: loaded the queue whole, positions written", held)
                await asyncio.sleep(10)
                stage("restarted, 10 s later")
            gateway.stop()
            logs += gateway.transcript()
            gateway = None
        finally:
            await conn.close()
    finally:
        if gateway is not None:
            with contextlib.suppress(AssertionError):
                gateway.stop()
            gateway.close()
        await server.stop()
        shutil.rmtree(root, ignore_errors=True)
    rows = [[name, f"{rss:.0f} MB", f"{peak:.0f} MB", note] for name, rss, peak, note in stages]
    table(
        f"(c) gateway RSS, {total:,} five-pod jobs queued (static backend, PostgreSQL apart)",
        ["stage", "RSS", "peak (VmHWM)", "note"],
        rows,
    )
    worst = max(rss for _, rss, _, _ in stages)
    print(
        f"\ngoal: RSS <= {GOAL_RSS_MB:.0f} MB with the queue held (was {PREVIOUS_RSS_MB:.0f} MB):"
        f" highest RSS {worst:.0f} MB, {verdict(worst <= GOAL_RSS_MB)}"
    )
    problems = [
        line
        for line in logs.splitlines()
        if any(word in line for word in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
    ]
    print("gateway logs (both runs), warnings and errors:", len(problems))
    for line in problems[:20]:
        print("  " + line[:200])


async def post_batches(http: aiohttp.ClientSession, base: str, total: int, size: int) -> None:
    sizes = [(start, min(size, total - start)) for start in range(0, total, size)]

    async def worker() -> None:
        while sizes:
            start, count = sizes.pop(0)
            body = {
                "jobs": [
                    {
                        "job": {
                            "name": f"r{start + i}",
                            "tenant": "bench",
                            "replicas": {
                                "worker": {
                                    "count": 5,
                                    "image": "img",
                                    "command": ["sleep", "60"],
                                    "resources": {"cpu": "1", "memory": "1Gi"},
                                }
                            },
                        }
                    }
                    for i in range(count)
                ]
            }
            async with http.post(f"{base}/v1/jobs:batch", json=body) as response:
                answer = await response.json()
                assert response.status == 200, answer
                assert {item["status"] for item in answer["items"]} == {201}, answer["items"][:2]

    await asyncio.gather(*(worker() for _ in range(2)))


async def leader_holds(
    http: aiohttp.ClientSession, conn: asyncpg.Connection, base: str, total: int
) -> str:
    """Wait until the leader's last cycle held every queued job and every position is written."""
    started = time.perf_counter()
    deadline = started + 600
    while True:
        async with http.get(f"{base}/metrics") as response:
            body = await response.text()
            assert response.status == 200, body
        found = _CYCLE_JOBS.search(body)
        held = float(found[1]) if found else 0.0
        queued = await conn.fetchval("SELECT count(*) FROM jobs WHERE state = 'queued'")
        unplaced = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE state = 'queued' AND queue_position IS NULL"
        )
        if held >= queued and queued > 0 and unplaced == 0:
            took = time.perf_counter() - started
            return f"(cycle_jobs {held:,.0f}, {queued:,} queued; waited {took:.0f} s)"
        if time.perf_counter() > deadline:
            raise TimeoutError(f"cycle_jobs {held}, queued {queued}, unplaced {unplaced}")
        await asyncio.sleep(1)


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="depths 1,000 and 10,000, shorter")
    parser.add_argument("--depths", type=int, nargs=2, help="the shallow and deep queue")
    parser.add_argument(
        "--seconds", type=float, help="measurement window per depth (120; --quick: 20)"
    )
    parser.add_argument(
        "--pod-cpus", type=int, default=POD_CPUS, help="CPUs (and GiB) of a pod; fewer: more churn"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    parser.add_argument("--cycles", type=int, help="cycles timed by hand per depth (60)")
    parser.add_argument(
        "--slow-ms", type=int, default=100, help="PostgreSQL statements logged when slower"
    )
    parser.add_argument("--rss", action="store_true", help="only (c): the gateway's memory")
    parser.add_argument("--rss-jobs", type=int, default=100_000)
    parser.add_argument("--rss-batch", type=int, default=1000, help="jobs per batch request")
    args = parser.parse_args(argv)
    if args.depths is None:
        args.depths = [1_000, 10_000] if args.quick else [1_000, 100_000]
    if args.seconds is None:
        args.seconds = 20.0 if args.quick else 120.0
    if args.cycles is None:
        args.cycles = 20 if args.quick else 60
    return args


def _interrupted(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    args = parse_args()
    # SIGTERM as SIGINT: asyncio.run then cancels the run, and its ``finally`` blocks stop
    # PostgreSQL and the gateways.
    signal.signal(signal.SIGTERM, _interrupted)
    counted = Counted()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger().addHandler(counted)
    if args.rss:
        asyncio.run(rss_run(args))
    else:
        asyncio.run(latency_and_costs(args, counted))


if __name__ == "__main__":
    main()
