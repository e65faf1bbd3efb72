"""Soak: a gateway under a steady mixed load for 30 minutes, watched for leaks minute by minute.

    python bench/soak.py                       # 30 minutes, 10 submits/s
    python bench/soak.py --minutes 3           # a quick check (the verdict's windows scale down)
    python bench/soak.py --rate 5 --sse 3 --log /tmp/gw.log

One ``muster serve`` (static backend over 20 nodes of 64 CPUs, ``MUSTER_SIMULATE_RUNS``: a
``sleep N`` replica runs N seconds and succeeds, ``sleep infinity`` runs until cancelled) with its
embedded PostgreSQL in a temporary directory under /tmp, which this script joins to read the
tables. The finished replicas that ``clean_pod_policy`` keeps are removed a minute after their
job ends (``MUSTER_JOB_TTL_SECONDS_AFTER_FINISHED=60``; by default they stay a week, and what a
gateway holds for them then grows for a week by design). One tenant with quotas nothing reaches. The load, from one asyncio loop of this process
(an aiohttp client and a webhook receiver; a few percent of a CPU, far from the bottleneck):

- submits: Poisson arrivals at ``--rate`` per second; 90 % ``sleep 1`` .. ``sleep 5``, 10 %
  ``sleep infinity``, each cancelled 5 to 30 s after its submit; a third of them carry a
  ``callback`` to the local receiver (which verifies each signature);
- ``--sse`` clients on GET /v1/events from the stream's start, each dropping its connection every
  20 to 60 s and resuming with Last-Event-ID;
- list calls at ``--list-rate`` per second: GET /v1/jobs (newest, running), /v1/queue,
  /v1/cluster and GET /v1/jobs/{id} of a recent job.

Every 5 s it samples the gateway's RSS and open file descriptors (psutil), the embedded
PostgreSQL's processes' total RSS, and the muster database's connections (pg_stat_activity,
this script's own excluded); each minute it prints one row: the means of those samples, the API
requests of the minute with their p50/p99 latency and errors (by call and status or exception),
jobs submitted (201s) and finished, webhooks and SSE events received, and ERROR lines logged.

When the time is up the load stops, long jobs still running are cancelled, and the script waits
for the jobs to end, the webhooks to arrive and the SSE clients to catch up. Then the verdicts:

1. flat: for RSS, fds and connections, the mean of the last 10 minutes within 5 % of the mean of
   minutes 5 to 10 (the samples of (5:00, 10:00] and (M-10:00, M:00]); under 20 minutes both
   windows scale by M/30, rounded to whole minutes, the first minute (the start) left out from
   3 minutes up, as the output says;
2. the gateway's log holds no ERROR (or CRITICAL) line and no Traceback; the log is kept in
   ``--log``;
3. every 201 is exactly one job; every short job succeeded and every long one was cancelled;
4. every webhook event (the callback jobs' end) arrived once per outbox row, verified, and every
   outbox row is delivered;
5. every SSE client received every job event exactly once, in stream order.

The gateway, its PostgreSQL and the load stop and the temporary directory goes, on Ctrl-C or
SIGTERM too. Exit status 0 when every verdict passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import asyncpg
import psutil
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.db.embedded import EmbeddedPostgres
from tests.acceptance.gateway_process import GatewayProcess, bearer, write_nodes

TENANT = "soak"
QUOTA = {
    "cpu": "100000",
    "memory": "1000Ti",
    "gpu": 0,
    "max_running_jobs": 1_000_000,
    "max_queued_jobs": 1_000_000,
}
RESOURCES = {"cpu": "100m", "memory": "64Mi"}
LONG_SHARE = 0.10
CALLBACK_SHARE = 1 / 3
CANCEL_AFTER = (5.0, 30.0)
SSE_SESSION = (20.0, 60.0)
SAMPLE_SECONDS = 5.0
MAX_IN_FLIGHT = 200
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)
SSE_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30, sock_read=60)  # keep-alive every 15 s
DRAIN_SECONDS = 120.0
KEPT_SECONDS = 60
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass(kw_only=True, slots=True)
class Minute:
    """What happened in one minute; its row is printed when it ends."""

    requests: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    submitted: int = 0
    hooks: int = 0
    sse_events: int = 0
    rss: list[float] = field(default_factory=list)
    pg_rss: list[float] = field(default_factory=list)
    fds: list[float] = field(default_factory=list)
    conns: list[float] = field(default_factory=list)


@dataclass(kw_only=True, slots=True)
class Row:
    minute: int
    rss: float
    pg_rss: float
    fds: float
    conns: float
    requests: int
    p50: float
    p99: float
    errors: Counter[str]
    submitted: int
    finished: int
    hooks: int
    sse_events: int
    log_errors: int


def percentile(values: list[float], share: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


HEADER = (
    f"{'min':>4} {'gw MiB':>7} {'pg MiB':>7} {'fds':>6} {'dbconn':>6} {'reqs':>6} {'p50 ms':>7} "
    f"{'p99 ms':>7} {'subm':>5} {'fin':>5} {'hooks':>5} {'sse ev':>6} {'logERR':>6}  errors"
)


def format_row(row: Row) -> str:
    errors = " ".join(f"{kind}={count}" for kind, count in sorted(row.errors.items())) or "-"
    return (
        f"{row.minute:>4} {row.rss:>7.1f} {row.pg_rss:>7.1f} {row.fds:>6.1f} {row.conns:>6.1f} "
        f"{row.requests:>6} {row.p50:>7.1f} {row.p99:>7.1f} {row.submitted:>5} {row.finished:>5} "
        f"{row.hooks:>5} {row.sse_events:>6} {row.log_errors:>6}  {errors}"
    )


def log_problems(text: str) -> list[str]:
    """The ERROR and CRITICAL records and the Traceback lines of the gateway's text log."""
    return [
        line
        for line in text.splitlines()
        if " ERROR " in line or " CRITICAL " in line or "Traceback" in line
    ]


class Receiver:
    """The webhook endpoint: verifies each delivery and records it by job."""

    def __init__(self, soak: Soak) -> None:
        self.soak = soak
        self.secret = ""
        self.by_job: defaultdict[str, list[str]] = defaultdict(list)
        self.ids: Counter[str] = Counter()
        self.unverified = 0
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.unverified += 1
            event = json.loads(body)
        self.ids[request.headers.get("webhook-id", "")] += 1
        self.by_job[event["data"]["id"]].append(event["type"])
        self.soak.minute.hooks += 1
        return web.Response(status=204)


@dataclass(kw_only=True, slots=True)
class SseClient:
    seen: set[int] = field(default_factory=set)
    last: tuple[int, int] = (0, 0)
    duplicates: int = 0
    out_of_order: int = 0
    connections: int = 0


class Soak:
    """The load, the samples and the per-minute rows of one run."""

    def __init__(self, args: argparse.Namespace, base: str, gateway_pid: int, root: Path) -> None:
        self.args = args
        self.base = base
        self.gateway = psutil.Process(gateway_pid)
        self.root = root
        self.http: aiohttp.ClientSession | None = None
        self.db: asyncpg.Connection | None = None
        self.receiver = Receiver(self)
        self.minute = Minute()
        self.rows: list[Row] = []
        self.all_latencies: defaultdict[str, list[float]] = defaultdict(list)
        self.created: list[str] = []
        self.long_jobs: set[str] = set()
        self.callback_jobs: set[str] = set()
        self.recent: list[str] = []
        self.sse = [SseClient() for _ in range(args.sse)]
        self.stopping = asyncio.Event()  # the load's end: long jobs are cancelled at once
        self.behind = 0
        self.in_flight = 0
        self.finished_before = 0
        self.drain_seconds = 0.0

    # --- HTTP -------------------------------------------------------------------------------

    async def call(
        self, kind: str, method: str, path: str, body: Any = None, expect: int = 200
    ) -> Any:
        """One API call, timed and counted; the decoded answer, or None when it was not
        ``expect``."""
        assert self.http is not None
        self.minute.requests += 1
        began = time.perf_counter()
        try:
            async with self.http.request(
                method, self.base + path, json=body, timeout=HTTP_TIMEOUT
            ) as response:
                answer = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.minute.errors[f"{kind}:{type(exc).__name__}"] += 1
            return None
        took = (time.perf_counter() - began) * 1000
        self.minute.latencies.append(took)
        self.all_latencies[kind].append(took)
        if status != expect:
            self.minute.errors[f"{kind}:{status}"] += 1
            return None
        return json.loads(answer)

    # --- the load ---------------------------------------------------------------------------

    async def submitter(self) -> None:
        """Open-loop Poisson arrivals: a slow gateway does not slow the arrivals down."""
        tasks: set[asyncio.Task[None]] = set()
        number = 0
        due = time.monotonic()
        try:
            while not self.stopping.is_set():
                due += random.expovariate(self.args.rate)
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if time.monotonic() - due > 1.0 or self.in_flight >= MAX_IN_FLIGHT:
                    self.behind += 1  # this script fell behind: the run says so
                    self.minute.errors["bench:behind"] += 1
                    due = time.monotonic()
                    continue
                number += 1
                task = asyncio.create_task(self.submit_one(number))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except asyncio.CancelledError:  # interrupted: nothing waits for the long jobs' cancels
            for task in tasks:
                task.cancel()
            raise
        finally:
            # The jobs in flight run to their end (long ones are cancelled at once now).
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def submit_one(self, number: int) -> None:
        self.in_flight += 1
        try:
            long = random.random() < LONG_SHARE
            command = ["sleep", "infinity"] if long else ["sleep", str(random.randint(1, 5))]
            spec: dict[str, Any] = {
                "tenant": TENANT,
                "name": f"soak-{number}",
                "replicas": {"worker": {"image": "x", "command": command, "resources": RESOURCES}},
            }
            if random.random() < CALLBACK_SHARE:
                spec["callback"] = {"url": f"http://127.0.0.1:{self.receiver.port}/hook"}
            job = await self.call("submit", "POST", "/v1/jobs", spec, expect=201)
            if job is None:
                return
            job_id = job["id"]
            self.created.append(job_id)
            self.minute.submitted += 1
            self.recent = [*self.recent[-49:], job_id]
            if "callback" in spec:
                self.callback_jobs.add(job_id)
            if not long:
                return
            self.long_jobs.add(job_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), random.uniform(*CANCEL_AFTER))
            await self.call("cancel", "POST", f"/v1/jobs/{job_id}/cancel")
        finally:
            self.in_flight -= 1

    async def lister(self) -> None:
        calls = (
            ("list", "/v1/jobs?limit=50&order=newest"),
            ("list", "/v1/jobs?state=running&limit=100"),
            ("queue", "/v1/queue?limit=50"),
            ("cluster", "/v1/cluster"),
        )
        while not self.stopping.is_set():
            await asyncio.sleep(random.expovariate(self.args.list_rate))
            if self.recent and random.random() < 0.2:
                await self.call("get", "GET", f"/v1/jobs/{random.choice(self.recent)}")
            else:
                kind, path = random.choice(calls)
                await self.call(kind, "GET", path)

    async def sse_client(self, client: SseClient) -> None:
        """Reads GET /v1/events; drops the connection now and then and resumes where it was."""
        assert self.http is not None
        last_id = ""
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                async with asyncio.timeout(random.uniform(*SSE_SESSION)) as session:
                    async with self.http.get(
                        self.base + "/v1/events", headers=headers, timeout=SSE_TIMEOUT
                    ) as response:
                        if response.status != 200:
                            self.minute.errors[f"sse:{response.status}"] += 1
                            await asyncio.sleep(1.0)
                            continue
                        client.connections += 1
                        event_id = ""
                        async for raw in response.content:
                            line = raw.decode().rstrip("\r\n")
                            if line.startswith("id:"):
                                event_id = line[3:].strip()
                            elif not line and event_id:
                                self.sse_event(client, event_id)
                                last_id, event_id = event_id, ""
                self.minute.errors["sse:ended"] += 1  # the gateway closed the stream
            except TimeoutError:
                if not session.expired():
                    self.minute.errors["sse:TimeoutError"] += 1
            except aiohttp.ClientError as exc:
                self.minute.errors[f"sse:{type(exc).__name__}"] += 1
                await asyncio.sleep(1.0)

    def sse_event(self, client: SseClient, event_id: str) -> None:
        txid, _, number = event_id.partition("-")
        position = (int(txid), int(number))
        if position <= client.last:
            client.out_of_order += 1
        client.last = max(client.last, position)
        if position[1] in client.seen:
            client.duplicates += 1
        client.seen.add(position[1])
        self.minute.sse_events += 1

    # --- samples and rows -------------------------------------------------------------------

    def postgres_rss(self) -> float:
        """MiB resident in the embedded server's processes (shared buffers counted per process)."""
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            pid = int((self.root / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])
            postmaster = psutil.Process(pid)
            total = 0
            for process in [postmaster, *postmaster.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            return total / 2**20
        return math.nan

    async def sampler(self) -> None:
        assert self.db is not None
        while True:
            try:
                self.minute.rss.append(self.gateway.memory_info().rss / 2**20)
                self.minute.fds.append(self.gateway.num_fds())
            except psutil.Error:
                self.minute.errors["bench:gateway-gone"] += 1
            self.minute.pg_rss.append(await asyncio.to_thread(self.postgres_rss))
            try:
                self.minute.conns.append(
                    await self.db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = 'muster' AND pid <> pg_backend_pid()"
                    )
                )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                self.minute.errors["bench:db-sample"] += 1
            await asyncio.sleep(SAMPLE_SECONDS)

    async def finished_jobs(self) -> int:
        assert self.db is not None
        return int(
            await self.db.fetchval(
                "SELECT count(*) FROM jobs WHERE state = ANY($1::text[])", list(TERMINAL)
            )
        )

    async def close_minute(self, number: int, log_errors: int) -> Row:
        minute, self.minute = self.minute, Minute()
        finished = await self.finished_jobs()
        row = Row(
            minute=number,
            rss=mean(minute.rss),
            pg_rss=mean(minute.pg_rss),
            fds=mean(minute.fds),
            conns=mean(minute.conns),
            requests=minute.requests,
            p50=percentile(minute.latencies, 0.50),
            p99=percentile(minute.latencies, 0.99),
            errors=minute.errors,
            submitted=minute.submitted,
            finished=finished - self.finished_before,
            hooks=minute.hooks,
            sse_events=minute.sse_events,
            log_errors=log_errors,
        )
        self.finished_before = finished
        self.rows.append(row)
        return row

    # --- the run ----------------------------------------------------------------------------

    async def run(self, gateway: GatewayProcess) -> None:
        """The load for ``--minutes``, one row a minute; then the drain."""
        load = [
            asyncio.create_task(self.submitter(), name="submitter"),
            asyncio.create_task(self.lister(), name="lister"),
        ]
        background = [
            *(
                asyncio.create_task(self.sse_client(c), name=f"sse-{i}")
                for i, c in enumerate(self.sse)
            ),
            asyncio.create_task(self.sampler(), name="sampler"),
        ]
        log_seen = 0
        started = time.monotonic()
        print(HEADER)
        try:
            for number in range(1, self.args.minutes + 1):
                await asyncio.sleep(max(0.0, started + 60 * number - time.monotonic()))
                text = gateway.transcript()  # whole lines: the slice starts at a line's start
                row = await self.close_minute(number, len(log_problems(text[log_seen:])))
                log_seen = len(text)
                print(format_row(row))
                if gateway.proc is not None and gateway.proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited with {gateway.proc.returncode}")
            self.stopping.set()
            began = time.monotonic()
            with contextlib.suppress(TimeoutError):  # the checks report what did not end
                await asyncio.wait_for(asyncio.gather(*load), DRAIN_SECONDS)
            await self.drain()
            self.drain_seconds = time.monotonic() - began
        finally:
            for task in [*load, *background]:
                task.cancel()
            await asyncio.gather(*load, *background, return_exceptions=True)

    async def drain(self) -> None:
        """Wait (within DRAIN_SECONDS) until the jobs ended, the outbox is delivered and every
        SSE client holds every event; the checks say what did not happen."""
        assert self.db is not None
        db = self.db
        deadline = time.monotonic() + DRAIN_SECONDS

        async def jobs_ended() -> bool:
            live = await db.fetchval(
                "SELECT count(*) FROM jobs WHERE state <> ALL($1::text[])", list(TERMINAL)
            )
            return bool(live == 0)

        async def hooks_arrived() -> bool:
            pending = await db.fetchval(
                "SELECT count(*) FROM webhook_outbox WHERE status = 'pending'"
            )
            return bool(pending == 0)

        async def sse_caught_up() -> bool:
            events = await db.fetchval("SELECT count(*) FROM job_events")
            return all(len(client.seen) >= events for client in self.sse)

        for done in (jobs_ended, hooks_arrived, sse_caught_up):
            while time.monotonic() < deadline:
                if await done():
                    break
                await asyncio.sleep(0.5)

    # --- the verdicts -----------------------------------------------------------------------

    def flatness(self) -> list[Check]:
        (lo, hi), (tail_lo, tail_hi), scaled = windows(len(self.rows))
        base = [r for r in self.rows if lo < r.minute <= hi]
        last = [r for r in self.rows if tail_lo < r.minute <= tail_hi]
        note = f" (windows scaled by {len(self.rows)}/30)" if scaled else ""
        checks = []
        for name, attribute, judged in (
            ("gateway RSS (MiB)", "rss", True),
            ("gateway open fds", "fds", True),
            ("database connections", "conns", True),
            ("postgres RSS (MiB, not judged: shared buffers fill up)", "pg_rss", False),
        ):
            before = mean([getattr(r, attribute) for r in base])
            after = mean([getattr(r, attribute) for r in last])
            change = (after - before) / before if before else math.inf
            checks.append(
                Check(
                    f"flat: {name}",
                    abs(change) <= 0.05 or not judged,
                    f"mean {before:.1f} in minutes {lo}-{hi}, {after:.1f} in minutes "
                    f"{tail_lo}-{tail_hi}: {change:+.1%}{note}",
                )
            )
        return checks

    async def database_checks(self) -> list[Check]:
        assert self.db is not None
        db = self.db
        states = {
            r["id"]: r["state"]
            for r in await db.fetch(
                "SELECT id::text AS id, state FROM jobs WHERE tenant = $1", TENANT
            )
        }
        created = set(self.created)
        repeated = len(self.created) - len(created)
        missing = created - states.keys()
        unanswered = states.keys() - created  # made, but the client got no 201 (a timeout)
        checks = [
            Check(
                "every 201 is one job",
                not repeated and not missing and not unanswered,
                f"{len(self.created)} 201s, {len(states)} jobs; {repeated} ids repeated, "
                f"{len(missing)} 201s without a job, {len(unanswered)} jobs without a 201",
            )
        ]
        wrong: Counter[str] = Counter()
        for job_id in created & states.keys():
            wanted = "cancelled" if job_id in self.long_jobs else "succeeded"
            if states[job_id] != wanted:
                wrong[f"{wanted} but {states[job_id]}"] += 1
        checks.append(
            Check(
                "every job ended as intended",
                not wrong,
                f"{len(created) - len(self.long_jobs)} short succeeded, {len(self.long_jobs)} "
                f"long cancelled, less these: {dict(wrong) or 'none'}",
            )
        )

        outbox = await db.fetch("SELECT job_id::text AS job_id, status FROM webhook_outbox")
        undelivered = Counter(r["status"] for r in outbox if r["status"] != "delivered")
        wanted_hooks = {j: [f"job.{states[j]}"] for j in self.callback_jobs if j in states}
        hooks = self.receiver
        lost = [
            j for j, want in wanted_hooks.items() if sorted(set(hooks.by_job.get(j, []))) != want
        ]
        repeats = sum(hooks.ids.values()) - len(hooks.ids)
        checks.append(
            Check(
                "every webhook event delivered",
                not lost
                and not undelivered
                and not hooks.unverified
                and len(outbox) == len(wanted_hooks),
                f"{len(wanted_hooks)} callback jobs, {len(outbox)} outbox rows "
                f"(not delivered: {dict(undelivered) or 'none'}), {len(hooks.ids)} received, "
                f"{len(lost)} jobs without their event, {hooks.unverified} failed verification, "
                f"{repeats} repeated webhook-ids (retries)",
            )
        )

        events = {r["id"] for r in await db.fetch("SELECT id FROM job_events")}
        clients = [
            f"#{n}: {c.connections} connections, {len(events - c.seen)} missing, "
            f"{len(c.seen - events)} unknown, {c.duplicates} repeated, {c.out_of_order} out of order"
            for n, c in enumerate(self.sse)
        ]
        checks.append(
            Check(
                "every SSE client got every event once, in order",
                all(c.seen == events and not c.duplicates and not c.out_of_order for c in self.sse),
                f"{len(events)} events; " + "; ".join(clients),
            )
        )
        return checks


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    detail: str


def windows(minutes: int) -> tuple[tuple[int, int], tuple[int, int], bool]:
    """The flatness windows as (after, up to) whole minutes: (5, 10] and (M - 10, M], scaled by
    M/30 under 20 minutes (each at least one minute, the first after the start-up minute); and
    whether they were scaled."""
    if minutes >= 20:
        return (5, 10), (minutes - 10, minutes), False
    scale = minutes / 30
    lo = max(1, round(5 * scale)) if minutes >= 3 else 0  # the first minute holds the start
    hi = max(lo + 1, round(10 * scale))
    tail = max(1, round(10 * scale))
    return (lo, hi), (minutes - tail, minutes), True


def stop_leftover_postgres(root: Path) -> None:
    """After a failure: stop the embedded server the gateway left running, by its pid."""
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        pid = int((root / "postgres" / "postmaster.pid").read_text().split("\n", 1)[0])
        postmaster = psutil.Process(pid)
        if str(root) in " ".join(postmaster.cmdline()):
            postmaster.terminate()
            postmaster.wait(15)


async def soak(args: argparse.Namespace, root: Path) -> int:
    async with contextlib.AsyncExitStack() as stack:
        # Undone in reverse: the load, the database connection, our hold on the server, the
        # gateway (the server's last user: it stops it), a leftover server, the directory.
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        stack.callback(stop_leftover_postgres, root)
        gateway = GatewayProcess(
            {
                "MUSTER_DATA_DIR": str(root),
                "MUSTER_BACKEND": "static",
                "MUSTER_NODES_FILE": str(write_nodes(root / "nodes.yaml", 20, 64, 256)),
                "MUSTER_SIMULATE_RUNS": "true",
                # What finished jobs' clean_pod_policy keeps goes a minute after they end (the
                # default keeps it a week): a steady state exists within the run.
                "MUSTER_JOB_TTL_SECONDS_AFTER_FINISHED": str(KEPT_SECONDS),
                "MUSTER_WEBHOOK_ALLOW_HTTP": "true",
                "MUSTER_WEBHOOK_ALLOW_NETS": "127.0.0.1/32",
            }
        )
        stack.callback(gateway.close)
        base = await asyncio.to_thread(gateway.start)
        assert gateway.proc is not None
        embedded = EmbeddedPostgres(root)
        url = await embedded.start()  # joins the gateway's server
        stack.push_async_callback(embedded.stop)
        run = Soak(args, base, gateway.proc.pid, root)
        run.db = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        stack.push_async_callback(run.db.close)
        await run.receiver.start()
        assert run.receiver.runner is not None
        stack.push_async_callback(run.receiver.runner.cleanup)
        run.http = await stack.enter_async_context(aiohttp.ClientSession(headers=bearer()))

        tenant = {"quota": QUOTA}
        if await run.call("admin", "PUT", f"/v1/admin/tenants/{TENANT}", tenant, 201) is None:
            raise RuntimeError(f"the tenant was refused: {run.minute.errors}")
        run.receiver.secret = await run.db.fetchval(
            "SELECT webhook_secret FROM tenants WHERE name = $1", TENANT
        )
        run.minute = Minute()
        print(
            f"soak: {args.minutes} min, {args.rate} submits/s, {args.list_rate} list calls/s, "
            f"{args.sse} SSE clients; gateway pid {gateway.proc.pid} at {base}, data in {root}; "
            f"{psutil.cpu_count()} CPUs"
        )
        bench_cpu = psutil.Process()
        began = time.monotonic()
        try:
            await run.run(gateway)
        except RuntimeError as exc:  # the gateway died: its log says why
            print(f"\n{exc}\n" + "\n".join(gateway.transcript().splitlines()[-40:]))
            return 1
        wall = time.monotonic() - began
        leftover = run.minute
        checks = await run.database_checks()
        cpu = {
            "gateway": sum(run.gateway.cpu_times()[:2]) / wall,
            "this script": sum(bench_cpu.cpu_times()[:2]) / wall,
        }
        await run.http.close()
        code = await asyncio.to_thread(gateway.stop)
        log = gateway.transcript()
        await asyncio.to_thread(Path(args.log).write_text, log)
        problems = log_problems(log)

    print("\n" + HEADER)
    for row in run.rows:
        print(format_row(row))
    print(
        f"after the load ({run.drain_seconds:.0f} s to drain): {leftover.requests} requests, "
        f"errors {dict(leftover.errors) or 'none'}, {leftover.hooks} webhooks, "
        f"{leftover.sse_events} SSE events"
    )
    for kind, values in sorted(run.all_latencies.items()):
        print(
            f"  {kind:<8} {len(values):>7} calls  p50 {percentile(values, 0.5):7.1f} ms  "
            f"p99 {percentile(values, 0.99):7.1f} ms  max {max(values):7.1f} ms"
        )
    usage = ", ".join(f"{name} {share:.0%}" for name, share in cpu.items())
    print(f"CPU (of one core, over {wall:.0f} s): {usage}; submits behind schedule: {run.behind}")
    checks = [
        *run.flatness(),
        Check(
            "gateway log: no ERROR line, no Traceback",
            not problems,
            f"{len(problems)} such lines, exit status {code}; log kept in {args.log}",
        ),
        *checks,
    ]
    print()
    for check in checks:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    for line in problems[:50]:
        print(f"  log: {line}")
    passed = all(check.passed for check in checks)
    print(f"\nsoak: {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=30, help="minutes of load (default 30)")
    parser.add_argument("--rate", type=float, default=10.0, help="submits per second")
    parser.add_argument("--list-rate", type=float, default=3.0, help="list calls per second")
    parser.add_argument("--sse", type=int, default=4, help="SSE clients")
    parser.add_argument(
        "--log",
        default=f"/tmp/soak-gateway-{os.getpid()}.log",
        help="where the gateway's log is kept (default /tmp/soak-gateway-<pid>.log)",
    )
    args = parser.parse_args()
    if args.minutes < 1 or args.rate <= 0 or args.list_rate <= 0:
        parser.error("--minutes must be 1 or more, --rate and --list-rate above 0")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    root = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    try:
        return await soak(args, root)
    except asyncio.CancelledError:  # Ctrl-C or SIGTERM: everything above is undone already
        print("\nsoak: interrupted; the gateway, its database and the load are stopped")
        return 130


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
