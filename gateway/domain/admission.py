"""Admission: which pending jobs start this cycle, and on which nodes.

`plan(snapshot)` is a pure function from a `Snapshot` (nodes, Muster's holdings, tenants with quota
and usage, pending jobs, the time) to an `AdmissionPlan` (the admitted gangs with a node and GPU
slices for every pod, and every other job with a reason and its queue positions). The admission
loop loads the snapshot, calls `plan()` and writes the plan in one transaction. Node-level fit lives
in `placement.py`; its public names are re-exported here.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from heapq import heapify, heappop, heappush
from operator import attrgetter

from gateway.domain.placement import (
    GPU_FRACTION,
    GPU_INVALID,
    GPU_NONE,
    GPU_WHOLE,
    SHARES_PER_DEVICE,
    ClusterState,
    Gang,
    GpuMode,
    GpuSlice,
    Holding,
    Need,
    Node,
    NodeFree,
    Placement,
    PodRequest,
    Taint,
    Toleration,
    free_capacity,
    gpu_kind,
    node_admits,
)

__all__ = [
    "Admission",
    "AdmissionPlan",
    "GpuMode",
    "GpuSlice",
    "Holding",
    "Node",
    "NodeFree",
    "PendingJob",
    "PendingReason",
    "Placement",
    "PodRequest",
    "Quota",
    "Snapshot",
    "Taint",
    "TenantState",
    "Toleration",
    "Usage",
    "Waiting",
    "free_capacity",
    "never_fits",
    "plan",
]


class PendingReason(StrEnum):
    WAITING_FOR_QUOTA = "WaitingForQuota"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    FRAGMENTED = "Fragmented"
    RESERVED = "Reserved"
    BACKOFF_AFTER_EVICTION = "BackoffAfterEviction"


@dataclass(frozen=True, kw_only=True, slots=True)
class Quota:
    cpu_millis: int
    memory_bytes: int
    gpu_shares: int
    max_running_jobs: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """What the tenant's admitted and running jobs hold."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu_shares: int = 0
    running_jobs: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantState:
    name: str
    weight: float = 1.0
    quota: Quota
    usage: Usage = Usage()


@dataclass(frozen=True, kw_only=True, slots=True)
class PendingJob:
    id: str
    tenant: str
    priority: int = 0
    submitted_at: float
    not_before: float | None = None  # set after an eviction: backoff until then
    pods: tuple[PodRequest, ...]
    # When the job last entered the queue (reset on requeue); starvation counts from here.
    # None means submitted_at.
    queued_since: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Snapshot:
    now: float
    nodes: tuple[Node, ...]
    holdings: tuple[Holding, ...] = ()
    tenants: Mapping[str, TenantState]
    pending: tuple[PendingJob, ...]
    starvation_seconds: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Admission:
    job_id: str
    tenant: str
    placements: tuple[Placement, ...]  # in the job's pod order


@dataclass(frozen=True, kw_only=True, slots=True)
class Waiting:
    job_id: str
    reason: PendingReason
    message: str
    position_in_tenant: int  # 1-based, among waiting jobs, in the order the cycle took them
    position_overall: int


@dataclass(frozen=True, kw_only=True, slots=True)
class AdmissionPlan:
    admitted: tuple[Admission, ...]  # in the order they were admitted
    waiting: tuple[Waiting, ...]  # in position order
    reserved_nodes: tuple[str, ...] = ()  # sorted
    reserved_for: str | None = None  # the starving job the reservation holds nodes for


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
        # Per tenant: [cpu, memory, gpu, running jobs], raised as the cycle admits.
        self.usage: dict[str, list[int]] = {}
        for name, tenant in snapshot.tenants.items():
            used = tenant.usage
            self.usage[name] = [
                used.cpu_millis,
                used.memory_bytes,
                used.gpu_shares,
                used.running_jobs,
            ]
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
        self.reserved_message = ""

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
            (used[0], self.total_cpu),
            (used[1], self.total_mem),
            (used[2], self.total_gpu),
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
        if used[3] + 1 > quota.max_running_jobs:
            self._wait(
                job,
                PendingReason.WAITING_FOR_QUOTA,
                f"tenant {job.tenant} already runs {used[3]} of at most "
                f"{quota.max_running_jobs} jobs",
            )
            return
        pods = job.pods
        if not pods:
            # Admitting an empty gang would start nothing and hold a running-job slot forever.
            self._wait(job, PendingReason.FRAGMENTED, "the job has no pods to place")
            return
        totals = (sum(map(_CPU, pods)), sum(map(_MEMORY, pods)), sum(map(_GPU, pods)))
        cpu, mem, gpu = totals
        if (
            (gpu and used[2] + gpu > quota.gpu_shares)
            or (cpu and used[0] + cpu > quota.cpu_millis)
            or (mem and used[1] + mem > quota.memory_bytes)
        ):
            over = _over_quota(job.tenant, totals, used, quota)
            self._wait(job, PendingReason.WAITING_FOR_QUOTA, over)
            return
        cluster = self.cluster
        # Cheap rejection on the free sums, before looking at single pods.
        fits_open = (
            gpu <= cluster.free_gpu - cluster.blocked_gpu
            and cpu <= cluster.free_cpu - cluster.blocked_cpu
            and mem <= cluster.free_mem - cluster.blocked_mem
        )
        fits_all = gpu <= cluster.free_gpu and cpu <= cluster.free_cpu and mem <= cluster.free_mem
        if not fits_all or cluster.surely_fails(pods):
            self._blocked(job, totals, None)
            return
        gang = cluster.gang_of(pods)
        if fits_open:
            hits = cluster.place_gang(gang, honor=True)
            if hits is not None:
                cluster.commit()
                self._admit(job, totals, gang.order, hits)
                return
        if cluster.any_blocked and cluster.place_gang(gang, honor=False) is not None:
            cluster.rollback()
            self._wait(job, PendingReason.RESERVED, self.reserved_message)
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
        totals: tuple[int, int, int],
        order: Sequence[int],
        hits: list[tuple[int, tuple[tuple[int, int], ...]]],
    ) -> None:
        used = self.usage[job.tenant]
        used[0] += totals[0]
        used[1] += totals[1]
        used[2] += totals[2]
        used[3] += 1
        self.shares.pop(job.tenant, None)
        nodes = self.cluster.nodes
        by_pod: list[Placement | None] = [None] * len(job.pods)
        for k, (i, slices) in zip(order, hits, strict=True):
            by_pod[k] = Placement(
                pod_name=job.pods[k].name,
                node=nodes[i].name,
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
        pods = job.pods
        cpu, mem, gpu = totals
        if gpu > cluster.free_gpu or cpu > cluster.free_cpu or mem > cluster.free_mem:
            found = cache.get(totals)
            if found is None:
                short = _short_of_sums(cluster, totals)
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
            found = cache[key] = _gang_reason(cluster, gang.needs, roles)
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
        count = len(cluster.nodes)
        by_free = sorted(
            range(count), key=lambda i: (-cluster.gfree[i], -cluster.cpu[i], -cluster.mem[i], i)
        )
        tiebreak = [0] * count
        for rank, i in enumerate(by_free):
            tiebreak[i] = rank
        empty = ClusterState(cluster.nodes, (), tiebreak=tiebreak)
        hits = empty.place_gang(empty.gang_of(job.pods), honor=False)
        if hits is None:
            return ""
        chosen = sorted({i for i, _ in hits})
        cluster.block(chosen)
        self.reserved = tuple(cluster.nodes[i].name for i in chosen)
        self.reserved_for = job
        self.reserved_message = (
            f"it would fit, but job {job.id} has waited past the starvation threshold and holds "
            f"{_listing(self.reserved)}"
        )
        return f"; held for it: {_listing(self.reserved)}"

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


def _over_quota(tenant: str, totals: tuple[int, int, int], used: list[int], quota: Quota) -> str:
    cpu, mem, gpu = totals
    # GPU first: in a training cluster it is the quota people run out of and ask about.
    for need, held, limit, fmt in (
        (gpu, used[2], quota.gpu_shares, _gpus),
        (cpu, used[0], quota.cpu_millis, _cpus),
        (mem, used[1], quota.memory_bytes, _memory),
    ):
        if need and held + need > limit:
            return (
                f"needs {fmt(need)}; tenant {tenant} has {fmt(max(limit - held, 0))} of its "
                f"{fmt(limit)} quota left"
            )
    return ""


def _short_of_sums(cluster: ClusterState, totals: tuple[int, int, int]) -> str:
    for need, free, fmt in (
        (totals[2], cluster.free_gpu, _gpus),
        (totals[0], cluster.free_cpu, _cpus),
        (totals[1], cluster.free_mem, _memory),
    ):
        if need > free:
            return f"needs {fmt(need)} in total; {fmt(free)} free in the cluster"
    return ""


def _gang_reason(
    cluster: ClusterState, needs: Sequence[Need], roles: Sequence[str]
) -> tuple[PendingReason, str]:
    """InsufficientCapacity when a free sum over a pod's nodes is too small, else Fragmented."""
    # The same per pod class: only the nodes a pod may use count for it.
    by_class: dict[int, list[int]] = {}
    first_role: dict[int, str] = {}
    for need_, role in zip(needs, roles, strict=True):
        sums = by_class.setdefault(need_[0], [0, 0, 0])
        first_role.setdefault(need_[0], role)
        sums[0] += need_[4]
        sums[1] += need_[2]
        sums[2] += need_[3]
    for cls in sorted(by_class):
        free_ = cluster.class_free(cls)
        role = first_role[cls]
        if free_.nodes == 0:
            return (
                PendingReason.INSUFFICIENT_CAPACITY,
                f"no ready node passes the node selector, taints and GPU mode of its {role} pod",
            )
        sums = by_class[cls]
        for need, free, fmt in (
            (sums[0], free_.gpu_sum, _gpus),
            (sums[1], free_.cpu_sum, _cpus),
            (sums[2], free_.memory_sum, _memory),
        ):
            if need > free:
                return (
                    PendingReason.INSUFFICIENT_CAPACITY,
                    f"needs {fmt(need)} on the nodes its {role} pods may use; "
                    f"{fmt(free)} free there",
                )
    for need_, role in zip(needs, roles, strict=True):
        free_ = cluster.class_free(need_[0])
        _, kind, cpu, mem, gpu, _ = need_
        if kind == GPU_INVALID:
            return (
                PendingReason.FRAGMENTED,
                f"its {role} pod asks for {_gpus(gpu)}; a request is whole GPUs or a fraction "
                "of one",
            )
        if kind == GPU_WHOLE and gpu > free_.gpu_max:
            return (
                PendingReason.FRAGMENTED,
                f"a {role} pod needs {_gpus(gpu)} on one node; the most free on any node is "
                f"{_count(free_.gpu_max // SHARES_PER_DEVICE)}",
            )
        if kind == GPU_FRACTION and gpu > free_.gpu_max:
            return (
                PendingReason.FRAGMENTED,
                f"a {role} pod needs {_gpus(gpu)} of one device; the most free on any device is "
                f"{_gpus(free_.gpu_max)}",
            )
        if cpu > free_.cpu_max:
            return (
                PendingReason.FRAGMENTED,
                f"a {role} pod needs {_cpus(cpu)} on one node; the most free on any node is "
                f"{_cpus(free_.cpu_max)}",
            )
        if mem > free_.memory_max:
            return (
                PendingReason.FRAGMENTED,
                f"a {role} pod needs {_memory(mem)} on one node; the most free on any node is "
                f"{_memory(free_.memory_max)}",
            )
    for need_, role in zip(needs, roles, strict=True):
        if cluster.find(need_, None, honor=False) is None:
            _, _, cpu, mem, gpu, _ = need_
            wanted = [_gpus(gpu)] if gpu else []
            wanted += [_cpus(cpu), _memory(mem)]
            return (
                PendingReason.FRAGMENTED,
                f"no node has {', '.join(wanted[:-1])} and {wanted[-1]} free at once for a "
                f"{role} pod",
            )
    return (
        PendingReason.FRAGMENTED,
        f"the free sums would fit, but no set of nodes fits all {len(needs)} pods at once",
    )


def never_fits(
    pods: Sequence[PodRequest], nodes: Sequence[Node], quota: Quota
) -> list[tuple[str, str]]:
    """Problems that keep a job out forever, as (resource, message); empty if it could fit one day.

    Uses only allocatable and quota, never what is free now. Readiness is ignored: a node that is
    down may come back.
    """
    problems: list[tuple[str, str]] = []
    for resource, need, limit, fmt in (
        ("gpu", sum(map(_GPU, pods)), quota.gpu_shares, _gpus),
        ("cpu", sum(map(_CPU, pods)), quota.cpu_millis, _cpus),
        ("memory", sum(map(_MEMORY, pods)), quota.memory_bytes, _memory),
    ):
        if need > limit:
            problems.append(
                (resource, f"the job needs {fmt(need)} but the tenant's quota is {fmt(limit)}")
            )
    if quota.max_running_jobs < 1:
        problems.append(("jobs", "the tenant's quota allows no running jobs"))
    any_shared = any(node.gpu_mode is GpuMode.SHARED and node.gpu_devices > 0 for node in nodes)
    previous: tuple[object, ...] = ()
    for pod in pods:
        # The replicas of a role come one after another with the same requests; their problems
        # would be the same ones again (_pod_never_fits reads nothing else of a pod).
        asks = (
            pod.role,
            pod.gpu_shares,
            pod.cpu_millis,
            pod.memory_bytes,
            pod.node_selector,
            pod.tolerations,
        )
        if asks == previous:
            continue
        previous = asks
        for problem in _pod_never_fits(pod, nodes, any_shared):
            if problem not in problems:
                problems.append(problem)
    return problems


def _pod_never_fits(
    pod: PodRequest, nodes: Sequence[Node], any_shared: bool
) -> list[tuple[str, str]]:
    role = pod.role
    kind = gpu_kind(pod.gpu_shares)
    if kind == GPU_INVALID:
        return [
            (
                "gpu",
                f"the {role} pod asks for {_gpus(pod.gpu_shares)}; a request is whole GPUs or "
                "a fraction of one",
            )
        ]
    if kind == GPU_FRACTION and not any_shared:
        return [
            (
                "gpu",
                f"the {role} pod asks for {_gpus(pod.gpu_shares)}, a fraction of a GPU, but no "
                "node shares GPUs",
            )
        ]
    selector, tolerations = pod.node_selector, pod.tolerations
    eligible = [
        node for node in nodes if node_admits(node, selector, tolerations, kind, ignore_ready=True)
    ]
    if not eligible:
        if kind != GPU_NONE and any(
            node_admits(node, selector, tolerations, GPU_NONE, ignore_ready=True) for node in nodes
        ):
            sort = "shared GPUs" if kind == GPU_FRACTION else "GPUs"
            return [("gpu", f"no node the {role} pod may use offers {sort}")]
        return [("selector", f"no node passes the node selector and tolerations of the {role} pod")]
    problems: list[tuple[str, str]] = []
    if kind == GPU_WHOLE:
        most = max(node.gpu_devices for node in eligible)
        if pod.gpu_shares > most * SHARES_PER_DEVICE:
            problems.append(
                (
                    "gpu",
                    f"the {role} pod needs {_gpus(pod.gpu_shares)} on one node; the largest node "
                    f"it may use has {_count(most)}",
                )
            )
    for resource, need, most, fmt in (
        ("cpu", pod.cpu_millis, max(node.cpu_millis for node in eligible), _cpus),
        ("memory", pod.memory_bytes, max(node.memory_bytes for node in eligible), _memory),
    ):
        if need > most:
            problems.append(
                (
                    resource,
                    f"the {role} pod needs {fmt(need)} on one node; the largest node it may use "
                    f"has {fmt(most)}",
                )
            )
    return problems


# -- human units ---------------------------------------------------------------------------------


def _listing(nodes: Sequence[str], most: int = 5) -> str:
    named = ", ".join(nodes[:most])
    more = f" and {len(nodes) - most} more" if len(nodes) > most else ""
    return f"node{'s' if len(nodes) > 1 else ''} {named}{more}"


def _number(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text if text != "-0" else "0"


def _count(devices: int) -> str:
    return f"{devices} GPU" if devices == 1 else f"{devices} GPUs"


def _gpus(shares: int) -> str:
    return f"{_number(shares / SHARES_PER_DEVICE)} GPU" + ("" if shares == 100 else "s")


def _cpus(millis: int) -> str:
    return f"{_number(millis / 1000)} CPU" + ("" if millis == 1000 else "s")


def _memory(size: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(size) >= scale:
            return f"{_number(size / scale)} {unit}"
    return f"{size} bytes"
