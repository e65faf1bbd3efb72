"""Admission: which pending jobs start this cycle, and on which nodes.

`plan(snapshot)` is a pure function from a `Snapshot` (nodes, Muster's holdings, tenants with quota
and usage, pending jobs, the time) to an `AdmissionPlan` (the admitted gangs with a node and GPU
slices for every pod, and every other job with a reason and its queue positions). The admission
loop loads the snapshot, calls `plan()` and writes the plan in one transaction. The values live in
`queueing.py`, node-level fit in `placement.py`, the words of every reason in `reasons.py`.

Invariants of every plan:

- Whole gang or nothing: an admitted job has exactly one placement per pod, each on a node that
  passes the pod's selector, taints and GPU mode; a job that is not admitted has none.
- No node is over-committed in CPU, memory or any GPU device's shares, counting existing holdings.
- No tenant goes over its quota in CPU, memory, GPU shares or running jobs.
- Every pending job appears exactly once, either admitted or waiting with a reason.
- Once a reservation is made for a starving job, no later job in the cycle is placed on its nodes.
- Deterministic: jobs are taken in (priority, weighted dominant share, submitted_at, id) order and
  nodes in name order, so the same snapshot always yields the same plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from heapq import heapify, heappop, heappush
from operator import attrgetter

from gateway.domain.resources import Resources
from gateway.domain.scheduling.nodes import SHARES_PER_DEVICE, GpuMode, GpuSlice
from gateway.domain.scheduling.placement import ClusterState, Gang
from gateway.domain.scheduling.queueing import (
    Admission,
    AdmissionPlan,
    PendingJob,
    PendingReason,
    Placement,
    Snapshot,
    Waiting,
)
from gateway.domain.scheduling.quota import TenantUsage
from gateway.domain.scheduling.reasons import (
    at_running_cap,
    gang_reason,
    listing,
    over_quota,
    short_of_sums,
)


def plan(snapshot: Snapshot) -> AdmissionPlan:
    """Decide one admission cycle. Pure: the same snapshot always yields the same plan."""
    return _Cycle(snapshot).run()


_CPU = attrgetter("cpu_millis")
_MEMORY = attrgetter("memory_bytes")
_GPU = attrgetter("gpu_shares")
_SELECTOR = attrgetter("node_selector")
_TOLERATIONS = attrgetter("tolerations")
_REQUEST = attrgetter("role", "gpu_shares", "cpu_millis", "memory_bytes", "spread")
_MIN_WEIGHT = 1e-9


class _Cycle:
    """The mutable state of one `plan()` call."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.cluster = ClusterState(snapshot.nodes, snapshot.holdings)
        ready = [node for node in snapshot.nodes if node.ready]
        # Cluster totals for the dominant resource share: allocatable of ready nodes.
        self.total_cpu = sum(node.cpu_millis for node in ready)
        self.total_mem = sum(node.memory_bytes for node in ready)
        self.total_gpu = sum(
            node.gpu_devices * SHARES_PER_DEVICE
            for node in ready
            if node.gpu_mode is not GpuMode.NONE
        )
        # Per tenant: what it holds, raised as the cycle admits.
        self.usage: dict[str, TenantUsage] = {
            name: tenant.usage for name, tenant in snapshot.tenants.items()
        }
        # Shares only move when a tenant is admitted a job, so they are cached until then.
        self.shares: dict[str, float] = {}
        self.slices: dict[tuple[int, int], GpuSlice] = {}
        self.admitted: list[Admission] = []
        # Waiting jobs in the order taken, as parallel lists rather than an object per job: with
        # 100k jobs, objects that live through the cycle are what wake the full garbage
        # collector, which then walks the whole snapshot. A reason of None means "did not fit",
        # settled at the end; for those, the gang if it was built and the reservation note.
        self.waiting_jobs: list[PendingJob] = []
        self.waiting_reasons: list[PendingReason | None] = []
        self.waiting_messages: list[str] = []
        self.blocked_gangs: dict[int, Gang] = {}
        self.blocked_totals: dict[int, tuple[int, int, int]] = {}
        self.blocked_notes: dict[int, str] = {}
        self.reserved: tuple[str, ...] = ()
        self.reserved_for: PendingJob | None = None

    def run(self) -> AdmissionPlan:
        snapshot = self.snapshot
        # 1. Heads: one queue per tenant, best first. Jobs still in backoff sit this cycle out.
        queues: dict[str, list[PendingJob]] = {}
        backoff: list[PendingJob] = []
        for job in snapshot.pending:
            if job.not_before is not None and job.not_before > snapshot.now:
                backoff.append(job)
            else:
                queues.setdefault(job.tenant, []).append(job)
        for queue in queues.values():
            queue.sort(key=lambda job: (-job.priority, job.submitted_at, job.id))
        # 2. Snapshot: the working copy of free capacity (built in __init__) and of tenant usage,
        #    both updated as jobs are assumed admitted, so later entries see earlier ones.
        #
        # 3. Order: a heap over the tenant heads, keyed on (priority, weighted dominant share,
        #    submitted_at, id). The share moves with every admission, so the heap is re-keyed one
        #    tenant at a time instead of sorting every job once: two tenants of equal weight with
        #    long queues then take turns.
        heap = [self._head_key(name, queue, 0) for name, queue in sorted(queues.items())]
        heapify(heap)
        while heap:
            *_, position, name = heappop(heap)
            queue = queues[name]
            job = queue[position]
            # 4. Nominate and 5. process the entry: admit it, or record why it waits.
            self._consider(job)
            if position + 1 < len(queue):
                heappush(heap, self._head_key(name, queue, position + 1))
        # 6. Requeue the rest: every job not admitted waits, with a reason and its positions.
        return self._finish(backoff)

    def _head_key(
        self, name: str, queue: list[PendingJob], position: int
    ) -> tuple[int, float, float, str, int, str]:
        job = queue[position]
        return (-job.priority, self._share(name), job.submitted_at, job.id, position, name)

    def _share(self, name: str) -> float:
        """Weighted dominant-resource share: the largest fraction of the cluster held, / weight."""
        share = self.shares.get(name)
        if share is None:
            share = self.shares[name] = self._compute_share(name)
        return share

    def _compute_share(self, name: str) -> float:
        used = self.usage.get(name)
        tenant = self.snapshot.tenants.get(name)
        if used is None or tenant is None:
            return 0.0
        share = 0.0
        for amount, total in (
            (used.cpu_millis, self.total_cpu),
            (used.memory_bytes, self.total_mem),
            (used.gpu_shares, self.total_gpu),
        ):
            if total > 0:
                share = max(share, amount / total)
        return share / max(tenant.weight, _MIN_WEIGHT)

    # -- 4 and 5: one entry -----------------------------------------------------------------------

    def _consider(self, job: PendingJob) -> None:
        tenant = self.snapshot.tenants.get(job.tenant)
        used = self.usage.get(job.tenant)
        if tenant is None or used is None:
            self._wait(job, PendingReason.WAITING_FOR_QUOTA, f"tenant {job.tenant} has no quota")
            return
        quota = tenant.quota
        # A tenant at its running-job cap is skipped before any per-pod work.
        if not quota.runs_another(used):
            capped = at_running_cap(job.tenant, used, quota)
            self._wait(job, PendingReason.WAITING_FOR_QUOTA, capped)
            return
        pods = job.pods
        if not pods:
            # Admitting an empty gang would start nothing and hold a running-job slot forever.
            self._wait(job, PendingReason.FRAGMENTED, "the job has no pods to place")
            return
        totals = (sum(map(_CPU, pods)), sum(map(_MEMORY, pods)), sum(map(_GPU, pods)))
        cpu, mem, gpu = totals
        demand = Resources(cpu_millis=cpu, memory_bytes=mem, gpu_shares=gpu)
        if not quota.fits_now(used, demand):
            short = quota.short_of(used, demand)
            over = over_quota(job.tenant, short) if short is not None else ""
            self._wait(job, PendingReason.WAITING_FOR_QUOTA, over)
            return
        cluster = self.cluster
        free = cluster.capacity
        # Cheap rejection on the free sums, before looking at single pods.
        fits_open = (
            gpu <= free.free_gpu - free.blocked_gpu
            and cpu <= free.free_cpu - free.blocked_cpu
            and mem <= free.free_mem - free.blocked_mem
        )
        fits_all = gpu <= free.free_gpu and cpu <= free.free_cpu and mem <= free.free_mem
        if not fits_all or cluster.surely_fails(pods):
            self._blocked(job, totals, None)
            return
        gang = cluster.gang_of(pods)
        if fits_open:
            hits = cluster.place_gang(gang, honor=True)
            if hits is not None:
                cluster.commit()
                self._admit(job, demand, gang.order, hits)
                return
        if free.any_blocked and cluster.place_gang(gang, honor=False) is not None:
            cluster.rollback()
            self._wait(job, PendingReason.RESERVED, self._reserved_message(job))
            return
        self._blocked(job, totals, gang)

    def _blocked(self, job: PendingJob, totals: tuple[int, int, int], gang: Gang | None) -> None:
        """The job does not fit now; why is settled at the end. A starving one may reserve."""
        index = len(self.waiting_jobs)
        self._wait(job, None, "")
        self.blocked_totals[index] = totals
        if gang is not None:
            self.blocked_gangs[index] = gang
        if self.reserved_for is None and self._starving(job):
            self.blocked_notes[index] = self._reserve(job)

    def _admit(
        self,
        job: PendingJob,
        demand: Resources,
        order: Sequence[int],
        hits: list[tuple[int, tuple[tuple[int, int], ...]]],
    ) -> None:
        self.usage[job.tenant] = self.usage[job.tenant].plus(demand)
        self.shares.pop(job.tenant, None)
        nodes = self.cluster.nodes
        by_pod: list[Placement | None] = [None] * len(job.pods)
        for k, (i, slices) in zip(order, hits, strict=True):
            pod = job.pods[k]
            by_pod[k] = Placement(
                pod_name=pod.name,
                role=pod.role,
                index=pod.index,
                node=nodes[i].name,
                cpu_millis=pod.cpu_millis,
                memory_bytes=pod.memory_bytes,
                gpu=tuple(self._slice(d, s) for d, s in slices),
            )
        placements = tuple(p for p in by_pod if p is not None)
        self.admitted.append(Admission(job_id=job.id, tenant=job.tenant, placements=placements))

    def _slice(self, device: int, shares: int) -> GpuSlice:
        found = self.slices.get((device, shares))
        if found is None:
            found = self.slices[(device, shares)] = GpuSlice(device=device, shares=shares)
        return found

    def _capacity_reason(
        self,
        job: PendingJob,
        totals: tuple[int, int, int],
        gang: Gang | None,
        cache: dict[object, tuple[PendingReason, str]],
    ) -> tuple[PendingReason, str]:
        """Why a job did not fit, judged on the state the cycle ends in (the one users see).

        Free capacity only shrinks during a cycle, so what did not fit then does not fit now.
        Many blocked jobs share a shape, and their reason is cached on it.
        """
        cluster = self.cluster
        free = cluster.capacity
        pods = job.pods
        cpu, mem, gpu = totals
        if gpu > free.free_gpu or cpu > free.free_cpu or mem > free.free_mem:
            found = cache.get(totals)
            if found is None:
                short = short_of_sums(cluster, totals)
                found = cache[totals] = (PendingReason.INSUFFICIENT_CAPACITY, short)
            return found
        key: object
        if any(map(_SELECTOR, pods)) or any(map(_TOLERATIONS, pods)):
            gang = gang or cluster.gang_of(pods)
            key = (gang.signature, tuple(pods[k].role for k in gang.order))
        else:
            # Without constraints the requests alone decide; skip building the gang when the
            # same requests were judged before.
            key = tuple(map(_REQUEST, pods))
        found = cache.get(key)
        if found is None:
            gang = gang or cluster.gang_of(pods)
            roles = tuple(pods[k].role for k in gang.order)
            found = cache[key] = gang_reason(cluster, gang.needs, roles)
        return found

    def _wait(self, job: PendingJob, reason: PendingReason | None, message: str) -> None:
        self.waiting_jobs.append(job)
        self.waiting_reasons.append(reason)
        self.waiting_messages.append(message)

    def _starving(self, job: PendingJob) -> bool:
        since = job.queued_since if job.queued_since is not None else job.submitted_at
        return self.snapshot.now - since > self.snapshot.starvation_seconds

    def _reserve(self, job: PendingJob) -> str:
        """Hold the nodes a starving job needs, so that they drain for it.

        The job is placed on an empty cluster (allocatable, no holdings). Among equal nodes the
        ones with the most free now win, so the reservation drains fast and stays on the same
        nodes from one cycle to the next.
        """
        cluster = self.cluster
        free = cluster.capacity
        count = len(cluster.nodes)
        by_free = sorted(
            range(count), key=lambda i: (-free.gfree[i], -free.cpu[i], -free.mem[i], i)
        )
        tiebreak = [0] * count
        for rank, i in enumerate(by_free):
            tiebreak[i] = rank
        empty = ClusterState(cluster.nodes, (), tiebreak=tiebreak)
        hits = empty.place_gang(empty.gang_of(job.pods), honor=False)
        if hits is None:
            return ""
        chosen = sorted({i for i, _ in hits})
        free.block(chosen)
        self.reserved = tuple(cluster.nodes[i].name for i in chosen)
        self.reserved_for = job
        return f"; held for it: {listing(self.reserved)}"

    def _reserved_message(self, waiting: PendingJob) -> str:
        """Why ``waiting`` waits behind the reservation. Another tenant's job is not named: a
        tenant must not learn the ids of jobs it cannot see."""
        holder = self.reserved_for
        who = (
            f"job {holder.id}"
            if holder is not None and holder.tenant == waiting.tenant
            else "a job of another tenant"
        )
        return (
            f"it would fit, but {who} has waited past the starvation threshold and holds "
            f"{listing(self.reserved)}"
        )

    # -- 6: the rest ------------------------------------------------------------------------------

    def _finish(self, backoff: list[PendingJob]) -> AdmissionPlan:
        # Jobs in backoff were not taken this cycle; they queue behind, soonest back first.
        for job in sorted(
            backoff,
            key=lambda job: (job.not_before or 0.0, -job.priority, job.submitted_at, job.id),
        ):
            # An absolute time, not a countdown: the message stays the same from one cycle to
            # the next, so the shell need not rewrite it every cycle.
            back_at = datetime.fromtimestamp(job.not_before or 0.0, tz=UTC)
            self._wait(
                job,
                PendingReason.BACKOFF_AFTER_EVICTION,
                f"evicted; back in the queue at {back_at:%Y-%m-%dT%H:%M:%SZ}",
            )
        # Many blocked jobs share a shape; the end state is fixed, so their reason is too.
        cache: dict[object, tuple[PendingReason, str]] = {}
        in_tenant: dict[str, int] = {}
        waiting: list[Waiting] = []
        for index, job in enumerate(self.waiting_jobs):
            reason = self.waiting_reasons[index]
            message = self.waiting_messages[index]
            if reason is None:
                reason, message = self._capacity_reason(
                    job, self.blocked_totals[index], self.blocked_gangs.get(index), cache
                )
                message += self.blocked_notes.get(index, "")
            position = in_tenant[job.tenant] = in_tenant.get(job.tenant, 0) + 1
            waiting.append(
                Waiting(
                    job_id=job.id,
                    reason=reason,
                    message=message,
                    position_in_tenant=position,
                    position_overall=index + 1,
                )
            )
        return AdmissionPlan(
            admitted=tuple(self.admitted),
            waiting=tuple(waiting),
            reserved_nodes=self.reserved,
            reserved_for=self.reserved_for.id if self.reserved_for is not None else None,
        )
