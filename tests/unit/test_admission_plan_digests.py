"""Admission plans are the same as before the scheduling core was reorganised.

Seeded random snapshots (nodes of every GPU mode, taints, labels, readiness, holdings, tenants with
quota, usage and weights, and queues with priorities, backoff, starvation and spread) are planned,
each plan is written out canonically, and its SHA-256 is compared with the digest stored in
``plan_digests.json``, which was made before the reorganisation. A refactoring of the core must
leave every digest as it is; a deliberate change of the decisions regenerates the file (run this
module as a script) and says so in its commit.

Regenerated deliberately once: when a job waiting for its tenant's quota began to hold back that
tenant's jobs of lower priority (issue 15). With that one rule switched off, the incremental
planner (tenant heads and a backfill window) admitted exactly what the stored plans admitted, in
all 300 snapshots; with it, 79 snapshots admit fewer jobs. The digest now also covers every
job's queue place.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from gateway.domain.scheduling.admission import plan, queue_places
from gateway.domain.scheduling.nodes import (
    GpuMode,
    GpuSlice,
    Holding,
    Node,
    PodRequest,
    Taint,
    Toleration,
)
from gateway.domain.scheduling.queue import AdmissionQueue
from gateway.domain.scheduling.queueing import (
    AdmissionPlan,
    PendingJob,
    QueuedAt,
    Snapshot,
    TenantState,
)
from gateway.domain.scheduling.quota import Quota, TenantUsage

DIGESTS = Path(__file__).with_name("plan_digests.json")
SEEDS = range(300)
GIB = 2**30
TENANTS = ("a", "b", "c", "d")


def random_snapshot(seed: int) -> Snapshot:
    rng = random.Random(seed)
    nodes: list[Node] = []
    holdings: list[Holding] = []
    for k in range(rng.randint(1, 12)):
        mode = rng.choice([GpuMode.NONE, GpuMode.NONE, GpuMode.SHARED, GpuMode.DEVICE_PLUGIN])
        devices = 0 if mode is GpuMode.NONE else rng.randint(1, 8)
        labels = {"zone": rng.choice("abc")}
        if mode is GpuMode.SHARED:
            labels["muster.dev/gpu-sharing"] = "true"
        taints = (Taint(key="team", value="ml"),) if rng.random() < 0.15 else ()
        node = Node(
            name=f"n{k:02d}",
            labels=labels,
            taints=taints,
            ready=rng.random() > 0.08,
            gpu_mode=mode,
            cpu_millis=rng.choice([2000, 8000, 32000, 64000]),
            memory_bytes=rng.choice([4, 16, 64, 256]) * GIB,
            gpu_devices=devices,
        )
        nodes.append(node)
        for _ in range(rng.randint(0, 3)):
            gpu: tuple[GpuSlice, ...] = ()
            if devices and rng.random() < 0.5:
                shares = rng.choice([25, 50, 100]) if mode is GpuMode.SHARED else 100
                gpu = (GpuSlice(device=rng.randrange(devices), shares=shares),)
            holdings.append(
                Holding(
                    node=node.name,
                    cpu_millis=rng.choice([0, 500, 1000, 4000]),
                    memory_bytes=rng.choice([0, 1, 2, 8]) * GIB,
                    gpu=gpu,
                )
            )
    tenants = {}
    for name in TENANTS[: rng.randint(1, len(TENANTS))]:
        tenants[name] = TenantState(
            name=name,
            weight=rng.choice([0.5, 1.0, 1.0, 2.0]),
            quota=Quota(
                cpu_millis=rng.choice([4000, 16000, 64000, 10**6]),
                memory_bytes=rng.choice([8, 64, 512, 4096]) * GIB,
                gpu_shares=rng.choice([0, 100, 400, 1600]),
                max_running_jobs=rng.choice([1, 3, 10, 100]),
                max_queued_jobs=1000,
            ),
            usage=TenantUsage(
                cpu_millis=rng.choice([0, 0, 1000, 8000]),
                memory_bytes=rng.choice([0, 0, 4, 32]) * GIB,
                gpu_shares=rng.choice([0, 0, 50, 200]),
                running_jobs=rng.choice([0, 0, 1, 2]),
            ),
        )
    pending: list[PendingJob] = []
    for j in range(rng.randint(0, 40)):
        pods = []
        roles = rng.choice([("worker",), ("chief", "worker", "ps"), ("master", "worker")])
        for role in roles:
            for index in range(rng.randint(1, 3)):
                tolerations = (
                    (Toleration(key="team", operator="Exists"),) if rng.random() < 0.2 else ()
                )
                pods.append(
                    PodRequest(
                        name=f"j{j}-{role}-{index}",
                        role=role,
                        cpu_millis=rng.choice([0, 250, 1000, 4000, 16000]),
                        memory_bytes=rng.choice([0, 1, 4, 32]) * GIB // 2,
                        gpu_shares=rng.choice([0, 0, 0, 25, 50, 100, 200]),
                        node_selector={"zone": rng.choice("ab")} if rng.random() < 0.2 else {},
                        tolerations=tolerations,
                        spread=role == "ps",
                    )
                )
        submitted = float(rng.randint(0, 1000))
        pending.append(
            PendingJob(
                id=f"job-{j:03d}",
                tenant=rng.choice(TENANTS),
                priority=rng.choice([0, 0, 0, 5, 10, -1]),
                submitted_at=submitted,
                not_before=rng.choice([None, None, None, 900.0, 2000.0]),
                queued_since=rng.choice([None, None, submitted + 50.0]),
                pods=tuple(pods),
            )
        )
    return Snapshot(
        now=1000.0,
        nodes=tuple(nodes),
        holdings=tuple(holdings),
        tenants=tenants,
        pending=tuple(pending),
        starvation_seconds=rng.choice([300.0, 600.0, 10**9]),
    )


def canonical(decided: AdmissionPlan, places: list[QueuedAt]) -> str:
    """The plan as sorted-key JSON: every decision, placement, slice, reason and message, and
    every job's place in the queue."""
    return json.dumps(
        {
            "admitted": [
                {
                    "job": a.job_id,
                    "tenant": a.tenant,
                    "placements": [
                        [p.pod_name, p.node, [[s.device, s.shares] for s in p.gpu]]
                        for p in a.placements
                    ],
                }
                for a in decided.admitted
            ],
            "waiting": [[w.job_id, str(w.reason), w.message] for w in decided.waiting],
            "places": [
                [q.job_id, q.position, q.tenant_position, q.reason and str(q.reason), q.message]
                for q in places
            ],
            "reserved_nodes": list(decided.reserved_nodes),
            "reserved_for": decided.reserved_for,
        },
        sort_keys=True,
    )


def digest(seed: int) -> str:
    snap = random_snapshot(seed)
    places = list(queue_places(snap, AdmissionQueue.of(snap.pending)))
    return hashlib.sha256(canonical(plan(snap), places).encode()).hexdigest()


def test_admission_plans_are_those_made_before_the_core_was_reorganised() -> None:
    stored = json.loads(DIGESTS.read_text("utf-8"))
    changed = [seed for seed in SEEDS if digest(seed) != stored[str(seed)]]
    assert changed == [], f"plans of seeds {changed} differ from the stored ones"


def test_the_random_snapshots_exercise_every_kind_of_decision() -> None:
    """The digests are worth something only if the snapshots reach admissions, every reason and
    reservations."""
    reasons: set[str] = set()
    admitted = reserved = 0
    for seed in SEEDS:
        snap = random_snapshot(seed)
        decided = plan(snap)
        admitted += len(decided.admitted)
        reserved += decided.reserved_for is not None
        reasons.update(str(w.reason) for w in decided.waiting)
        places = queue_places(snap, AdmissionQueue.of(snap.pending))
        reasons.update(str(q.reason) for q in places if q.reason is not None)
    assert admitted > 100
    assert reserved > 5
    assert reasons == {
        "WaitingForQuota",
        "InsufficientCapacity",
        "Fragmented",
        "Reserved",
        "BackoffAfterEviction",
    }


if __name__ == "__main__":
    DIGESTS.write_text(json.dumps({str(s): digest(s) for s in SEEDS}, indent=0) + "\n", "utf-8")
    print(f"wrote {len(SEEDS)} digests to {DIGESTS}")
