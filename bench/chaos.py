"""Chaos harness: real ``muster serve`` processes on a real PostgreSQL, with faults injected.

    python bench/chaos.py                        # every scenario
    python bench/chaos.py --short                # durations shrunk ~5x, for a quick run
    python bench/chaos.py --short leader-kill webhook-receiver-away

Scenarios:

- ``pg-restart-fast``, ``pg-restart-immediate``: a submit storm (jobs that finish at once or
  after a second) while PostgreSQL is stopped (``pg_ctl stop -m fast|immediate``) for 10 s and
  started again. Recovery: from the restart to the first 201 and to the first admission.
- ``leader-kill``: three replicas on one database, load spread over them; every 10 s the leader
  (``muster_leader`` in /metrics) is SIGKILLed and restarted, for 5 minutes. Recovery: from each
  kill to the next admission.
- ``webhook-receiver-away``: jobs whose callback is a local receiver (verifying signatures); the
  receiver stops for 20 s and comes back. Every event is delivered at least once, always with
  the same webhook-id.
- ``slow-database``: a TCP proxy adds 200 ms to every client -> server message; the API sheds
  load with 503 and Retry-After within ``MUSTER_DATABASE_POOL_TIMEOUT`` (2 s) instead of
  queueing. Latency p50/p99 per answer.

After each scenario the audit (``chaos_parts.audit``) checks the promises in the database: every
201 is exactly one job, each job admitted at most once (between requeues) and finished once, no
quota or node over-committed at any moment. Each scenario prints its table and a PASS/FAIL line
per promise. The bench owns its PostgreSQL (embedded, in a temporary directory) and every
process it starts; all are gone at the end, on failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chaos_parts import (
    SWEEP_SLACK,
    Audit,
    Loop,
    Postgres,
    Receiver,
    Sampler,
    SlowProxy,
    Storm,
    audit,
    audit_verdicts,
    audit_webhooks,
    call,
    first_admission_after,
    gateway_env,
    gateway_trouble,
    kinds_text,
    make_tenants,
    percentile,
    print_table,
    seconds,
    write_nodes,
)

from tests.acceptance.gateway_process import GatewayProcess


def audit_rows(result: Audit) -> list[tuple[str, str]]:
    return [
        ("backlog drained after the load", f"{result.drain_seconds:.1f} s"),
        ("placements audited", str(result.placements)),
        ("live snapshots checked", str(result.samples)),
        ("peak CPU millis per tenant", str(result.peak_tenant_cpu)),
        (
            "overlaps by timestamps",
            f"{result.sweep_quota_overlaps} quota, {result.sweep_node_overlaps} node; longest "
            f"{result.sweep_longest * 1000:.0f} ms (a breach past {SWEEP_SLACK * 1000:.0f} ms)",
        ),
    ]


# The audit waits for the storm's jobs to finish while they do; it gives up after this many
# seconds in which none finished (a job stuck, not a backlog draining at the quotas' pace).
FINISH_WITHIN = 60.0


@dataclass(frozen=True, kw_only=True)
class Scale:
    """Durations of one run; ``--short`` divides them."""

    warmup: float
    outage: float
    after: float
    leader_run: float
    kill_every: float
    receiver_outage: float
    slow: float


FULL = Scale(
    warmup=5, outage=10, after=10, leader_run=300, kill_every=10, receiver_outage=20, slow=20
)
SHORT = Scale(warmup=2, outage=2, after=3, leader_run=60, kill_every=10, receiver_outage=5, slow=8)


@dataclass
class Bench:
    loop: Loop
    scale: Scale
    sampler: Sampler | None = None


def audited(bench: Bench, postgres: Postgres, created: list[str]) -> Audit:
    """The audit of the scenario's database, with what its sampler saw while it ran."""
    result = bench.loop.run(audit(postgres.dsn, created, finish_within=FINISH_WITHIN))
    if bench.sampler is not None:
        bench.loop.run(bench.sampler.stop(result))
        bench.sampler = None
    return result


@contextlib.contextmanager
def database(bench: Bench) -> Iterator[tuple[Postgres, Path]]:
    """A fresh migrated PostgreSQL and a nodes file beside it; gone afterwards."""
    postgres = Postgres()
    try:
        bench.loop.run(postgres.start())
        bench.sampler = Sampler(postgres.dsn)
        bench.loop.run(bench.sampler.start())
        yield postgres, write_nodes(postgres.root / "nodes.yaml")
    finally:
        if bench.sampler is not None:
            bench.loop.run(bench.sampler.stop(Audit()))
            bench.sampler = None
        bench.loop.run(postgres.close(), timeout=60)


def started(gateways: list[GatewayProcess], env: dict[str, str]) -> str:
    """Start one more gateway of ``env`` into ``gateways``; its URL."""
    gateway = GatewayProcess(env)
    gateways.append(gateway)
    return gateway.start()


def kill_all(gateways: list[GatewayProcess]) -> None:
    for gateway in gateways:
        with contextlib.suppress(Exception):
            gateway.kill()


# 1. PostgreSQL stops and starts under a storm. ---------------------------------------------


def pg_restart(bench: Bench, mode: str) -> bool:
    scale = bench.scale
    gateways: list[GatewayProcess] = []
    with database(bench) as (postgres, nodes):
        try:
            base = started(gateways, gateway_env(postgres.url, postgres.root, nodes))
            pid = gateways[0].proc.pid if gateways[0].proc else 0
            make_tenants(base)
            with Storm(lambda: [base], threads=3) as storm:
                time.sleep(scale.warmup)
                postgres.halt(mode)
                halted = time.monotonic()
                time.sleep(scale.outage / 2)
                ready = call("GET", f"{base}/readyz", timeout=10)
                time.sleep(scale.outage / 2)
                postgres.resume()
                resumed, resumed_wall = time.monotonic(), time.time()
                first_201 = storm.wait_201_after(resumed, 30)
                time.sleep(scale.after)
            result = audited(bench, postgres, storm.ids())
            first_admitted = bench.loop.run(first_admission_after(postgres.dsn, resumed_wall))
            same_process = gateways[0].proc is not None and gateways[0].proc.poll() is None
            same_process = same_process and gateways[0].proc.pid == pid
            trouble = gateway_trouble(gateways)
        finally:
            kill_all(gateways)
    rows = [
        ("faults injected", f"1 PostgreSQL stop -m {mode}, {resumed - halted:.1f} s"),
        ("requests", str(storm.requests)),
        ("answers by kind", kinds_text(storm.kinds)),
        ("jobs created (201)", str(result.created)),
        ("jobs of non-201 answers", str(result.phantoms)),
        ("jobs failed", str(result.failed)),
        *audit_rows(result),
        ("/readyz during the outage", f"{ready[0]} Retry-After={ready[2].get('Retry-After')}"),
        ("gateway ERROR lines", str(trouble)),
        ("recovery: first 201", seconds(None if first_201 is None else first_201 - resumed)),
        ("recovery: first admission", seconds(first_admitted)),
    ]
    server_errors = sum(
        n for kind, n in storm.kinds.items() if kind.startswith("5") and kind != "503"
    )
    verdicts = [
        *audit_verdicts(result),
        ("5xx other than 503", server_errors == 0, str(server_errors)),
        ("503 without Retry-After", storm.missing_retry_after == 0, str(storm.missing_retry_after)),
        ("recovered without restart", same_process, "same pid" if same_process else "gone"),
        (
            "recovered (201 after resume)",
            first_201 is not None,
            seconds(None if first_201 is None else first_201 - resumed),
        ),
    ]
    return print_table(f"pg-restart-{mode}", rows, verdicts)


# 2. The leader is killed again and again. --------------------------------------------------


def is_leader(base: str) -> bool:
    try:
        status, text, _ = call("GET", f"{base}/metrics", timeout=10)
    except OSError:
        return False
    if status != 200 or not isinstance(text, str):
        return False
    for line in text.splitlines():
        if line.startswith("muster_leader "):
            return float(line.split()[1]) == 1.0
    return False


def leader_kill(bench: Bench) -> bool:
    scale = bench.scale
    everyone: list[GatewayProcess] = []  # each process ever started, for the cleanup
    live: dict[int, tuple[GatewayProcess, str]] = {}  # slot -> (process, url)
    lock = threading.Lock()
    kills: list[tuple[float, str]] = []  # (wall time of the kill, what was found)
    restart_failures = 0

    def bases() -> list[str]:
        with lock:
            return [url for _, url in live.values()]

    with database(bench) as (postgres, nodes):
        env = gateway_env(postgres.url, postgres.root, nodes)
        try:
            for slot in range(3):
                url = started(everyone, env)
                live[slot] = (everyone[-1], url)
            make_tenants(live[0][1])
            with Storm(bases, threads=4, pause=0.02) as storm:
                time.sleep(scale.warmup)
                end = time.monotonic() + scale.leader_run
                while time.monotonic() < end:
                    with lock:
                        slots = dict(live)
                    leaders = [slot for slot, (_, url) in slots.items() if is_leader(url)]
                    if len(leaders) != 1:
                        kills.append((time.time(), f"{len(leaders)} leaders"))
                        time.sleep(1)
                        continue
                    slot = leaders[0]
                    with lock:
                        process, _ = live.pop(slot)
                    process.kill()
                    kills.append((time.time(), "killed"))
                    try:
                        url = started(everyone, env)
                        with lock:
                            live[slot] = (everyone[-1], url)
                    except AssertionError:
                        restart_failures += 1
                    time.sleep(max(0.0, scale.kill_every - (time.time() - kills[-1][0])))
            result = audited(bench, postgres, storm.ids())
            recoveries = [
                bench.loop.run(first_admission_after(postgres.dsn, wall))
                for wall, what in kills
                if what == "killed"
            ]
            trouble = gateway_trouble(everyone)
        finally:
            kill_all(everyone)
    killed = sum(what == "killed" for _, what in kills)
    confused = [what for _, what in kills if what != "killed"]
    measured = [r for r in recoveries if r is not None]
    rows = [
        ("faults injected", f"{killed} leader SIGKILLs over {scale.leader_run:.0f} s"),
        (
            "leader checks without one leader",
            str(len(confused)) + (f" ({confused[:5]})" if confused else ""),
        ),
        ("requests", str(storm.requests)),
        ("answers by kind", kinds_text(storm.kinds)),
        ("jobs created (201)", str(result.created)),
        ("jobs of non-201 answers", str(result.phantoms)),
        ("jobs failed", str(result.failed)),
        *audit_rows(result),
        ("gateway ERROR lines", str(trouble)),
        ("restarts that failed", str(restart_failures)),
        (
            "recovery: kill -> next admission",
            f"p50 {seconds(percentile(measured, 0.5) if measured else None)} max {seconds(max(measured) if measured else None)}",
        ),
    ]
    server_errors = sum(
        n for kind, n in storm.kinds.items() if kind.startswith("5") and kind != "503"
    )
    verdicts = [
        *audit_verdicts(result),
        ("5xx other than 503", server_errors == 0, str(server_errors)),
        (
            "an admission after every kill",
            len(measured) == len(recoveries) > 0,
            f"{len(measured)}/{len(recoveries)}",
        ),
    ]
    return print_table("leader-kill", rows, verdicts)


# 3. The webhook receiver goes away and comes back. -----------------------------------------


def webhook_receiver_away(bench: Bench) -> bool:
    scale = bench.scale
    gateways: list[GatewayProcess] = []
    receiver = Receiver()
    bench.loop.run(receiver.start())
    try:
        with database(bench) as (postgres, nodes):
            env = gateway_env(
                postgres.url,
                postgres.root,
                nodes,
                MUSTER_WEBHOOK_ALLOW_HTTP="true",
                MUSTER_WEBHOOK_ALLOW_NETS="127.0.0.1/32",
                MUSTER_WEBHOOK_TIMEOUT="2",
                MUSTER_WEBHOOK_RETRY_SCHEDULE="0,1,2,4,8,8,8,8,8,8",
            )
            try:
                bases = [started(gateways, env), started(gateways, env)]
                make_tenants(bases[0])
                receiver.secrets = secrets_of(bench, postgres.dsn)
                with Storm(lambda: bases, threads=2, callback=receiver.url, pause=0.05) as storm:
                    time.sleep(scale.warmup)
                    bench.loop.run(receiver.away())
                    time.sleep(scale.receiver_outage)
                    bench.loop.run(receiver.back())
                    back = time.monotonic()
                    time.sleep(scale.after)
                result = audited(bench, postgres, storm.ids())
                bench.loop.run(audit_webhooks(postgres.dsn, result, receiver, within=60))
                drained = time.monotonic() - back
                trouble = gateway_trouble(gateways)
            finally:
                kill_all(gateways)
    finally:
        bench.loop.run(receiver.away())
    retried = len(receiver.receipts) - len({r.webhook_id for r in receiver.receipts})
    rows = [
        (
            "faults injected",
            f"receiver away {scale.receiver_outage:.0f} s; 503 to 1 first try in 5",
        ),
        ("requests", str(storm.requests)),
        ("answers by kind", kinds_text(storm.kinds)),
        ("jobs created (201)", str(result.created)),
        *audit_rows(result),
        ("events in the outbox", str(result.events)),
        ("deliveries received", f"{len(receiver.receipts)} ({retried} repeats of an id)"),
        ("gateway ERROR lines", str(trouble)),
        ("receiver back -> outbox drained", f"{drained:.1f} s (bounded by the audit's wait)"),
    ]
    return print_table("webhook-receiver-away", rows, audit_verdicts(result, webhooks=True))


def secrets_of(bench: Bench, dsn: str) -> list[str]:
    async def read() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            return [row[0] for row in await conn.fetch("SELECT webhook_secret FROM tenants")]
        finally:
            await conn.close()

    return bench.loop.run(read())


# 4. A slow database: the API sheds load. ---------------------------------------------------


def slow_database(bench: Bench) -> bool:
    scale = bench.scale
    pool_timeout = 2.0
    gateways: list[GatewayProcess] = []
    with database(bench) as (postgres, nodes):
        proxy = SlowProxy(postgres.socket)
        bench.loop.run(proxy.start())
        password = postgres.url.split(":", 2)[2].split("@", 1)[0]
        url = f"postgresql+asyncpg://postgres:{password}@127.0.0.1:{proxy.port}/muster"
        try:
            base = started(gateways, gateway_env(url, postgres.root, nodes))
            make_tenants(base)
            with Storm(lambda: [base], threads=3) as calm:
                time.sleep(scale.warmup)
            proxy.delay = 0.2
            with Storm(lambda: [base], threads=40) as storm:
                time.sleep(scale.slow)
            proxy.delay = 0.0
            calmed = time.monotonic()
            with Storm(lambda: [base], threads=3) as after:
                recovered = after.wait_201_after(calmed, 30)
                time.sleep(scale.after)
            result = audited(bench, postgres, calm.ids() + storm.ids() + after.ids())
            trouble = gateway_trouble(gateways)
        finally:
            kill_all(gateways)
            bench.loop.run(proxy.close())
    rows = [
        (
            "faults injected",
            f"+200 ms per client->server message for {scale.slow:.0f} s, 40 clients",
        ),
        ("requests (calm, slow, after)", f"{calm.requests}, {storm.requests}, {after.requests}"),
        ("answers by kind (slow)", kinds_text(storm.kinds)),
        ("jobs created (201)", str(result.created)),
        ("jobs of non-201 answers", str(result.phantoms)),
        *audit_rows(result),
        ("gateway ERROR lines", str(trouble)),
        (
            "recovery: first 201 after the delay ends",
            seconds(None if recovered is None else recovered - calmed),
        ),
    ]
    for kind in sorted(storm.latencies):
        values = storm.latencies[kind]
        rows.append(
            (
                f"latency of {kind}",
                f"n {len(values)} p50 {percentile(values, 0.5):.2f} s "
                f"p99 {percentile(values, 0.99):.2f} s max {max(values):.2f} s",
            )
        )
    shed = storm.latencies.get("503", [])
    slowest = max((v for values in storm.latencies.values() for v in values), default=0.0)
    others = sum(n for kind, n in storm.kinds.items() if kind not in ("201", "503"))
    rows.append(("load shed (503)", str(len(shed))))
    verdicts = [
        *audit_verdicts(result),
        ("answers other than 201/503", others == 0, str(others)),
        ("503 without Retry-After", storm.missing_retry_after == 0, str(storm.missing_retry_after)),
        (
            f"every answer within pool timeout {pool_timeout:.0f} s + 1 s",
            slowest <= pool_timeout + 1.0,
            f"max {slowest:.2f} s",
        ),
    ]
    return print_table("slow-database", rows, verdicts)


SCENARIOS: dict[str, Callable[[Bench], bool]] = {
    "pg-restart-fast": lambda bench: pg_restart(bench, "fast"),
    "pg-restart-immediate": lambda bench: pg_restart(bench, "immediate"),
    "leader-kill": leader_kill,
    "webhook-receiver-away": webhook_receiver_away,
    "slow-database": slow_database,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="durations shrunk ~5x")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    args = parser.parse_args()
    if unknown := [name for name in args.scenarios if name not in SCENARIOS]:
        parser.error(f"unknown scenario {unknown}; choose from {', '.join(SCENARIOS)}")
    bench = Bench(loop=Loop(), scale=SHORT if args.short else FULL)
    outcomes: dict[str, str] = {}
    try:
        for name in args.scenarios or list(SCENARIOS):
            began = time.monotonic()
            try:
                outcomes[name] = "PASS" if SCENARIOS[name](bench) else "FAIL"
            except Exception as exc:  # one scenario's crash must not hide the others' tables
                print(f"\n== {name}: crashed: {type(exc).__name__}: {exc}")
                outcomes[name] = "CRASH"
            print(f"  ({time.monotonic() - began:.0f} s)")
    finally:
        bench.loop.close()
    print("\n" + "  ".join(f"{name}: {outcome}" for name, outcome in outcomes.items()))
    return 0 if all(outcome == "PASS" for outcome in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
