"""Builders for admission tests: short calls that fill in every field a case does not care about.

Units follow the domain: CPU in cores here (converted to millicores), memory in GiB (to bytes), GPU
in shares (100 = one device), so that tables of cases read like the job specs they stand for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gateway.domain.resources import Resources
from gateway.domain.scheduling.cohorts import CohortTerms, Member, lendable
from gateway.domain.scheduling.nodes import (
    GpuMode,
    GpuSlice,
    Holding,
    Node,
    PodRequest,
    Taint,
    Toleration,
    gpu_kind,
    node_admits,
)
from gateway.domain.scheduling.queueing import (
    AdmissionPlan,
    PendingJob,
    Placement,
    PreemptionPolicy,
    PreemptionReason,
    RunningGang,
    Snapshot,
    TenantState,
)
from gateway.domain.scheduling.quota import Quota, TenantUsage

GIB = 1 << 30
BIG = 10**15  # a quota nobody reaches


def node(
    name: str,
    *,
    gpus: int = 8,
    cpu: int = 64,
    mem_gib: int = 512,
    mode: GpuMode | None = None,
    labels: Mapping[str, str] | None = None,
    taints: Sequence[Taint] = (),
    ready: bool = True,
    extended: Mapping[str, int] | None = None,
) -> Node:
    if mode is None:
        mode = GpuMode.SHARED if gpus else GpuMode.NONE
    return Node(
        name=name,
        labels=dict(labels or {}),
        taints=tuple(taints),
        ready=ready,
        gpu_mode=mode,
        cpu_millis=cpu * 1000,
        memory_bytes=mem_gib * GIB,
        gpu_devices=gpus,
        extended=dict(extended or {}),
    )


def pod(
    name: str = "worker-0",
    *,
    role: str | None = None,
    cpu: float = 1,
    mem_gib: float = 1,
    gpu: int = 0,
    selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Toleration] = (),
    spread: bool = False,
    extended: Mapping[str, int] | None = None,
) -> PodRequest:
    return PodRequest(
        name=name,
        role=role or name.rsplit("-", 1)[0],
        cpu_millis=int(cpu * 1000),
        memory_bytes=int(mem_gib * GIB),
        gpu_shares=gpu,
        node_selector=dict(selector or {}),
        tolerations=tuple(tolerations),
        spread=spread,
        extended=tuple(sorted((extended or {}).items())),
    )


def job(
    id: str,
    *pods: PodRequest,
    tenant: str = "t",
    priority: int = 0,
    submitted_at: float = 0.0,
    not_before: float | None = None,
    queued_since: float | None = None,
    preemptible: bool = True,
) -> PendingJob:
    return PendingJob(
        id=id,
        tenant=tenant,
        priority=priority,
        submitted_at=submitted_at,
        not_before=not_before,
        queued_since=queued_since,
        pods=pods or (pod(),),
        preemptible=preemptible,
    )


def running(
    id: str,
    node_name: str,
    *,
    tenant: str = "t",
    pods: int = 1,
    cpu: float = 1,
    mem_gib: float = 0,
    borrowed_cpu: float = 0,
    priority: int = 0,
    admitted_at: float = 0.0,
    preemptible: bool = True,
    extended: Mapping[str, int] | None = None,
) -> RunningGang:
    """A running gang of ``pods`` equal pods on one node; ``borrowed_cpu`` of it (per pod)
    borrowed."""
    return RunningGang(
        job_id=id,
        tenant=tenant,
        priority=priority,
        preemptible=preemptible,
        admitted_at=admitted_at,
        placements=tuple(
            Placement(
                pod_name=f"worker-{k}",
                role="worker",
                index=k,
                node=node_name,
                cpu_millis=int(cpu * 1000),
                memory_bytes=int(mem_gib * GIB),
                borrowed=Resources(
                    cpu_millis=int(borrowed_cpu * 1000), memory_bytes=0, gpu_shares=0
                ),
                extended=tuple(sorted((extended or {}).items())),
            )
            for k in range(pods)
        ),
    )


def gang(id: str, count: int, *, role: str = "worker", **kwargs: object) -> list[PodRequest]:
    """`count` identical pods named role-0 .. role-(count-1)."""
    return [pod(f"{role}-{k}", role=role, **kwargs) for k in range(count)]  # type: ignore[arg-type]


def tenant(
    name: str,
    *,
    weight: float = 1.0,
    cpu: float | None = None,
    mem_gib: float | None = None,
    gpu: int | None = None,
    max_running: int = 10**6,
    usage: TenantUsage | None = None,
    cohort: CohortTerms | None = None,
    policy: PreemptionPolicy = PreemptionPolicy.NEVER,
    extended: Mapping[str, int] | None = None,
) -> TenantState:
    return TenantState(
        name=name,
        weight=weight,
        quota=Quota(
            cpu_millis=BIG if cpu is None else int(cpu * 1000),
            memory_bytes=BIG if mem_gib is None else int(mem_gib * GIB),
            gpu_shares=BIG if gpu is None else gpu,
            max_running_jobs=max_running,
            max_queued_jobs=1000,
            extended=tuple(sorted((extended or {}).items())),
        ),
        usage=usage or TenantUsage(),
        cohort=cohort,
        preemption_policy=policy,
    )


def holding(
    node_name: str,
    *,
    cpu: float = 0,
    mem_gib: float = 0,
    gpu: Iterable[tuple[int, int]] = (),
    extended: Mapping[str, int] | None = None,
) -> Holding:
    return Holding(
        node=node_name,
        cpu_millis=int(cpu * 1000),
        memory_bytes=int(mem_gib * GIB),
        gpu=tuple(GpuSlice(device=d, shares=s) for d, s in gpu),
        extended=tuple(sorted((extended or {}).items())),
    )


def snapshot(
    nodes: Sequence[Node],
    pending: Sequence[PendingJob],
    *,
    tenants: Sequence[TenantState] = (),
    holdings: Sequence[Holding] = (),
    now: float = 0.0,
    starvation_seconds: float = 3600.0,
    gangs: Sequence[RunningGang] = (),
    min_runtime_seconds: float = 0.0,
) -> Snapshot:
    """Tenants not given get an unlimited quota. The running ``gangs`` hold what they hold on
    top of ``holdings``; a tenant's usage, when given, must already count its gangs."""
    by_name = {t.name: t for t in tenants}
    for pending_job in pending:
        by_name.setdefault(pending_job.tenant, tenant(pending_job.tenant))
    held = [
        Holding(
            node=p.node,
            cpu_millis=p.cpu_millis,
            memory_bytes=p.memory_bytes,
            gpu=p.gpu,
            extended=p.extended,
        )
        for g in gangs
        for p in g.placements
    ]
    return Snapshot(
        now=now,
        nodes=tuple(nodes),
        holdings=(*holdings, *held),
        tenants=by_name,
        pending=tuple(pending),
        starvation_seconds=starvation_seconds,
        running=tuple(gangs),
        min_runtime_seconds=min_runtime_seconds,
    )


def holdings_of(plan: AdmissionPlan, snap: Snapshot) -> dict[str, list[Holding]]:
    """What each admitted job's pods will hold once they run, by job id."""
    pods = {(j.id, p.name): p for j in snap.pending for p in j.pods}
    result: dict[str, list[Holding]] = {}
    for admission in plan.admitted:
        result[admission.job_id] = [
            Holding(
                node=placement.node,
                cpu_millis=pods[(admission.job_id, placement.pod_name)].cpu_millis,
                memory_bytes=pods[(admission.job_id, placement.pod_name)].memory_bytes,
                gpu=placement.gpu,
            )
            for placement in admission.placements
        ]
    return result


def violations(snap: Snapshot, plan: AdmissionPlan) -> list[str]:
    """Every way the plan breaks an invariant of `plan()`; empty when it keeps them all."""
    found: list[str] = []
    nodes = {n.name: n for n in snap.nodes}
    jobs = {j.id: j for j in snap.pending}
    # Each job considered exactly once, admitted or waiting; of each tenant, the first jobs of
    # its queue that are not in backoff; at most one per tenant past the backfill window.
    seen = [a.job_id for a in plan.admitted] + [w.job_id for w in plan.waiting]
    if len(seen) != len(set(seen)) or not set(seen) <= set(jobs):
        found.append(f"jobs in plan {sorted(seen)} are not distinct pending jobs")
    ready = sorted(
        (j for j in snap.pending if j.not_before is None or j.not_before <= snap.now),
        key=lambda j: (-j.priority, j.submitted_at, j.id),
    )
    for tenant in {j.tenant for j in ready}:
        order = [j.id for j in ready if j.tenant == tenant]
        taken = [job_id for job_id in order if job_id in set(seen)]
        if taken != order[: len(taken)]:
            found.append(f"tenant {tenant}: considered {taken}, not the head of {order}")
    tenants_seen = {jobs[job_id].tenant for job_id in seen if job_id in jobs}
    if len(plan.waiting) > len(tenants_seen) + snap.backfill:
        found.append(f"{len(plan.waiting)} waiting jobs considered, past the backfill window")
    # Free capacity after existing holdings plus the plan's placements.
    cpu = {n.name: n.cpu_millis for n in snap.nodes}
    mem = {n.name: n.memory_bytes for n in snap.nodes}
    devices = {
        n.name: [100] * (n.gpu_devices if n.gpu_mode is not GpuMode.NONE else 0) for n in snap.nodes
    }
    ext = {n.name: dict(n.extended) for n in snap.nodes}
    over_before = set()
    for h in snap.holdings:
        if h.node not in nodes:
            continue
        cpu[h.node] -= h.cpu_millis
        mem[h.node] -= h.memory_bytes
        for s in h.gpu:
            devices[h.node][s.device] -= s.shares
        for resource, amount in h.extended:
            if resource in ext[h.node]:
                ext[h.node][resource] -= amount
    over_ext_before = {(name, r) for name in nodes for r, left in ext[name].items() if left < 0}
    for name in nodes:
        if cpu[name] < 0 or mem[name] < 0 or min(devices[name], default=0) < 0:
            over_before.add(name)
    ext_used = {name: dict(t.usage.extended) for name, t in snap.tenants.items()}
    ext_before = {name: dict(t.usage.extended) for name, t in snap.tenants.items()}
    usage = {
        name: [t.usage.cpu_millis, t.usage.memory_bytes, t.usage.gpu_shares, t.usage.running_jobs]
        for name, t in snap.tenants.items()
    }
    found.extend(_preemption_violations(snap, plan, cpu, mem, devices, usage, ext, ext_used))
    for admission in plan.admitted:
        pending_job = jobs[admission.job_id]
        if admission.tenant != pending_job.tenant:
            found.append(f"{admission.job_id}: tenant {admission.tenant}")
        names = sorted(p.pod_name for p in admission.placements)
        if names != sorted(p.name for p in pending_job.pods):
            found.append(f"{admission.job_id}: placed pods {names}")
            continue
        by_name = {p.name: p for p in pending_job.pods}
        for placement in admission.placements:
            request = by_name[placement.pod_name]
            target = nodes.get(placement.node)
            if target is None:
                found.append(f"{admission.job_id}: unknown node {placement.node}")
                continue
            kind = gpu_kind(request.gpu_shares)
            names = tuple(r for r, _ in request.extended)
            if not node_admits(
                target,
                request.node_selector,
                request.tolerations,
                kind,
                extended=names,
                affinity=request.affinity,
            ):
                found.append(f"{admission.job_id}/{request.name}: ineligible {target.name}")
            if placement.extended != request.extended:
                found.append(f"{admission.job_id}/{request.name}: extended {placement.extended}")
            if sum(s.shares for s in placement.gpu) != request.gpu_shares:
                found.append(f"{admission.job_id}/{request.name}: gpu slices {placement.gpu}")
            if request.gpu_shares % 100 == 0 and any(s.shares != 100 for s in placement.gpu):
                found.append(f"{admission.job_id}/{request.name}: whole gpu split {placement.gpu}")
            if 0 < request.gpu_shares < 100 and len(placement.gpu) != 1:
                found.append(f"{admission.job_id}/{request.name}: fraction spans devices")
            if len({s.device for s in placement.gpu}) != len(placement.gpu):
                found.append(f"{admission.job_id}/{request.name}: device used twice")
            cpu[target.name] -= request.cpu_millis
            mem[target.name] -= request.memory_bytes
            for s in placement.gpu:
                devices[target.name][s.device] -= s.shares
            for resource, amount in request.extended:
                ext[target.name][resource] = ext[target.name].get(resource, 0) - amount
                held = ext_used[pending_job.tenant]
                held[resource] = held.get(resource, 0) + amount
        used = usage[pending_job.tenant]
        used[0] += sum(p.cpu_millis for p in pending_job.pods)
        used[1] += sum(p.memory_bytes for p in pending_job.pods)
        used[2] += sum(p.gpu_shares for p in pending_job.pods)
        used[3] += 1
    for name in nodes:
        if name in over_before:
            continue
        if cpu[name] < 0 or mem[name] < 0 or min(devices[name], default=0) < 0:
            found.append(f"node {name} over-committed: {cpu[name]} {mem[name]} {devices[name]}")
    for name in nodes:
        for resource, left in ext[name].items():
            if left < 0 and (name, resource) not in over_ext_before:
                found.append(f"node {name} over-committed on {resource}: {left}")
    for name, held in ext_used.items():
        for resource, limit in snap.tenants[name].quota.extended:
            got = held.get(resource, 0)
            if got > limit and got != ext_before[name].get(resource, 0):
                found.append(f"tenant {name} over its {resource} quota: {got} > {limit}")
    pools: dict[str, list[list[int]]] = {}  # cohort -> per resource [pool, drawn, drawn before]
    for name, used in usage.items():
        state = snap.tenants[name]
        quota, usage0, terms = state.quota, state.usage, state.cohort
        limits = [quota.cpu_millis, quota.memory_bytes, quota.gpu_shares, quota.max_running_jobs]
        before = (usage0.cpu_millis, usage0.memory_bytes, usage0.gpu_shares, usage0.running_jobs)
        if terms is not None:  # nominal plus the borrowing limit, and the cohort's pool
            member = Member(quota=quota, usage=usage0, terms=terms)
            cohort = pools.setdefault(terms.cohort, [[0, 0, 0] for _ in RESOURCE_ORDER])
            for k, resource in enumerate(RESOURCE_ORDER):
                limit = terms.borrowing_limit.of(resource)
                limits[k] = BIG * 4 if limit is None else limits[k] + limit
                own = lendable(member, resource)
                guaranteed = getattr(quota, resource) - own
                cohort[k][0] += own
                cohort[k][1] += max(0, used[k] - guaranteed)
                cohort[k][2] += max(0, before[k] - guaranteed)
        for got, limit, was in zip(used, limits, before, strict=True):
            if got > limit and got != was:
                found.append(f"tenant {name} over quota: {used} > {limits}")
    for cohort_name, amounts in pools.items():
        for k, (pool, drawn, drawn_before) in enumerate(amounts):
            if drawn > pool and drawn != drawn_before:
                found.append(f"cohort {cohort_name} overdrawn on {RESOURCE_ORDER[k]}: {amounts}")
    return found


def _preemption_violations(
    snap: Snapshot,
    plan: AdmissionPlan,
    cpu: dict[str, int],
    mem: dict[str, int],
    devices: dict[str, list[int]],
    usage: dict[str, list[int]],
    ext: dict[str, dict[str, int]],
    ext_used: dict[str, dict[str, int]],
) -> list[str]:
    """Every way the plan's preemptions break an invariant; gives back what the victims hold
    (in the free capacity and usage given)."""
    found: list[str] = []
    gangs = {g.job_id: g for g in snap.running}
    admitted = {a.job_id for a in plan.admitted}
    jobs = {j.id: j for j in snap.pending}
    seen: set[str] = set()
    for p in plan.preempted:
        victim = gangs.get(p.job_id)
        if victim is None or p.job_id in seen:
            found.append(f"preempted {p.job_id} is not a running gang, or twice")
            continue
        seen.add(p.job_id)
        if p.preemptor not in admitted:
            found.append(f"{p.job_id} preempted for {p.preemptor}, which was not admitted")
        if not victim.preemptible:
            found.append(f"{p.job_id} is not preemptible")
        if victim.admitted_at > snap.now - snap.min_runtime_seconds:
            found.append(f"{p.job_id} preempted before the minimum runtime")
        preemptor = jobs[p.preemptor]
        state = snap.tenants[victim.tenant]
        if p.reason is PreemptionReason.PRIORITY:
            if victim.tenant != preemptor.tenant or victim.priority >= preemptor.priority:
                found.append(f"{p.job_id} preempted by priority for {p.preemptor}")
            if snap.tenants[preemptor.tenant].preemption_policy is PreemptionPolicy.NEVER:
                found.append(f"{p.job_id} preempted in a tenant whose policy is never")
        else:
            mine = snap.tenants[preemptor.tenant].cohort
            if (
                state.cohort is None
                or mine is None
                or state.cohort.cohort != mine.cohort
                or victim.tenant == preemptor.tenant
                or not victim.borrows
            ):
                found.append(f"{p.job_id} reclaimed for {p.preemptor} outside the rules")
        for placement in victim.placements:
            cpu[placement.node] += placement.cpu_millis
            mem[placement.node] += placement.memory_bytes
            for s in placement.gpu:
                devices[placement.node][s.device] += s.shares
            for resource, amount in placement.extended:
                if resource in ext.get(placement.node, {}):
                    ext[placement.node][resource] += amount
                taken = ext_used[victim.tenant]
                taken[resource] = taken.get(resource, 0) - amount
        used = usage[victim.tenant]
        held = victim.demand
        used[0] -= held.cpu_millis
        used[1] -= held.memory_bytes
        used[2] -= held.gpu_shares
        used[3] -= 1
    return found


#: The resources of a usage list in ``violations``, in its order.
RESOURCE_ORDER = ("cpu_millis", "memory_bytes", "gpu_shares")
