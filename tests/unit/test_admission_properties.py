"""Properties of every admission plan, over random clusters, holdings, tenants and queues."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.scheduling.admission import plan, queue_places
from gateway.domain.scheduling.capacity import free_capacity
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
from gateway.domain.scheduling.queue import AdmissionQueue
from gateway.domain.scheduling.queueing import PendingJob, Snapshot, TenantState
from gateway.domain.scheduling.quota import Quota, TenantUsage
from tests.unit.builders import GIB, snapshot, violations

# Modest counts keep the file at a few seconds; the invariants test gets the most examples.
MANY = settings(max_examples=120, deadline=None)
SOME = settings(max_examples=40, deadline=None)
TENANTS = ("a", "b", "c")
TAINT = Taint(key="team", value="ml", effect="NoSchedule")
TOLERATION = Toleration(key="team", operator="Exists")


# Shapes are drawn whole from tables, one draw each: drawing field by field made generation,
# not planning, the cost of these tests.
NODE_SHAPES = [
    (gpus, mode, cores, mem_gib, zone)
    for gpus in range(5)
    for mode in ([GpuMode.SHARED, GpuMode.DEVICE_PLUGIN] if gpus else [GpuMode.NONE])
    for cores in (1, 4, 16)
    for mem_gib in (1, 8, 32)
    for zone in "ab"
]
POD_SHAPES = [
    (cpu, mem, gpu, zone, tolerate, spread)
    for gpu in (0, 0, 0, 25, 50, 60, 100, 200, 300)
    for cpu in (0, 500, 2000, 4000)
    for mem in (0, GIB // 2, 4 * GIB)
    for zone in (None, "a", "b")
    for tolerate in (False, True)
    for spread in (False, True)
]
# Strategies are built once: building one per draw re-hashes its whole table every time.
NODE_SHAPE = st.sampled_from(NODE_SHAPES)
POD_SHAPE = st.sampled_from(POD_SHAPES)
SHARED_HELD = st.sampled_from([0, 0, 25, 50, 100])
WHOLE_HELD = st.sampled_from([0, 100])
USED_EIGHTHS = st.sampled_from([0, 0, 0, 2, 4, 8])
JOB_FIELDS = st.tuples(
    st.sampled_from(TENANTS),
    st.integers(0, 2),  # priority
    st.sampled_from([0.0, 10.0, 60.0, 95.0]),  # submitted_at
    st.sampled_from([None, None, None, 50.0, 200.0]),  # not_before
    st.sampled_from([None, None, 90.0]),  # queued_since
)


@st.composite
def nodes_and_holdings(draw: st.DrawFn) -> tuple[list[Node], list[Holding]]:
    nodes: list[Node] = []
    holdings: list[Holding] = []
    shapes = draw(st.lists(NODE_SHAPE, min_size=1, max_size=6))
    for k, (gpus, mode, cores, mem_gib, zone) in enumerate(shapes):
        name = f"n{k}"
        flags = draw(st.integers(0, 15))  # 0-3: tainted; 15: not ready
        nodes.append(
            Node(
                name=name,
                labels={"zone": zone},
                taints=(TAINT,) if flags < 4 else (),
                ready=flags != 15,
                gpu_mode=mode,
                cpu_millis=cores * 1000,
                memory_bytes=mem_gib * GIB,
                gpu_devices=gpus,
            )
        )
        # Pods already there, within what the node offers.
        amounts = SHARED_HELD if mode is GpuMode.SHARED else WHOLE_HELD
        held = draw(st.lists(amounts, min_size=gpus, max_size=gpus))
        holdings += [
            Holding(
                node=name, cpu_millis=0, memory_bytes=0, gpu=(GpuSlice(device=d, shares=shares),)
            )
            for d, shares in enumerate(held)
            if shares
        ]
        eighths = draw(USED_EIGHTHS)
        if eighths:
            holdings.append(
                Holding(
                    node=name,
                    cpu_millis=cores * 1000 * eighths // 8,
                    memory_bytes=mem_gib * GIB * eighths // 8,
                )
            )
    return nodes, holdings


@st.composite
def pending_jobs(draw: st.DrawFn) -> list[PendingJob]:
    jobs = []
    for k in range(draw(st.integers(0, 10))):
        shapes = draw(st.lists(POD_SHAPE, min_size=1, max_size=5))
        pods = tuple(
            PodRequest(
                name=f"{'ps' if spread else 'worker'}-{i}",
                role="ps" if spread else "worker",
                cpu_millis=cpu,
                memory_bytes=mem,
                gpu_shares=gpu,
                node_selector={"zone": zone} if zone else {},
                tolerations=(TOLERATION,) if tolerate else (),
                spread=spread,
            )
            for i, (cpu, mem, gpu, zone, tolerate, spread) in enumerate(shapes)
        )
        tenant, priority, submitted_at, not_before, queued_since = draw(JOB_FIELDS)
        jobs.append(
            PendingJob(
                id=f"j{k}",
                tenant=tenant,
                priority=priority,
                submitted_at=submitted_at,
                not_before=not_before,
                queued_since=queued_since,
                pods=pods,
            )
        )
    return jobs


# (cpu cores, memory GiB, gpu shares, running jobs) quota; the usage is a share of it, in eighths.
QUOTA_SHAPES = st.sampled_from(
    [
        (cores, mem_gib, gpu, running)
        for cores in (4, 32, 128)
        for mem_gib in (16, 256)
        for gpu in (0, 400, 2000)
        for running in (2, 20)
    ]
)
TENANT_FIELDS = st.tuples(QUOTA_SHAPES, st.integers(0, 6), st.sampled_from([0.5, 1.0, 2.0]))


@st.composite
def tenant_states(draw: st.DrawFn) -> dict[str, TenantState]:
    tenants = {}
    for name in TENANTS:
        (cores, mem_gib, gpu, running), eighths, weight = draw(TENANT_FIELDS)
        quota = Quota(
            cpu_millis=cores * 1000,
            memory_bytes=mem_gib * GIB,
            gpu_shares=gpu,
            max_running_jobs=running,
            max_queued_jobs=1000,
        )
        usage = TenantUsage(
            cpu_millis=quota.cpu_millis * eighths // 8,
            memory_bytes=quota.memory_bytes * eighths // 8,
            gpu_shares=quota.gpu_shares * eighths // 8,
            running_jobs=quota.max_running_jobs * eighths // 8,
        )
        tenants[name] = TenantState(name=name, weight=weight, quota=quota, usage=usage)
    return tenants


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    nodes, holdings = draw(nodes_and_holdings())
    return Snapshot(
        now=100.0,
        nodes=tuple(nodes),
        holdings=tuple(holdings),
        tenants=draw(tenant_states()),
        pending=tuple(draw(pending_jobs())),
        starvation_seconds=draw(st.sampled_from([5.0, 50.0, 1e9])),
    )


@MANY
@given(snapshots())
def test_no_plan_overcommits_a_node_or_a_quota_or_splits_a_gang(snap: Snapshot) -> None:
    # violations() checks: every pending job exactly once; every admitted gang placed whole,
    # each pod once on an eligible node with valid GPU slices; no node over-committed in CPU,
    # memory or any device's shares counting holdings; no tenant over quota.
    assert violations(snap, plan(snap)) == []


@SOME
@given(snapshots())
def test_the_same_snapshot_yields_the_same_plan(snap: Snapshot) -> None:
    assert plan(snap) == plan(snap)


@SOME
@given(snapshots(), st.randoms(use_true_random=False))
def test_the_plan_does_not_depend_on_the_order_rows_arrive_in(snap: Snapshot, rng: object) -> None:
    nodes, holdings, pending = list(snap.nodes), list(snap.holdings), list(snap.pending)
    for rows in (nodes, holdings, pending):
        rng.shuffle(rows)  # type: ignore[attr-defined]
    shuffled = Snapshot(
        now=snap.now,
        nodes=tuple(nodes),
        holdings=tuple(holdings),
        tenants=snap.tenants,
        pending=tuple(pending),
        starvation_seconds=snap.starvation_seconds,
    )
    assert plan(shuffled) == plan(snap)


@SOME
@given(snapshots())
def test_queue_places_count_up_overall_and_within_each_tenant(snap: Snapshot) -> None:
    places = list(queue_places(snap, AdmissionQueue.of(snap.pending)))
    tenant_of = {j.id: j.tenant for j in snap.pending}
    assert sorted(q.job_id for q in places) == sorted(tenant_of)
    assert [q.position for q in places] == list(range(1, len(places) + 1))
    seen: Counter[str] = Counter()
    for q in places:
        seen[tenant_of[q.job_id]] += 1
        assert q.tenant_position == seen[tenant_of[q.job_id]]


@SOME
@given(snapshots())
def test_nothing_lands_on_a_reserved_node_after_the_reservation(snap: Snapshot) -> None:
    result = plan(snap)
    if not result.reserved_nodes:
        return
    # Jobs admitted after the starving one was taken cannot use its nodes. The starving job is
    # taken before every job of lower order in its own tenant at least, so check those.
    starving = next(j for j in snap.pending if j.id == result.reserved_for)
    later = {
        j.id
        for j in snap.pending
        if j.tenant == starving.tenant
        and (-j.priority, j.submitted_at, j.id)
        > (-starving.priority, starving.submitted_at, starving.id)
    }
    for admission in result.admitted:
        if admission.job_id in later:
            assert not {p.node for p in admission.placements} & set(result.reserved_nodes)


@SOME
@given(snapshots())
def test_backoff_jobs_are_never_admitted(snap: Snapshot) -> None:
    result = plan(snap)
    in_backoff = {
        j.id for j in snap.pending if j.not_before is not None and j.not_before > snap.now
    }
    assert not in_backoff & {a.job_id for a in result.admitted}
    assert not in_backoff & {w.job_id for w in result.waiting}
    reasons = {q.job_id: q.reason for q in queue_places(snap, AdmissionQueue.of(snap.pending))}
    assert all(reasons[job_id] == "BackoffAfterEviction" for job_id in in_backoff)


def room_for(pod: PodRequest, snap: Snapshot) -> bool:
    """Brute force: some node passes the pod's constraints and has its requests free."""
    nodes = {n.name: n for n in snap.nodes}
    for free in free_capacity(snap.nodes, snap.holdings):
        kind = gpu_kind(pod.gpu_shares)
        if not node_admits(nodes[free.name], pod.node_selector, pod.tolerations, kind):
            continue
        if free.cpu_millis < pod.cpu_millis or free.memory_bytes < pod.memory_bytes:
            continue
        if pod.gpu_shares == 0:
            return True
        if pod.gpu_shares < 100 and any(d >= pod.gpu_shares for d in free.gpu):
            return True
        if pod.gpu_shares % 100 == 0 and free.gpu.count(100) >= pod.gpu_shares // 100:
            return True
    return False


@MANY
@given(nodes_and_holdings(), POD_SHAPE)
def test_a_lone_pod_is_admitted_exactly_when_some_node_has_room(
    cluster: tuple[list[Node], list[Holding]],
    shape: tuple[int, int, int, str | None, bool, bool],
) -> None:
    nodes, holdings = cluster
    cpu, mem, gpu, zone, tolerate, spread = shape
    lone = PodRequest(
        name="worker-0",
        role="worker",
        cpu_millis=cpu,
        memory_bytes=mem,
        gpu_shares=gpu,
        node_selector={"zone": zone} if zone else {},
        tolerations=(TOLERATION,) if tolerate else (),
        spread=spread,
    )
    snap = snapshot(nodes, [PendingJob(id="j", tenant="t", submitted_at=0.0, pods=(lone,))])
    snap = replace(snap, holdings=tuple(holdings))
    assert bool(plan(snap).admitted) is room_for(lone, snap)
