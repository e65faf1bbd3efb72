"""How long one admission cycle takes: `plan()` over seeded random snapshots.

    python bench/admission.py            # pending in {1k, 10k, 100k} x nodes in {100, 1000, 5000}
    python bench/admission.py --quick    # pending in {1k, 10k} x nodes in {100, 1000}

Nodes have 8 GPUs each (device-plugin and shared), some labels, taints and existing holdings.
Jobs mix single CPU pods, fractional-GPU jobs, TensorFlow PS/worker gangs and PyTorch gangs of
1..64 pods over several tenants, with a few priorities, selectors, backoffs and starving jobs.

A second table plans the same queues with preemption in play: the tenants form two cohorts, two
of them run far above their nominal quota on what the others lend (gangs placed by plan() itself,
so every borrowed placement is real), half the tenants let higher priorities preempt their own
gangs, and the lenders' queued jobs reclaim. It prints each size beside the plain figure.

A third table plans the same queues with extended resources in the mix: half the GPU nodes
advertise RDMA NICs (rdma/hca) and a quarter 2 MiB huge pages, some already held; a third of the
GPU jobs ask for one NIC per GPU pod and some for huge pages; three tenants have NIC quotas.

Goals: 10k pending x 1,000 nodes decided in <= 0.5 s, plain, with preemption and with extended
resources, and 100k
pending costing <= 12x the 10k figure at the same node count. Imports only gateway.domain and the
standard library.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.domain.scheduling.admission import plan
from gateway.domain.scheduling.cohorts import CohortTerms
from gateway.domain.scheduling.nodes import (
    GpuMode,
    GpuSlice,
    Holding,
    Node,
    PodRequest,
    Taint,
    Toleration,
)
from gateway.domain.scheduling.queueing import (
    PendingJob,
    PreemptionPolicy,
    RunningGang,
    Snapshot,
    TenantState,
)
from gateway.domain.scheduling.quota import Quota, TenantUsage

GIB = 1 << 30
ZONES = ("a", "b", "c")
TENANTS = ("search", "ads", "recs", "vision", "speech", "nlp", "fraud", "infra")
DEDICATED = Taint(key="dedicated", value="training", effect="NoSchedule")
TOLERATE_DEDICATED = (Toleration(key="dedicated", operator="Equal", value="training"),)
GOAL_SECONDS = 0.5
GOAL_RATIO = 12.0


def build_nodes(rng: random.Random, count: int) -> tuple[list[Node], list[Holding]]:
    nodes: list[Node] = []
    holdings: list[Holding] = []
    for i in range(count):
        shared = rng.random() < 0.3
        cpu_cores = rng.choice((64, 96, 128))
        node = Node(
            name=f"node-{i:05d}",
            labels={"zone": ZONES[i % 3], "pool": "shared" if shared else "exclusive"},
            taints=(DEDICATED,) if rng.random() < 0.05 else (),
            ready=rng.random() > 0.02,
            gpu_mode=GpuMode.SHARED if shared else GpuMode.DEVICE_PLUGIN,
            cpu_millis=cpu_cores * 1000,
            memory_bytes=cpu_cores * 8 * GIB,
            gpu_devices=8,
        )
        nodes.append(node)
        if rng.random() < 0.4:
            # Some devices already held, whole or (on shared nodes) in slices.
            for device in rng.sample(range(8), rng.randint(1, 6)):
                shares = rng.choice((25, 50, 75)) if shared and rng.random() < 0.5 else 100
                holdings.append(
                    Holding(
                        node=node.name,
                        cpu_millis=rng.randint(1, 8) * 1000,
                        memory_bytes=rng.randint(4, 64) * GIB,
                        gpu=(GpuSlice(device=device, shares=shares),),
                    )
                )
    return nodes, holdings


def gang_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.5:
        return rng.randint(2, 8)
    if roll < 0.85:
        return rng.randint(9, 32)
    return rng.randint(33, 64)


def build_pods(rng: random.Random) -> tuple[PodRequest, ...]:
    selector = {"zone": rng.choice(ZONES)} if rng.random() < 0.1 else {}
    tolerations = TOLERATE_DEDICATED if rng.random() < 0.05 else ()

    def pods(
        role: str, count: int, cpu: int, mem_gib: int, gpu: int, *, spread: bool = False
    ) -> list[PodRequest]:
        return [
            PodRequest(
                name=f"{role}-{k}",
                role=role,
                cpu_millis=cpu * 1000,
                memory_bytes=mem_gib * GIB,
                gpu_shares=gpu,
                node_selector=dict(selector),
                tolerations=tolerations,
                spread=spread,
            )
            for k in range(count)
        ]

    kind = rng.random()
    if kind < 0.30:  # a single CPU pod
        return tuple(pods("worker", 1, rng.randint(1, 8), rng.randint(2, 32), 0))
    if kind < 0.50:  # fractional GPUs (only shared nodes take these)
        return tuple(pods("worker", rng.randint(1, 4), rng.randint(2, 8), 16, rng.choice((25, 50))))
    if kind < 0.75:  # TensorFlow: chief, workers, spread parameter servers
        size = gang_size(rng)
        ps = min(rng.randint(1, 4), size - 1)
        gpu = rng.choice((100, 100, 200, 400, 800))
        workers = max(size - ps - 1, 0)
        return tuple(
            pods("chief", 1, 8, 32, gpu)
            + pods("worker", workers, 8, 32, gpu)
            + pods("ps", ps, 4, 64, 0, spread=True)
        )
    if kind < 0.90:  # PyTorch: master and workers
        size = gang_size(rng)
        gpu = rng.choice((100, 800))
        return tuple(pods("master", 1, 8, 64, gpu) + pods("worker", size - 1, 8, 64, gpu))
    return tuple(pods("worker", gang_size(rng), rng.randint(2, 16), 16, 0))  # a CPU gang


def build_snapshot(seed: int, pending: int, node_count: int) -> Snapshot:
    rng = random.Random(seed)
    nodes, holdings = build_nodes(rng, node_count)
    now = 100_000.0
    tenants = {}
    for k, name in enumerate(TENANTS):
        tenants[name] = TenantState(
            name=name,
            weight=float(1 + k % 3),
            quota=Quota(
                cpu_millis=node_count * 96_000 // (2 + k % 3),
                memory_bytes=node_count * 768 * GIB // (2 + k % 3),
                gpu_shares=node_count * 800 // (2 + k % 4),
                max_running_jobs=node_count * (1 + k % 4),
                max_queued_jobs=10**6,
            ),
            usage=TenantUsage(running_jobs=k),
        )
    jobs = []
    for i in range(pending):
        # Most jobs are recent; a few have waited past the starvation threshold.
        submitted = now - (rng.random() * 7200 if rng.random() < 0.02 else rng.random() * 3000)
        jobs.append(
            PendingJob(
                id=f"job-{i:06d}",
                tenant=rng.choice(TENANTS),
                priority=rng.choices((0, 1, 2), weights=(80, 15, 5))[0],
                submitted_at=submitted,
                not_before=now + 60 if rng.random() < 0.02 else None,
                pods=build_pods(rng),
            )
        )
    return Snapshot(
        now=now,
        nodes=tuple(nodes),
        holdings=tuple(holdings),
        tenants=tenants,
        pending=tuple(jobs),
        starvation_seconds=3600.0,
    )


COHORTS = {name: ("one" if k < 4 else "two") for k, name in enumerate(TENANTS)}
BORROWERS = ("search", "speech")


def with_preemption(snapshot: Snapshot, seed: int) -> Snapshot:
    """``snapshot`` with cohorts and running gangs: the borrowers' jobs are admitted by plan()
    on the empty cluster (borrowing what the others leave idle), and run as gangs admitted over
    the last hour; the lenders' jobs then queue as in ``snapshot``."""
    rng = random.Random(seed)
    node_count = len(snapshot.nodes)
    tenants = {
        name: TenantState(
            name=name,
            weight=1.0,
            quota=Quota(
                cpu_millis=node_count * 96_000 // 8,
                memory_bytes=node_count * 768 * GIB // 8,
                gpu_shares=node_count * 800 // 8,
                max_running_jobs=10**6,
                max_queued_jobs=10**6,
            ),
            cohort=CohortTerms(cohort=COHORTS[name]),
            preemption_policy=PreemptionPolicy.LOWER_PRIORITY if k % 2 else PreemptionPolicy.NEVER,
        )
        for k, name in enumerate(TENANTS)
    }
    borrowing = [
        PendingJob(
            id=f"run-{i:06d}",
            tenant=BORROWERS[i % 2],
            priority=rng.choice((0, 1)),
            submitted_at=snapshot.now - 7200,
            pods=build_pods(rng),
        )
        for i in range(node_count * 4)
    ]
    filled = plan(
        Snapshot(
            now=snapshot.now,
            nodes=snapshot.nodes,
            tenants=tenants,
            pending=tuple(borrowing),
            starvation_seconds=10**9,
        )
    )
    by_id = {job.id: job for job in borrowing}
    gangs = tuple(
        RunningGang(
            job_id=a.job_id,
            tenant=a.tenant,
            priority=by_id[a.job_id].priority,
            preemptible=rng.random() > 0.1,
            admitted_at=snapshot.now - rng.random() * 3600,
            placements=a.placements,
        )
        for a in filled.admitted
    )
    usage = {name: TenantUsage() for name in TENANTS}
    for gang in gangs:
        usage[gang.tenant] = usage[gang.tenant].plus(gang.demand)
    return Snapshot(
        now=snapshot.now,
        nodes=snapshot.nodes,
        holdings=tuple(
            Holding(node=p.node, cpu_millis=p.cpu_millis, memory_bytes=p.memory_bytes, gpu=p.gpu)
            for gang in gangs
            for p in gang.placements
        ),
        tenants={name: replace(state, usage=usage[name]) for name, state in tenants.items()},
        pending=snapshot.pending,
        starvation_seconds=snapshot.starvation_seconds,
        running=gangs,
        min_runtime_seconds=60.0,
    )


RDMA = "rdma/hca"
PAGES = "hugepages-2Mi"


def with_extended(snapshot: Snapshot, seed: int) -> Snapshot:
    """``snapshot`` with extended resources on nodes, in holdings, in jobs and in quotas."""
    rng = random.Random(seed)
    nodes = []
    holdings = list(snapshot.holdings)
    for node in snapshot.nodes:
        offered = {}
        if rng.random() < 0.5:
            offered[RDMA] = rng.choice((4, 8))
        if rng.random() < 0.25:
            offered[PAGES] = 64 * GIB
        if offered and rng.random() < 0.3:
            held = {name: amount // 2 for name, amount in offered.items()}
            holdings.append(
                Holding(
                    node=node.name,
                    cpu_millis=0,
                    memory_bytes=0,
                    extended=tuple(sorted(held.items())),
                )
            )
        nodes.append(replace(node, extended=offered))
    jobs = []
    for job in snapshot.pending:
        gpu = any(p.gpu_shares >= 100 for p in job.pods)
        if gpu and rng.random() < 0.33:
            asks = ((PAGES, 2 * GIB), (RDMA, 1)) if rng.random() < 0.3 else ((RDMA, 1),)
            pods = tuple(replace(p, extended=asks) if p.gpu_shares else p for p in job.pods)
            job = replace(job, pods=pods)
        jobs.append(job)
    tenants = {
        name: replace(
            state,
            quota=replace(state.quota, extended=((RDMA, len(snapshot.nodes) * 2),)),
        )
        if k < 3
        else state
        for k, (name, state) in enumerate(snapshot.tenants.items())
    }
    return replace(
        snapshot, nodes=tuple(nodes), holdings=tuple(holdings), pending=tuple(jobs), tenants=tenants
    )


def measure(snapshot: Snapshot, runs: int) -> tuple[float, int, Counter[str]]:
    times = []
    result = plan(snapshot)
    for _ in range(runs):
        start = time.perf_counter()
        result = plan(snapshot)
        times.append(time.perf_counter() - start)
    reasons = Counter(str(w.reason) for w in result.waiting)
    if result.preempted:
        reasons["(preempted)"] = len(result.preempted)
    return statistics.median(times), len(result.admitted), reasons


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a subset: up to 10k pending, 1,000 nodes"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs per cell (median)")
    args = parser.parse_args()
    pendings = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    node_counts = (100, 1_000) if args.quick else (100, 1_000, 5_000)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, load average {load}")
    print(f"plan() cycle time, median of {args.runs} runs after one warm-up run\n")
    header = ("pending", "nodes", "pods", "median s", "admitted")
    print(" ".join(f"{h:>9}" for h in header), " waiting by reason")
    seconds: dict[tuple[int, int], float] = {}
    for node_count in node_counts:
        for pending in pendings:
            snapshot = build_snapshot(
                seed=pending * 7 + node_count, pending=pending, node_count=node_count
            )
            pods = sum(len(job.pods) for job in snapshot.pending)
            took, admitted, reasons = measure(snapshot, args.runs)
            seconds[(pending, node_count)] = took
            why = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
            row = (f"{pending:>9}", f"{node_count:>9}", f"{pods:>9}", f"{took:>9.3f}")
            print(*row, f"{admitted:>9}", "", why, flush=True)

    print("\nwith preemption: two cohorts, borrowers running on lent quota, lenders reclaiming\n")
    header = ("pending", "nodes", "gangs", "median s", "admitted", "vs plain")
    print(" ".join(f"{h:>9}" for h in header), " waiting by reason (and preempted)")
    preempting: dict[tuple[int, int], float] = {}
    for node_count in node_counts:
        if node_count > 1_000:
            continue  # the borrowers' fill alone takes minutes at 5,000 nodes
        for pending in pendings:
            if pending > 10_000:
                continue
            seed = pending * 7 + node_count
            snapshot = with_preemption(
                build_snapshot(seed=seed, pending=pending, node_count=node_count), seed
            )
            took, admitted, reasons = measure(snapshot, args.runs)
            preempting[(pending, node_count)] = took
            ratio = took / seconds[(pending, node_count)]
            why = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
            row = (f"{pending:>9}", f"{node_count:>9}", f"{len(snapshot.running):>9}")
            print(*row, f"{took:>9.3f}", f"{admitted:>9}", f"{ratio:>8.2f}x", "", why, flush=True)

    print("\nwith extended resources: RDMA NICs and huge pages on nodes, in jobs and quotas\n")
    header = ("pending", "nodes", "ext pods", "median s", "admitted", "vs plain")
    print(" ".join(f"{h:>9}" for h in header), " waiting by reason")
    extended: dict[tuple[int, int], float] = {}
    for node_count in node_counts:
        for pending in pendings:
            if pending > 10_000 and node_count > 1_000:
                continue
            seed = pending * 7 + node_count
            snapshot = with_extended(
                build_snapshot(seed=seed, pending=pending, node_count=node_count), seed
            )
            asking = sum(1 for job in snapshot.pending for p in job.pods if p.extended)
            took, admitted, reasons = measure(snapshot, args.runs)
            extended[(pending, node_count)] = took
            ratio = took / seconds[(pending, node_count)]
            why = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
            row = (f"{pending:>9}", f"{node_count:>9}", f"{asking:>9}")
            print(*row, f"{took:>9.3f}", f"{admitted:>9}", f"{ratio:>8.2f}x", "", why, flush=True)

    print()
    verdicts = []
    for label, table in (
        (" with extended resources", extended),
        (" with preemption", preempting),
        ("", seconds),
    ):
        if (10_000, 1_000) in table:
            took = table[(10_000, 1_000)]
            verdict = "PASS" if took <= GOAL_SECONDS else "MISS"
            verdicts.append(verdict)
            print(
                f"10k pending x 1,000 nodes{label}: {took:.3f} s "
                f"(goal <= {GOAL_SECONDS} s)  {verdict}"
            )
    for node_count in node_counts:
        if (100_000, node_count) in seconds and (10_000, node_count) in seconds:
            ratio = seconds[(100_000, node_count)] / seconds[(10_000, node_count)]
            verdict = "PASS" if ratio <= GOAL_RATIO else "MISS"
            verdicts.append(verdict)
            goal = f"(goal <= {GOAL_RATIO:g}x)"
            print(f"100k/10k at {node_count:>5} nodes: {ratio:5.2f}x {goal}  {verdict}")
    return 0 if all(v == "PASS" for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
