"""Admission: which pending jobs start this cycle, and on which nodes.

`plan(snapshot, queue)` is a pure function from a `Snapshot` (nodes, Muster's holdings, tenants
with quota and usage, the time) and the pending jobs in an `AdmissionQueue` to an `AdmissionPlan`
(the admitted gangs with a node and GPU slices for every pod, and every other job it considered
with the reason it waits). `queue_places` gives every queued job its positions, on its own
schedule. The admission loop keeps the queue, loads the snapshot, calls `plan()` and writes the
plan in one transaction. The values live in `queueing.py`, the queue in `queue.py`, node-level fit
in `placement.py`, the words of every reason in `reasons.py`.

What a cycle considers, so that its cost follows the tenants and what changed, never the depth of
the queue: the tenants' heads, merged in order; after an admission, that tenant's next job; after
a job that waits, that tenant's next job only while the cycle's backfill window
(`Snapshot.backfill`) lasts. A tenant is done for the cycle when it is at its running-job cap, and
when a job waits for its quota and its next job has a lower priority (that job would take the
quota the first one waits for; once the first has starved, even equal priorities wait behind it).

Invariants of every plan:

- Whole gang or nothing: an admitted job has exactly one placement per pod, each on a node that
  passes the pod's selector, taints and GPU mode; a job that is not admitted has none.
- No node is over-committed in CPU, memory or any GPU device's shares, counting existing holdings.
- No tenant goes over its quota in CPU, memory, GPU shares or running jobs.
- Every job considered appears exactly once, either admitted or waiting with a reason; the jobs
  considered of each tenant are the first of its queue (jobs in backoff are never considered).
- At most (tenants + backfill + admitted) jobs are considered.
- Once a reservation is made for a starving job, no later job in the cycle is placed on its nodes.
- Deterministic: jobs are taken in (priority, weighted dominant share, submitted_at, id) order and
  nodes in name order, so the same snapshot and jobs always yield the same plan.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from enum import Enum, auto
from heapq import heapify, heappop, heappush
from operator import attrgetter

from gateway.domain.resources import Resources, sum_extended
from gateway.domain.scheduling.capacity import Slices
from gateway.domain.scheduling.cohorts import CohortBook, Member
from gateway.domain.scheduling.nodes import (
    SHARES_PER_DEVICE,
    GpuMode,
    GpuSlice,
    PodRequest,
)
from gateway.domain.scheduling.placement import ClusterState, Gang
from gateway.domain.scheduling.preemption import choose, victim_order
from gateway.domain.scheduling.queue import AdmissionQueue, merge_order
from gateway.domain.scheduling.queueing import (
    NOTHING,
    Admission,
    AdmissionPlan,
    PendingJob,
    PendingReason,
    Placement,
    Preemption,
    PreemptionPolicy,
    PreemptionReason,
    QueuedAt,
    RunningGang,
    Snapshot,
    TenantState,
    Waiting,
)
from gateway.domain.scheduling.quota import TenantUsage
from gateway.domain.scheduling.reasons import (
    at_running_cap,
    gang_reason,
    listing,
    never_borrows,
    over_cohort_quota,
    over_quota,
    short_of_sums,
    waits_for_reclaim,
)


def plan(snapshot: Snapshot, queue: AdmissionQueue | None = None) -> AdmissionPlan:
    """Decide one admission cycle. Pure: the same snapshot and queue always yield the same plan.

    ``queue`` holds the pending jobs (the leader's incremental queue); without it they are
    ``snapshot.pending``, queued from scratch. Both give the same plan for the same jobs.
    """
    if queue is None:
        queue = AdmissionQueue.of(snapshot.pending)
    return _Cycle(snapshot).run(queue)


def queue_places(snapshot: Snapshot, queue: AdmissionQueue) -> Iterator[QueuedAt]:
    """Where every job of ``queue`` stands: its position overall and in its tenant's queue, in
    the order the next cycle would take them if it admitted none (the tenants' shares as
    ``snapshot`` has them); jobs in backoff come last, soonest back first, with their reason."""
    shares = _Cycle(snapshot).shares_now()
    now = snapshot.now
    in_tenant: dict[str, int] = {}
    overall = 0
    backoff: list[PendingJob] = []
    for job, _ in merge_order(queue.tenants(), shares):
        if job.not_before is not None and job.not_before > now:
            backoff.append(job)
            continue
        overall += 1
        place = in_tenant[job.tenant] = in_tenant.get(job.tenant, 0) + 1
        yield QueuedAt(job_id=job.id, position=overall, tenant_position=place)
    backoff.sort(key=lambda job: (job.not_before or 0.0, -job.priority, job.submitted_at, job.id))
    for job in backoff:
        overall += 1
        place = in_tenant[job.tenant] = in_tenant.get(job.tenant, 0) + 1
        # An absolute time, not a countdown: the message stays the same from one pass to the
        # next, so the shell need not rewrite it.
        back_at = datetime.fromtimestamp(job.not_before or 0.0, tz=UTC)
        yield QueuedAt(
            job_id=job.id,
            position=overall,
            tenant_position=place,
            reason=PendingReason.BACKOFF_AFTER_EVICTION,
            message=f"evicted; back in the queue at {back_at:%Y-%m-%dT%H:%M:%SZ}",
        )


def _borrowed_by_pod(pods: Sequence[PodRequest], borrowed: Resources) -> list[Resources]:
    """What each pod holds of a gang's ``borrowed`` amount: the last pods first, each at most
    what it holds, so the amounts add up to ``borrowed``."""
    left = {
        "cpu_millis": borrowed.cpu_millis,
        "memory_bytes": borrowed.memory_bytes,
        "gpu_shares": borrowed.gpu_shares,
    }
    if not any(left.values()):
        return [NOTHING] * len(pods)
    shares: list[Resources] = []
    for pod in reversed(pods):
        taken = {}
        for resource, amount in left.items():
            taken[resource] = min(amount, getattr(pod, resource))
            left[resource] = amount - taken[resource]
        shares.append(Resources(**taken))
    return shares[::-1]


def _would_borrow_unpreemptible(
    job: PendingJob, tenant: TenantState, used: TenantUsage, demand: Resources
) -> bool:
    """Whether ``job`` cannot be preempted and would hold more than its tenant's nominal quota.
    Borrowed quota is taken back by preemption, so such a job runs within nominal only."""
    return (
        tenant.cohort is not None
        and not job.preemptible
        and not tenant.quota.fits_now(used, demand)
    )


def _search_cost(candidates: int) -> int:
    """The trials `preemption.choose` needs for its first valid answer among ``candidates``:
    all of them, then a bisection of the prefixes."""
    return 1 + max(candidates - 1, 0).bit_length()


def _next_ready(jobs: Sequence[PendingJob], start: int, now: float) -> int | None:
    """The position of the first job at or after ``start`` that is not in backoff."""
    for position in range(start, len(jobs)):
        not_before = jobs[position].not_before
        if not_before is None or not_before <= now:
            return position
    return None


class _Outcome(Enum):
    """What considering one job did, for the walk over its tenant's queue."""

    ADMITTED = auto()
    OVER_QUOTA = auto()  # its tenant's quota is short of it
    TENANT_STOPPED = auto()  # nothing more of its tenant can be admitted this cycle
    BLOCKED = auto()  # it waits for nodes (or has no pods)


_CPU = attrgetter("cpu_millis")
_MEMORY = attrgetter("memory_bytes")
_GPU = attrgetter("gpu_shares")
_SELECTOR = attrgetter("node_selector")
_TOLERATIONS = attrgetter("tolerations")
_AFFINITY = attrgetter("affinity")
_REQUEST = attrgetter("role", "gpu_shares", "cpu_millis", "memory_bytes", "spread", "extended")
_EXTENDED = attrgetter("extended")
_MIN_WEIGHT = 1e-9
#: Placement trials a cycle may spend on finding victims (each builds the cluster's free
#: capacity afresh); past it, preemption waits for the next cycle.
PREEMPTION_TRIALS = 64


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
        # Cohort members borrow and lend idle quota: the book keeps their usage and pools.
        self.book: CohortBook | None = None
        if any(tenant.cohort is not None for tenant in snapshot.tenants.values()):
            self.book = CohortBook(
                {
                    name: Member(quota=tenant.quota, usage=tenant.usage, terms=tenant.cohort)
                    for name, tenant in snapshot.tenants.items()
                }
            )
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
        # Preemption: what it decided, the nodes by name, what each gang holds, the candidates
        # (built at the first job that needs them) and the placement trials left.
        self.preemptions: list[Preemption] = []
        self.preempted: set[str] = set()
        self.index: dict[str, int] | None = None
        self.held: dict[str, Resources] = {}
        self.borrowing: dict[str, list[RunningGang]] | None = None
        self.own: dict[str, list[RunningGang]] = {}
        self.trials = PREEMPTION_TRIALS

    def run(self, queue: AdmissionQueue) -> AdmissionPlan:
        snapshot = self.snapshot
        now = snapshot.now
        tenants = queue.tenants()
        # 1. Heads: each tenant's first job out of backoff, in the tenant's queue order.
        # 2. Snapshot: the working copy of free capacity (built in __init__) and of tenant usage,
        #    both updated as jobs are assumed admitted, so later entries see earlier ones.
        # 3. Order: a heap over the tenant heads, keyed on (priority, weighted dominant share,
        #    submitted_at, id). The share moves with every admission, so the heap is re-keyed one
        #    tenant at a time instead of sorting every job once: two tenants of equal weight with
        #    long queues then take turns.
        heap = []
        for name in sorted(tenants):
            first = _next_ready(tenants[name], 0, now)
            if first is not None:
                heap.append(self._head_key(name, tenants[name], first))
        heapify(heap)
        backfill = snapshot.backfill
        while heap:
            *_, position, name = heappop(heap)
            jobs = tenants[name]
            job = jobs[position]
            # 4. Nominate and 5. process the entry: admit it, or record why it waits.
            outcome = self._consider(job)
            following = _next_ready(jobs, position + 1, now)
            if following is None or outcome is _Outcome.TENANT_STOPPED:
                continue
            if outcome is _Outcome.OVER_QUOTA:
                # The tenant's quota is what this job waits for: its jobs of lower priority would
                # take it first, so they wait behind it (those of equal priority may pass it,
                # until it starves: then none may).
                floor = job.priority + 1 if self._starving(job) else job.priority
                if jobs[following].priority < floor:
                    continue
            if outcome is not _Outcome.ADMITTED:
                # Each tenant's head is considered; past it, a blocked job costs the backfill
                # window, so a cycle looks at (tenants + window + admitted) jobs at most.
                if backfill <= 0:
                    continue
                backfill -= 1
            heappush(heap, self._head_key(name, jobs, following))
        # 6. Every job considered and not admitted waits, with a reason.
        return self._finish()

    def _head_key(
        self, name: str, jobs: Sequence[PendingJob], position: int
    ) -> tuple[int, float, float, str, int, str]:
        job = jobs[position]
        return (-job.priority, self._share(name), job.submitted_at, job.id, position, name)

    def shares_now(self) -> dict[str, float]:
        """Every tenant's weighted dominant share before this cycle admits anything."""
        return {name: self._share(name) for name in self.snapshot.tenants}

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

    def _consider(self, job: PendingJob) -> _Outcome:
        tenant = self.snapshot.tenants.get(job.tenant)
        used = self.usage.get(job.tenant)
        if tenant is None or used is None:
            self._wait(job, PendingReason.WAITING_FOR_QUOTA, f"tenant {job.tenant} has no quota")
            return _Outcome.TENANT_STOPPED
        quota = tenant.quota
        pods = job.pods
        totals = (sum(map(_CPU, pods)), sum(map(_MEMORY, pods)), sum(map(_GPU, pods)))
        cpu, mem, gpu = totals
        extended = sum_extended(map(_EXTENDED, pods)) if any(map(_EXTENDED, pods)) else ()
        demand = Resources(cpu_millis=cpu, memory_bytes=mem, gpu_shares=gpu, extended=extended)
        # A tenant at its running-job cap is skipped before any per-pod work (unless its own
        # gangs of lower priority may make room).
        if not quota.runs_another(used):
            if pods and self._preempt(job, tenant, demand, totals) is True:
                return _Outcome.ADMITTED
            capped = at_running_cap(job.tenant, used, quota)
            self._wait(job, PendingReason.WAITING_FOR_QUOTA, capped)
            return _Outcome.TENANT_STOPPED
        if not pods:
            # Admitting an empty gang would start nothing and hold a running-job slot forever.
            self._wait(job, PendingReason.FRAGMENTED, "the job has no pods to place")
            return _Outcome.BLOCKED
        words: str | None = None
        if extended and (short := quota.extended_short(used, demand)) is not None:
            words = over_quota(job.tenant, short)  # extended resources are never borrowed
        elif tenant.cohort is not None and self.book is not None:
            if _would_borrow_unpreemptible(job, tenant, used, demand):
                short = quota.short_of(used, demand)
                words = never_borrows(job.tenant, short) if short is not None else ""
            elif not self.book.fits(job.tenant, demand):
                lacking = self.book.short_of(job.tenant, demand)
                cohort = tenant.cohort.cohort
                words = over_cohort_quota(job.tenant, cohort, lacking) if lacking else ""
        elif not quota.fits_now(used, demand):
            short = quota.short_of(used, demand)
            words = over_quota(job.tenant, short) if short is not None else ""
        if words is not None:
            found = self._preempt(job, tenant, demand, totals)
            if found is True:
                return _Outcome.ADMITTED
            if isinstance(found, str):
                self._wait(job, PendingReason.WAITING_FOR_RECLAIM, found)
            else:
                self._wait(job, PendingReason.WAITING_FOR_QUOTA, words)
            return _Outcome.OVER_QUOTA
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
            return self._blocked_unless_preempting(job, tenant, demand, totals, None)
        gang = cluster.gang_of(pods)
        if fits_open:
            hits = cluster.place_gang(gang, honor=True)
            if hits is not None:
                cluster.commit()
                self._admit(job, demand, gang.order, hits)
                return _Outcome.ADMITTED
        if free.any_blocked and cluster.place_gang(gang, honor=False) is not None:
            cluster.rollback()
            self._wait(job, PendingReason.RESERVED, self._reserved_message(job))
            return _Outcome.BLOCKED
        return self._blocked_unless_preempting(job, tenant, demand, totals, gang)

    def _blocked_unless_preempting(
        self,
        job: PendingJob,
        tenant: TenantState,
        demand: Resources,
        totals: tuple[int, int, int],
        gang: Gang | None,
    ) -> _Outcome:
        """The job does not fit the nodes: admitted if preempting makes room, else blocked."""
        found = self._preempt(job, tenant, demand, totals)
        if found is True:
            return _Outcome.ADMITTED
        if isinstance(found, str):
            self._wait(job, PendingReason.WAITING_FOR_RECLAIM, found)
        else:
            self._blocked(job, totals, gang)
        return _Outcome.BLOCKED

    # -- preemption (see preemption.py) -----------------------------------------------------------

    def _preempt(
        self, job: PendingJob, tenant: TenantState, demand: Resources, totals: tuple[int, int, int]
    ) -> bool | str | None:
        """Preempt the gangs that make room for ``job`` and admit it: True. The words of a
        reclaim it waits for, when only gangs too young to preempt would make room; else None."""
        if not self.snapshot.running or self.trials <= 0:
            return None
        candidates = self._candidates(job, tenant, demand)
        if not candidates:
            return None
        ripe_before = self.snapshot.now - self.snapshot.min_runtime_seconds
        ripe = [c for c in candidates if c[0].admitted_at <= ripe_before]
        if self.trials < _search_cost(len(candidates)):
            # Too few trials left to find the shortest enough prefix: an answer found now could
            # preempt more than it needs to. The next cycle looks again.
            return None

        def fits(
            victims: Sequence[tuple[RunningGang, PreemptionReason]],
        ) -> tuple[ClusterState, Gang, list[tuple[int, Slices]]] | None:
            return self._fits_without(job, tenant, demand, totals, [g for g, _ in victims])

        found = choose(ripe, fits)
        if found is None:
            if len(ripe) == len(candidates):
                return None
            waited = choose(candidates, fits)
            if waited is None:
                return None
            young = [g.admitted_at for g, _ in waited[0] if g.admitted_at > ripe_before]
            if not young:
                return None
            return waits_for_reclaim(
                len(waited[0]), max(young) + self.snapshot.min_runtime_seconds, tenant.name
            )
        chosen, (state, gang, hits) = found
        for victim, reason in chosen:
            self.preempted.add(victim.job_id)
            held = victim.demand
            self.usage[victim.tenant] = self.usage[victim.tenant].minus(held)
            if self.book is not None:
                self.book.release(victim.tenant, held)
            self.shares.pop(victim.tenant, None)
            self.preemptions.append(
                Preemption(
                    job_id=victim.job_id,
                    tenant=victim.tenant,
                    preemptor=job.id,
                    preemptor_tenant=job.tenant,
                    reason=reason,
                )
            )
        state.commit()
        if self.reserved and not state.capacity.any_blocked:
            index = self._node_index()
            state.capacity.block(index[name] for name in self.reserved)
        self.cluster = state
        # Gangs are built on one cluster's classes: those of blocked jobs are built again on
        # this one when their reason is settled.
        self.blocked_gangs.clear()
        self._admit(job, demand, gang.order, hits)
        return True

    def _candidates(
        self, job: PendingJob, tenant: TenantState, demand: Resources
    ) -> list[tuple[RunningGang, PreemptionReason]]:
        """The gangs that may be preempted for ``job``, in victim order (young ones too)."""
        found: list[tuple[RunningGang, PreemptionReason]] = []
        used = self.usage[job.tenant]
        if tenant.cohort is not None and tenant.quota.fits_now(used, demand):
            # Below its nominal quota with room for the job in it: it reclaims what it lent.
            for gang in self._borrowers().get(tenant.cohort.cohort, ()):
                if gang.tenant != job.tenant and gang.job_id not in self.preempted:
                    found.append((gang, PreemptionReason.RECLAIM))
        if tenant.preemption_policy is PreemptionPolicy.LOWER_PRIORITY:
            for gang in self._own(job.tenant):
                if gang.priority < job.priority and gang.job_id not in self.preempted:
                    found.append((gang, PreemptionReason.PRIORITY))
        found.sort(key=lambda candidate: victim_order(candidate[0]))
        return found

    def _borrowers(self) -> dict[str, list[RunningGang]]:
        """Per cohort, the preemptible gangs that run on borrowed quota: gangs with a borrowed
        placement, of members that hold more than their nominal quota (as the cycle began)."""
        if self.borrowing is None:
            tenants = self.snapshot.tenants
            above = {
                name
                for name, state in tenants.items()
                if state.cohort is not None
                and (
                    state.usage.cpu_millis > state.quota.cpu_millis
                    or state.usage.memory_bytes > state.quota.memory_bytes
                    or state.usage.gpu_shares > state.quota.gpu_shares
                )
            }
            self.borrowing = {}
            for gang in self.snapshot.running:
                terms = tenants[gang.tenant].cohort if gang.tenant in above else None
                if terms is not None and gang.preemptible and gang.borrows:
                    self.borrowing.setdefault(terms.cohort, []).append(gang)
            for gangs in self.borrowing.values():
                gangs.sort(key=victim_order)
        return self.borrowing

    def _own(self, tenant: str) -> list[RunningGang]:
        """The tenant's preemptible gangs, in victim order."""
        gangs = self.own.get(tenant)
        if gangs is None:
            gangs = self.own[tenant] = sorted(
                (g for g in self.snapshot.running if g.tenant == tenant and g.preemptible),
                key=victim_order,
            )
        return gangs

    def _fits_without(
        self,
        job: PendingJob,
        tenant: TenantState,
        demand: Resources,
        totals: tuple[int, int, int],
        victims: Sequence[RunningGang],
    ) -> tuple[ClusterState, Gang, list[tuple[int, Slices]]] | None:
        """Where ``job`` would go once ``victims`` are gone (quota and real nodes), or None.
        Each placement tried costs one of the cycle's trials."""
        if not self._quota_fits_without(job, tenant, demand, victims):
            return None
        free = self.cluster.capacity
        held = [self._held(g) for g in victims]
        cpu = free.free_cpu + sum(h.cpu_millis for h in held)
        mem = free.free_mem + sum(h.memory_bytes for h in held)
        gpu = free.free_gpu + sum(h.gpu_shares for h in held)
        if totals[0] > cpu or totals[1] > mem or totals[2] > gpu or self.trials <= 0:
            return None
        self.trials -= 1
        capacity = self.cluster.capacity.copy()
        index = self._node_index()
        for victim in victims:
            for p in victim.placements:
                i = index.get(p.node)
                if i is not None:
                    slices = tuple(
                        (s.device, s.shares) for s in p.gpu if 0 <= s.device < len(capacity.devs[i])
                    )
                    capacity.give_back(i, p.cpu_millis, p.memory_bytes, slices, p.extended)
        own = self.reserved_for is not None and self.reserved_for.id == job.id
        if capacity.any_blocked and own:  # the reservation is its own: it may use it
            capacity.blocked = bytearray(len(capacity.blocked))
            capacity.any_blocked = False
        state = ClusterState(self.cluster.nodes, capacity=capacity, like=self.cluster)
        gang = state.gang_of(job.pods)
        hits = state.place_gang(gang, honor=True)
        if hits is None:
            return None
        return state, gang, hits

    def _held(self, gang: RunningGang) -> Resources:
        held = self.held.get(gang.job_id)
        if held is None:
            held = self.held[gang.job_id] = gang.demand
        return held

    def _node_index(self) -> dict[str, int]:
        if self.index is None:
            self.index = {node.name: i for i, node in enumerate(self.cluster.nodes)}
        return self.index

    def _quota_fits_without(
        self,
        job: PendingJob,
        tenant: TenantState,
        demand: Resources,
        victims: Sequence[RunningGang],
    ) -> bool:
        """Whether ``job`` fits its tenant's quota (and its cohort's) once ``victims`` are gone."""
        amounts: dict[str, tuple[Resources, int]] = {}  # tenant -> (what it frees, jobs)
        for victim in victims:
            held = self._held(victim)
            before = amounts.get(victim.tenant)
            amounts[victim.tenant] = (
                (held, 1) if before is None else (before[0].plus(held), before[1] + 1)
            )
        book = self.book
        if book is None:
            used = self.usage[job.tenant]
            if job.tenant in amounts:
                used = used.minus(*amounts[job.tenant])
            return tenant.quota.fits_now(used, demand)
        for name, (held, jobs) in amounts.items():
            book.release(name, held, jobs)
        try:
            if not book.fits(job.tenant, demand):
                return False
            return not _would_borrow_unpreemptible(job, tenant, book.usage(job.tenant), demand)
        finally:
            for name, (held, jobs) in amounts.items():
                book.take(name, held, jobs)

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
        borrowed = [NOTHING] * len(job.pods)
        if self.book is not None:
            borrowed = _borrowed_by_pod(job.pods, self.book.borrows_for(job.tenant, demand))
            self.book.take(job.tenant, demand)
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
                borrowed=borrowed[k],
                extended=pod.extended,
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
        if any(map(_SELECTOR, pods)) or any(map(_TOLERATIONS, pods)) or any(map(_AFFINITY, pods)):
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

    def _finish(self) -> AdmissionPlan:
        # Many blocked jobs share a shape; the end state is fixed, so their reason is too.
        cache: dict[object, tuple[PendingReason, str]] = {}
        waiting: list[Waiting] = []
        for index, job in enumerate(self.waiting_jobs):
            reason = self.waiting_reasons[index]
            message = self.waiting_messages[index]
            if reason is None:
                reason, message = self._capacity_reason(
                    job, self.blocked_totals[index], self.blocked_gangs.get(index), cache
                )
                message += self.blocked_notes.get(index, "")
            waiting.append(Waiting(job_id=job.id, reason=reason, message=message))
        return AdmissionPlan(
            admitted=tuple(self.admitted),
            waiting=tuple(waiting),
            reserved_nodes=self.reserved,
            reserved_for=self.reserved_for.id if self.reserved_for is not None else None,
            preempted=tuple(self.preemptions),
        )
