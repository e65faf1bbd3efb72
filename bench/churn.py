"""Kueue's baseline scheduler workload, replayed through Muster's HTTP API against a real gateway.

What it replays: the baseline generator of Kueue's scheduler performance test
(kubernetes-sigs/kueue, ``test/performance/scheduler/configs/baseline/generator.yaml``): 5 cohorts
of 6 queues, here 30 tenants ``c0-q0`` .. ``c4-q5`` with a CPU quota of 20 each and no borrowing,
on one node of 600 CPUs. Each tenant gets three streams of one-replica jobs, all starting at once:

=======  =====  ==========  ====  =======  ========
class    jobs   one every   CPU   runtime  priority
=======  =====  ==========  ====  =======  ========
small    350    100 ms      1     0.2 s    50
medium   100    500 ms      5     0.5 s    100
large    50     1200 ms     20    1 s      200
=======  =====  ==========  ====  =======  ========

15,000 jobs arrive over about 60 s. As in Kueue's generator, job ``i`` of a stream is due
``(i + 1) * interval`` after the start; a submit that falls behind is sent at once. Every job is
one ``POST /v1/jobs`` (an aiohttp client, at most 100 requests in flight) of a generic job whose
command is ``sleep <runtime>``.

Two modes, each against a fresh ``muster serve`` (its own data directory and the embedded
PostgreSQL it starts there, which this script joins to read the tables; every other setting at
its default; the gateway's output, INFO logs included, kept in ``--log-dir``):

- ``simulated``: ``MUSTER_BACKEND=static``, one node of 600 CPUs, ``MUSTER_SIMULATE_RUNS=true``
  (``sleep N`` "runs" N seconds and succeeds, no process);
- ``local``: ``MUSTER_BACKEND=local`` with ``MUSTER_LOCAL_CPUS=600``: every job is a real
  ``sleep`` under the supervisor daemon, contained as the gateway's user allows (as root: a uid,
  namespaces and cgroups of its own);
- ``cohorts``: the simulated runner, with Kueue's cohorts: each group of 6 tenants is a cohort
  (``c0`` .. ``c4``), and every tenant keeps its 20 CPUs as its nominal quota with a borrowing
  limit of 100 CPUs, as in Kueue's generator; its tenants let higher priorities preempt their own
  lower ones (Kueue's ``withinClusterQueue: LowerPriority``), and a lender reclaims what it lent
  (``reclaimWithinCohort``), with a minimum runtime of 1 s (the jobs run 0.2 to 1 s).

Run it (from the repository root, in the virtual environment)::

    python bench/churn.py [--mode simulated|local|cohorts|both|all] [--scale 1.0] [--timeout 1200]

(``both``: simulated and local; ``all``: the three.)

``--scale 0.1`` keeps a tenth of every stream (a quick run; its figures are not comparable with
Kueue's). A mode fails, with the jobs' states and reasons, when a job fails or the jobs are not
all finished ``--timeout`` seconds after the first submit.

What it prints, per mode and then side by side: the figures below, read from the database at the
end (``job_events``: a state change's time is its transaction's ``now()``), next to Kueue's,
Muster's previous ones and the goals, each goal marked met or missed.

- all done: first submit (client clock) to the last job finished;
- admissions/s: jobs / (first submit to the last admission);
- average and p99 time to admission per class: admitted minus submitted (both as committed);
- quota held while waiting: the CPU of a tenant's admitted, unfinished jobs over its 20 CPUs,
  integrated over the times the tenant had a job queued, summed over tenants (with cohorts: of a
  cohort's tenants over its 120 CPUs, while the cohort had a job queued);
- real work while waiting: the same, counting a job's CPU only over ``[end - runtime, end]``
  (its runtime before it succeeded, not before it was admitted);
- quota held over the run: all tenants' held CPU over 600 CPUs from the first submit to the last
  finish, the figure Kueue's checker calls ClusterQueue usage;
- avg held beyond runtime: admitted to succeeded less the runtime, per job (what separates the
  two usages: starting a replica and learning that it ended);
- submit lag p99 (a submit due to committed), the gateway's peak RSS and CPU seconds, and the
  admission cycles run and their mean duration (the leader's /metrics);

then the gateway log's warnings and errors, counted, and its slowest logged admission cycle.

Goals: simulated and cohorts, all done <= 175 s (half Kueue's), average time to admission <=
8.2 s, 38.4 s and 107.7 s (large, medium, small) and real work while waiting >= 75%; local, all
done <= 351 s and >= 43 admissions/s (Kueue's).

Where Kueue's figures come from: ``test/performance/scheduler/configs/baseline/rangespec.yaml``
(kubernetes-sigs/kueue at ff69552e79, August 2026), the averages of 5 trial runs the thresholds
are set from: wall time 351,116 ms (so 15,000 / 351.1 s = 43 admissions/s), average time to
admission large 16,501 ms (with SchedulingEquivalenceHashing; 6,666 ms without), medium 76,768
ms, small 215,468 ms, ClusterQueue usage 55.9%. Kueue's queues may borrow (``borrowingLimit:
100`` within their cohort); Muster's tenants here cannot. "Muster before" is Muster's earlier
result on this workload, measured with the local backend.

Everything started is stopped at the end: the gateway, the embedded PostgreSQL, in local mode the
supervisor daemon (it outlives a gateway), and the data and work directories are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.db.embedded import EmbeddedPostgres
from tests.acceptance.gateway_process import GatewayProcess, bearer, write_nodes

COHORTS = 5
QUEUES = 6
TENANT_CPUS = 20
NODE_CPUS = 600
MEMORY = "64Mi"
QUOTA: dict[str, Any] = {
    "cpu": str(TENANT_CPUS),
    "memory": "1Ti",
    "gpu": 0,
    "max_running_jobs": 100000,
    "max_queued_jobs": 100000,
}
MAX_PRIORITY = 200
IN_FLIGHT = 100  # the client's connection limit (aiohttp's default)
FINISHED = ("succeeded", "failed", "cancelled")
MIB = 2**20


@dataclass(frozen=True, slots=True)
class JobClass:
    name: str
    count: int
    interval: float  # seconds between two submits of a stream
    cpu: int
    runtime: float  # seconds
    priority: int


CLASSES = (
    JobClass("small", 350, 0.1, 1, 0.2, 50),
    JobClass("medium", 100, 0.5, 5, 0.5, 100),
    JobClass("large", 50, 1.2, 20, 1.0, 200),
)
CLASS_OF = {job_class.name: job_class for job_class in CLASSES}


# -- the reference figures ------------------------------------------------------------------------

#: Kueue's baseline averages (rangespec.yaml, see the module docstring).
KUEUE: dict[str, float] = {
    "all_done": 351.1,
    "admissions_per_s": 15000 / 351.1,
    "avg_large": 16.5,
    "avg_medium": 76.8,
    "avg_small": 215.5,
    "held_over_run": 55.9,
}
#: Muster's previous figures (local backend).
BEFORE: dict[str, float] = {
    "all_done": 611,
    "admissions_per_s": 25,
    "avg_large": 65.4,
    "avg_medium": 245.5,
    "avg_small": 446.4,
    "held_while_waiting": 72,
    "work_while_waiting": 11,
}


@dataclass(frozen=True, slots=True)
class Goal:
    bound: float
    at_most: bool  # True: the figure must be <= bound; False: >= bound

    def met(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound

    def text(self, unit: str) -> str:
        bound = f"{self.bound:g}%" if unit == "%" else f"{self.bound:g}"
        return f"{'<=' if self.at_most else '>='} {bound}"


GOALS: dict[str, dict[str, Goal]] = {
    "simulated": {
        "all_done": Goal(175, at_most=True),
        "avg_large": Goal(8.2, at_most=True),
        "avg_medium": Goal(38.4, at_most=True),
        "avg_small": Goal(107.7, at_most=True),
        "work_while_waiting": Goal(75, at_most=False),
    },
    "local": {
        "all_done": Goal(351, at_most=True),
        "admissions_per_s": Goal(43, at_most=False),
    },
}
GOALS["cohorts"] = GOALS["simulated"]
#: With cohorts: each tenant's borrowing limit (Kueue's generator), and the minimum runtime.
BORROWING_LIMIT_CPUS = 100
COHORT_MIN_RUNTIME = "1"

#: Every row of the tables: key, label, unit ("s", "/s", "%", "MiB" or "").
ROWS: tuple[tuple[str, str, str], ...] = (
    ("jobs", "jobs finished", ""),
    ("all_done", "all done (s)", "s"),
    ("admissions_per_s", "admissions/s", "/s"),
    ("avg_large", "avg to admission, large (s)", "s"),
    ("avg_medium", "avg to admission, medium (s)", "s"),
    ("avg_small", "avg to admission, small (s)", "s"),
    ("p99_large", "p99 to admission, large (s)", "s"),
    ("p99_medium", "p99 to admission, medium (s)", "s"),
    ("p99_small", "p99 to admission, small (s)", "s"),
    ("held_while_waiting", "quota held while waiting", "%"),
    ("work_while_waiting", "real work while waiting", "%"),
    ("held_over_run", "quota held over the run (Kueue's CQ usage)", "%"),
    ("held_beyond_runtime", "avg held beyond runtime (s)", "s"),
    ("requeues", "requeues", ""),
    ("submit_lag_p99", "submit lag p99, due to committed (s)", "s"),
    ("rss_peak", "gateway peak RSS (MiB)", "MiB"),
    ("gateway_cpu", "gateway CPU (s)", "s"),
)


# -- the workload --------------------------------------------------------------------------------


class RunFailed(Exception):
    """A mode's run did not finish every job successfully."""


@dataclass(frozen=True, slots=True)
class Submit:
    due: float  # seconds after the start
    tenant: str
    name: str
    job_class: JobClass


def tenants() -> list[str]:
    return [f"c{cohort}-q{queue}" for cohort in range(COHORTS) for queue in range(QUEUES)]


def cohort_of(tenant: str) -> str:
    return tenant.split("-", 1)[0]


def workload(scale: float) -> list[list[Submit]]:
    """One stream of submits per tenant and class, each in its own order."""
    streams = []
    for tenant in tenants():
        for job_class in CLASSES:
            count = max(1, round(job_class.count * scale))
            streams.append(
                [
                    Submit(
                        (index + 1) * job_class.interval,
                        tenant,
                        f"{tenant}-{job_class.name}-{index}",
                        job_class,
                    )
                    for index in range(count)
                ]
            )
    return streams


def job_body(submit: Submit) -> dict[str, Any]:
    job_class = submit.job_class
    return {
        "name": submit.name,
        "tenant": submit.tenant,
        "priority": job_class.priority,
        "labels": {"class": job_class.name},
        "replicas": {
            "worker": {
                "image": "bench:1",
                "command": ["sleep", f"{job_class.runtime:g}"],
                "resources": {"cpu": str(job_class.cpu), "memory": MEMORY},
            }
        },
    }


async def submit_all(
    http: aiohttp.ClientSession, base: str, streams: Sequence[Sequence[Submit]]
) -> dict[tuple[str, str], float]:
    """Send every stream on its schedule; return each job's due time (wall clock) by
    (tenant, name). A refused submit ends the run."""
    loop = asyncio.get_running_loop()
    start_mono = loop.time()
    start_wall = time.time()
    due: dict[tuple[str, str], float] = {}

    async def post(submit: Submit) -> None:
        async with http.post(f"{base}/v1/jobs", json=job_body(submit)) as response:
            if response.status != 201:
                raise RuntimeError(
                    f"submit of {submit.name} answered {response.status}: {await response.text()}"
                )

    async def stream(submits: Sequence[Submit], group: asyncio.TaskGroup) -> None:
        for submit in submits:
            delay = start_mono + submit.due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            due[(submit.tenant, submit.name)] = start_wall + submit.due
            group.create_task(post(submit))

    try:
        async with asyncio.TaskGroup() as group:
            for submits in streams:
                group.create_task(stream(submits, group))
    except* (RuntimeError, aiohttp.ClientError, OSError) as failed:
        first = failed.exceptions[0]
        raise RunFailed(f"{len(failed.exceptions)} submits failed; the first: {first!r}") from None
    return due


# -- the gateway ---------------------------------------------------------------------------------


class LoggedGateway(GatewayProcess):
    """A ``GatewayProcess`` whose output also goes, line by line, to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env)
        self.log_path = log_path

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        with self.log_path.open("w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self._lines.put(line)
        self._lines.put(None)


class Sampler:
    """The gateway process's peak RSS, sampled every half second."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.cpu = 0.0

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.5)

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self.process.memory_info().rss)
            times = self.process.cpu_times()
            self.cpu = times.user + times.system


def stop_daemon(data_dir: Path) -> None:
    """End the local backend's supervisor daemon of ``data_dir`` (it outlives the gateway)."""
    pid_file = data_dir / "local" / "supervisor.pid"
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        daemon = psutil.Process(int(pid_file.read_text().split()[0]))
        if "gateway.backends.daemon" in " ".join(daemon.cmdline()):
            daemon.terminate()
            try:
                daemon.wait(10)
            except psutil.TimeoutExpired:
                daemon.kill()


def work_dir_of(data_dir: Path) -> Path | None:
    """The local backend's default work directory as root (gateway.settings' formula), to
    remove after the run; None when not root (it is then under the user's cache)."""
    if os.geteuid() != 0:
        return None
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return Path("/var/lib/muster/work") / digest


def settings_of(mode: str, root: Path, data_dir: Path) -> dict[str, str]:
    env = {"MUSTER_DATA_DIR": str(data_dir)}
    if mode == "cohorts":
        env["MUSTER_PREEMPTION_MIN_RUNTIME"] = COHORT_MIN_RUNTIME
    if mode in ("simulated", "cohorts"):
        nodes = write_nodes(root / "nodes.yaml", 1, NODE_CPUS, 4096)
        env |= {
            "MUSTER_BACKEND": "static",
            "MUSTER_NODES_FILE": str(nodes),
            "MUSTER_SIMULATE_RUNS": "true",
        }
    else:
        env |= {
            "MUSTER_BACKEND": "local",
            "MUSTER_LOCAL_CPUS": str(NODE_CPUS),
            "MUSTER_LOCAL_MEMORY": "4Ti",
        }
    return env


# -- the measurements ----------------------------------------------------------------------------


@dataclass(slots=True)
class Sweep:
    """Changes at points in time, integrated while a tenant has jobs queued."""

    points: list[tuple[float, int, float, float]] = field(default_factory=list)

    def queued(self, start: float, end: float) -> None:
        self.points += [(start, 1, 0.0, 0.0), (end, -1, 0.0, 0.0)]

    def held(self, start: float, end: float, cpu: float) -> None:
        self.points += [(start, 0, cpu, 0.0), (end, 0, -cpu, 0.0)]

    def worked(self, start: float, end: float, cpu: float) -> None:
        self.points += [(start, 0, 0.0, cpu), (end, 0, 0.0, -cpu)]

    def integrate(self) -> tuple[float, float, float]:
        """Seconds with a job queued, and CPU-seconds held and worked during them."""
        waiting = held_area = work_area = 0.0
        queued, held, work = 0, 0.0, 0.0
        last: float | None = None
        for at, d_queued, d_held, d_work in sorted(self.points):
            if last is not None and queued > 0:
                span = at - last
                waiting += span
                held_area += held * span
                work_area += work * span
            queued += d_queued
            held += d_held
            work += d_work
            last = at
        return waiting, held_area, work_area


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def measure(
    jobs: Iterable[asyncpg.Record],
    events: Iterable[asyncpg.Record],
    due: dict[tuple[str, str], float],
    first_submit: float,
    *,
    cohorts: bool = False,
) -> dict[str, float]:
    """The figures of the module docstring from the jobs and their events (in id order); with
    ``cohorts``, quota held and worked while waiting is a cohort's."""
    who: dict[str, tuple[str, JobClass, str]] = {}
    for row in jobs:
        who[row["id"]] = (row["tenant"], CLASS_OF[row["name"].rsplit("-", 2)[1]], row["name"])
    history: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for row in events:
        if row["to_state"] is not None:
            history[row["job_id"]].append((row["to_state"], row["at"]))

    sweeps: dict[str, Sweep] = defaultdict(Sweep)
    waits: dict[str, list[float]] = defaultdict(list)
    lags: list[float] = []
    beyond: list[float] = []  # quota held past the runtime: admitted to succeeded, less runtime
    held_over_run = last_admitted = last_finished = 0.0
    requeues = 0
    for job_id, changes in history.items():
        tenant, job_class, name = who[job_id]
        sweep = sweeps[cohort_of(tenant) if cohorts else tenant]
        cpu = float(job_class.cpu)
        submitted: float | None = None
        admitted: float | None = None
        queued_since: float | None = None
        held_since: float | None = None
        for state, at in changes:
            if queued_since is not None and state != "queued":
                sweep.queued(queued_since, at)
                queued_since = None
            if held_since is not None and state in ("queued", *FINISHED):
                sweep.held(held_since, at, cpu)
                held_over_run += cpu * (at - held_since)
                if state == "succeeded":
                    sweep.worked(max(at - job_class.runtime, held_since), at, cpu)
                    beyond.append(at - held_since - job_class.runtime)
                held_since = None
            if state == "queued":
                if submitted is None:
                    submitted = at
                    lags.append(at - due[(tenant, name)])
                else:
                    requeues += 1
                queued_since = at
            elif state == "admitted":
                held_since = at
                last_admitted = max(last_admitted, at)
                if admitted is None and submitted is not None:
                    admitted = at
                    waits[job_class.name].append(at - submitted)
            elif state in FINISHED:
                last_finished = max(last_finished, at)

    quota = TENANT_CPUS * (QUEUES if cohorts else 1)
    waiting = held_area = work_area = 0.0
    for sweep in sweeps.values():
        span, held, work = sweep.integrate()
        waiting += span
        held_area += held
        work_area += work
    run = last_finished - first_submit
    figures: dict[str, float] = {
        "jobs": float(len(history)),
        "all_done": run,
        "admissions_per_s": len(history) / (last_admitted - first_submit),
        "held_while_waiting": 100 * held_area / (quota * waiting) if waiting else 0.0,
        "work_while_waiting": 100 * work_area / (quota * waiting) if waiting else 0.0,
        "held_over_run": 100 * held_over_run / (NODE_CPUS * run),
        "held_beyond_runtime": sum(beyond) / len(beyond) if beyond else 0.0,
        "requeues": float(requeues),
        "submit_lag_p99": p99(lags),
    }
    for name, values in waits.items():
        figures[f"avg_{name}"] = sum(values) / len(values)
        figures[f"p99_{name}"] = p99(values)
    return figures


# -- one run -------------------------------------------------------------------------------------


JOBS_SQL = "SELECT CAST(id AS text) AS id, tenant, name, state, reason, message FROM jobs"
EVENTS_SQL = """
    SELECT CAST(job_id AS text) AS job_id, to_state,
           CAST(extract(epoch FROM created_at) AS float8) AS at
    FROM job_events ORDER BY id
"""


async def wait_finished(
    conn: asyncpg.Connection, gateway: GatewayProcess, total: int, started: float, limit: float
) -> None:
    """Until every job has finished; progress on stderr every 15 s."""
    said = time.monotonic()
    while True:
        rows = await conn.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        states = {row["state"]: int(row["n"]) for row in rows}
        if sum(states.get(state, 0) for state in FINISHED) >= total:
            return
        assert gateway.proc is not None
        if gateway.proc.poll() is not None:
            raise RunFailed(f"the gateway exited with {gateway.proc.returncode}; states: {states}")
        elapsed = time.time() - started
        if elapsed > limit:
            raise RunFailed(f"not all finished {limit:.0f} s after the first submit: {states}")
        if time.monotonic() - said >= 15:
            said = time.monotonic()
            print(
                f"  {elapsed:6.0f} s  {dict(sorted(states.items()))}", file=sys.stderr, flush=True
            )
        await asyncio.sleep(1)


async def cycle_stats(http: aiohttp.ClientSession, base: str) -> tuple[float, float]:
    """Admission cycles run and their mean duration (s), from the leader's /metrics."""
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    sums = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        for suffix in sums:
            if name.split("{")[0] == f"muster_admission_attempt_duration_seconds{suffix}":
                sums[suffix] += float(value)
    count = sums["_count"]
    return count, sums["_sum"] / count if count else 0.0


def make_root() -> Path:
    """A fresh directory for one run's data directory and node list. As root, the embedded
    PostgreSQL's and the jobs' users must pass through it, and it is outside /tmp (replicas see a
    private one), as in bench/local_replicas.py."""
    parent = Path("/var/lib/muster-bench") if os.geteuid() == 0 else Path(tempfile.gettempdir())
    parent.mkdir(mode=0o755, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="churn-", dir=parent))
    root.chmod(0o755)
    return root


async def run_mode(mode: str, scale: float, limit: float, log_path: Path) -> dict[str, float]:
    """One mode against a fresh gateway and database; its figures."""
    root = make_root()
    data_dir = root / "data"
    gateway = LoggedGateway(settings_of(mode, root, data_dir), log_path)
    embedded = EmbeddedPostgres(data_dir)
    sampling: asyncio.Task[None] | None = None
    try:
        base = gateway.start()
        assert gateway.proc is not None
        sampler = Sampler(gateway.proc.pid)
        sampling = asyncio.create_task(sampler.run())
        dsn = (await embedded.start()).replace("postgresql+asyncpg", "postgresql")
        streams = workload(scale)
        total = sum(len(stream) for stream in streams)
        print(f"{mode}: {total} jobs, gateway at {base}, log {log_path}", file=sys.stderr)
        async with aiohttp.ClientSession(
            headers=bearer(), connector=aiohttp.TCPConnector(limit=IN_FLIGHT)
        ) as http:
            if mode == "cohorts":
                for cohort in sorted({cohort_of(tenant) for tenant in tenants()}):
                    async with http.put(f"{base}/v1/admin/cohorts/{cohort}", json={}) as answer:
                        if answer.status not in (200, 201):
                            raise RunFailed(f"PUT cohort {cohort}: {await answer.text()}")
            for tenant in tenants():
                body: dict[str, Any] = {"quota": QUOTA, "max_priority": MAX_PRIORITY}
                if mode == "cohorts":
                    body["cohort"] = cohort_of(tenant)
                    body["preemption_policy"] = "lower_priority"
                    body["quota"] = {
                        **QUOTA,
                        "borrowing_limit": {"cpu": str(BORROWING_LIMIT_CPUS)},
                    }
                async with http.put(f"{base}/v1/admin/tenants/{tenant}", json=body) as answer:
                    if answer.status not in (200, 201):
                        raise RunFailed(f"PUT tenant {tenant}: {await answer.text()}")
            started = time.time()
            due = await submit_all(http, base, streams)
            first_submit = min(due.values())
            print(f"  submitted in {time.time() - started:.1f} s", file=sys.stderr, flush=True)
            conn = await asyncpg.connect(dsn)
            try:
                await wait_finished(conn, gateway, total, first_submit, limit)
                jobs = await conn.fetch(JOBS_SQL)
                events = await conn.fetch(EVENTS_SQL)
            finally:
                await conn.close()
            cycles, cycle_mean = await cycle_stats(http, base)
        sampler.sample()
        bad = [row for row in jobs if row["state"] != "succeeded"]
        if bad:
            reasons = Counter(f"{row['state']}: {row['reason']}: {row['message']}" for row in bad)
            raise RunFailed(
                f"{len(bad)} of {len(jobs)} jobs did not succeed; "
                + "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(5))
            )
        figures = measure(jobs, events, due, first_submit, cohorts=mode == "cohorts")
        figures |= {
            "rss_peak": sampler.peak / MIB,
            "gateway_cpu": sampler.cpu,
            "cycles": cycles,
            "cycle_mean": cycle_mean,
        }
        return figures
    finally:
        if sampling is not None:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        gateway.close()
        if mode == "local":
            stop_daemon(data_dir)
        await embedded.stop()
        work_dir = work_dir_of(data_dir)
        shutil.rmtree(root, ignore_errors=True)
        if mode == "local" and work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)


# -- the tables ----------------------------------------------------------------------------------


def _number(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("", "MiB"):
        return f"{value:.0f}"
    if unit == "%":
        return f"{value:.1f}%"
    return _number(value)


def goal_cell(mode: str, key: str, unit: str, value: float | None) -> str:
    goal = GOALS[mode].get(key)
    if goal is None:
        return ""
    if value is None:
        return f"{goal.text(unit)}: no figure"
    return f"{goal.text(unit)}: {'met' if goal.met(value) else 'MISSED'}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or reference == 0:
        return ""
    return f"{value / reference:.2f}x"


def mode_table(mode: str, figures: dict[str, float]) -> str:
    rows = []
    for key, label, unit in ROWS:
        value = figures.get(key)
        rows.append(
            [
                label,
                cell(KUEUE.get(key), unit),
                cell(BEFORE.get(key), unit),
                cell(value, unit),
                ratio(value, KUEUE.get(key)),
                goal_cell(mode, key, unit, value),
            ]
        )
    rows.append(
        [
            "admission cycles, mean cycle (ms)",
            "—",
            "—",
            f"{figures.get('cycles', 0):.0f}, {1000 * figures.get('cycle_mean', 0):.1f}",
            "",
            "",
        ]
    )
    return table(["figure", "Kueue", "Muster before", "Muster now", "now / Kueue", "goal"], rows)


def combined_table(results: dict[str, dict[str, float] | None]) -> str:
    modes = list(results)
    header = ["figure", "Kueue", "Muster before"]
    for mode in modes:
        header += [mode, f"goal ({mode})"]
    rows = []
    for key, label, unit in ROWS:
        row = [label, cell(KUEUE.get(key), unit), cell(BEFORE.get(key), unit)]
        for mode in modes:
            figures = results[mode]
            value = None if figures is None else figures.get(key)
            row += [
                cell(value, unit) if figures is not None else "failed",
                goal_cell(mode, key, unit, value),
            ]
        rows.append(row)
    return table(header, rows)


#: The admission loop's line per cycle that admitted jobs.
CYCLE_LINE = re.compile(r"admitted (\d+) of (\d+) queued jobs \((\d+) considered\) in ([\d.]+) s")


def log_summary(log_path: Path, limit: int = 12) -> str:
    """The gateway log's warnings and errors, counted by message (timestamps left out), and its
    slowest logged admission cycle."""
    counts: Counter[str] = Counter()
    tracebacks = 0
    slowest: tuple[float, str] = (0.0, "")
    with contextlib.suppress(OSError), log_path.open() as log:
        for line in log:
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                counts[f"{parts[2]} {parts[3].strip()[:200]}"] += 1
            elif line.startswith(" ") and "Traceback" in line:
                tracebacks += 1
            elif (cycle := CYCLE_LINE.search(line)) is not None:
                slowest = max(slowest, (float(cycle[4]), cycle[0]))
    lines = [f"gateway log {log_path}: {sum(counts.values())} warnings and errors"]
    lines += [f"  {n:6d} x {message}" for message, n in counts.most_common(limit)]
    if tracebacks:
        lines.append(f"  {tracebacks} tracebacks")
    if slowest[1]:
        lines.append(f"  slowest logged admission cycle: {slowest[1]}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--mode", choices=("simulated", "local", "cohorts", "both", "all"), default="both"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every job count")
    parser.add_argument(
        "--timeout", type=float, default=1200, help="seconds from the first submit to all done"
    )
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="where the gateways' logs are kept"
    )
    args = parser.parse_args()
    modes = {"both": ["simulated", "local"], "all": ["simulated", "local", "cohorts"]}.get(
        args.mode, [args.mode]
    )
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="muster-churn-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, float] | None] = {}
    for mode in modes:
        log_path = log_dir / f"gateway-{mode}.log"
        try:
            results[mode] = await run_mode(mode, args.scale, args.timeout, log_path)
        except RunFailed as failure:
            results[mode] = None
            print(f"\n## {mode}: FAILED\n\n{failure}", flush=True)
        else:
            print(f"\n## {mode} (scale {args.scale:g})\n", flush=True)
            print(mode_table(mode, results[mode] or {}), flush=True)
        print("\n" + log_summary(log_path), flush=True)
    if len(modes) > 1:
        print(f"\n## both modes (scale {args.scale:g})\n")
        print(combined_table(results))
    if args.scale != 1:
        print(f"\n(scale {args.scale:g}: fewer jobs than Kueue's run; not comparable)")
    if any(figures is None for figures in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
