"""The leader's incremental queue decides exactly as a plan from scratch, over random histories.

Each seeded history interleaves submits, cancels, jobs seen again, job ends, evictions (requeued
with backoff), node changes (added, removed, not ready and back) and the passing of time with
admission cycles.
The incremental side keeps one ``AdmissionQueue`` and changes it only by what happened; the
reference rebuilds the queue from the list of pending jobs at every cycle. At every cycle both
must hold the same jobs in the same order and yield the same plan, and every job's queue place
must agree.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import pytest

from gateway.domain.scheduling.admission import plan, queue_places
from gateway.domain.scheduling.nodes import Holding, Node, PodRequest
from gateway.domain.scheduling.queue import AdmissionQueue
from gateway.domain.scheduling.queueing import PendingJob, Snapshot, TenantState
from gateway.domain.scheduling.quota import Quota, TenantUsage
from tests.unit.builders import GIB, node, pod

TENANTS = ("a", "b", "c", "d")
SHAPES = (
    (pod(cpu=1, mem_gib=1),),
    (pod(cpu=4, mem_gib=8),),
    tuple(pod(f"worker-{k}", cpu=2, mem_gib=2, gpu=50) for k in range(2)),
    tuple(pod(f"worker-{k}", cpu=8, mem_gib=16, gpu=100) for k in range(4)),
    (pod("ps-0", role="ps", cpu=2, mem_gib=4, spread=True), pod("chief-0", role="chief", cpu=4)),
)


@dataclass
class History:
    """The cluster's truth: what runs where, and the pending jobs as a plain list."""

    rng: random.Random
    now: float = 1000.0
    nodes: dict[str, Node] = field(default_factory=dict)
    running: dict[str, tuple[PendingJob, tuple[Holding, ...]]] = field(default_factory=dict)
    pending: dict[str, PendingJob] = field(default_factory=dict)
    queue: AdmissionQueue = field(default_factory=AdmissionQueue)
    made: int = 0

    def submit(self) -> None:
        for _ in range(self.rng.randint(1, 6)):
            self.made += 1
            job = PendingJob(
                id=f"j{self.made:04d}",
                tenant=self.rng.choice(TENANTS),
                priority=self.rng.choice((0, 0, 50, 100, 200)),
                # Ties on submit time happen (one batch): the id breaks them.
                submitted_at=self.now - self.rng.choice((0.0, 0.0, 1.0)),
                pods=self.rng.choice(SHAPES),
            )
            self.pending[job.id] = job
            self.queue.put(job)

    def cancel(self) -> None:
        if self.pending:
            gone = self.rng.choice(sorted(self.pending))
            del self.pending[gone]
            self.queue.remove(gone)

    def seen_again(self) -> None:
        """The shell learns of a job it holds again (its submit and an event both name it)."""
        for job_id in self.rng.sample(sorted(self.pending), min(len(self.pending), 2)):
            self.queue.put(self.pending[job_id])

    def end(self) -> None:
        for job_id in self.rng.sample(sorted(self.running), min(len(self.running), 3)):
            del self.running[job_id]

    def evict(self) -> None:
        if self.running:
            job_id = self.rng.choice(sorted(self.running))
            job, _ = self.running.pop(job_id)
            again = replace(job, queued_since=self.now, not_before=self.now + 30.0)
            self.pending[job_id] = again
            self.queue.put(again)

    def change_nodes(self) -> None:
        choice = self.rng.random()
        name = f"n{self.rng.randint(0, 5)}"
        if choice < 0.5:
            self.nodes[name] = node(name, gpus=self.rng.choice((0, 2, 4)), cpu=32, mem_gib=64)
        elif choice < 0.7:
            self.nodes.pop(name, None)
        elif name in self.nodes:
            self.nodes[name] = replace(self.nodes[name], ready=not self.nodes[name].ready)

    def snapshot(self) -> Snapshot:
        usage: dict[str, TenantUsage] = {t: TenantUsage() for t in TENANTS}
        for job, _ in self.running.values():
            used = usage[job.tenant]
            usage[job.tenant] = TenantUsage(
                cpu_millis=used.cpu_millis + sum(p.cpu_millis for p in job.pods),
                memory_bytes=used.memory_bytes + sum(p.memory_bytes for p in job.pods),
                gpu_shares=used.gpu_shares + sum(p.gpu_shares for p in job.pods),
                running_jobs=used.running_jobs + 1,
            )
        quota = Quota(
            cpu_millis=40_000,
            memory_bytes=80 * GIB,
            gpu_shares=600,
            max_running_jobs=8,
            max_queued_jobs=10_000,
        )
        return Snapshot(
            now=self.now,
            nodes=tuple(sorted(self.nodes.values(), key=lambda n: n.name)),
            holdings=tuple(h for _, held in self.running.values() for h in held),
            tenants={
                t: TenantState(name=t, weight=1.0 + (t == "a"), quota=quota, usage=usage[t])
                for t in TENANTS
            },
            starvation_seconds=120.0,
            backfill=self.rng.choice((0, 3, 256)),
        )

    def cycle(self) -> None:
        snap = self.snapshot()
        scratch_jobs = list(self.pending.values())
        self.rng.shuffle(scratch_jobs)
        scratch = replace(snap, pending=tuple(scratch_jobs))
        assert self.queue.same_as(AdmissionQueue.of(scratch_jobs))
        decided = plan(snap, self.queue)
        assert decided == plan(scratch)
        assert list(queue_places(snap, self.queue)) == list(
            queue_places(scratch, AdmissionQueue.of(scratch_jobs))
        )
        pods: dict[str, dict[str, PodRequest]] = {}
        for admission in decided.admitted:
            job = self.pending.pop(admission.job_id)
            assert self.queue.remove(admission.job_id) == job
            pods[job.id] = {p.name: p for p in job.pods}
            held = tuple(
                Holding(
                    node=p.node,
                    cpu_millis=p.cpu_millis,
                    memory_bytes=p.memory_bytes,
                    gpu=p.gpu,
                )
                for p in admission.placements
            )
            self.running[job.id] = (job, held)


STEPS = (
    *("submit", "submit", "cancel", "seen_again", "end", "end"),
    *("evict", "change_nodes", "cycle", "cycle"),
)


@pytest.mark.parametrize("seed", range(40))
def test_the_incremental_queue_decides_as_a_plan_from_scratch(seed: int) -> None:
    rng = random.Random(seed)
    history = History(rng=rng)
    history.nodes = {"n0": node("n0", gpus=4, cpu=32, mem_gib=64)}
    admitted = 0
    for _ in range(120):
        step = rng.choice(STEPS)
        before = len(history.running)
        getattr(history, step)()
        if step == "cycle":
            admitted += max(0, len(history.running) - before)
        history.now += rng.choice((0.0, 1.0, 10.0, 45.0))
    history.cycle()
    # The histories reach admissions, not just empty queues.
    assert admitted > 0
