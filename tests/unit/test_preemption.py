"""plan() preempts: reclaim within a cohort, and lower priority within a tenant.

Scenarios after Kueue's documented behaviours (borrowing idle quota, reclaim within the cohort,
lower-priority preemption within a tenant) and Volcano's reported failures (reclaim that evicts
without admitting; a large gang starved by small borrowers), then property tests over random
clusters, cohorts and histories: every cycle keeps ``builders.violations`` (no node
over-committed, no partial gang, no tenant above nominal plus its borrowing limit, no cohort
lending more than its members' lending limits, every preemption followed by its preemptor's
admission in the same plan, no victim of higher priority within a tenant, no non-preemptible
victim), and a tenant below nominal whose job fits its nominal quota is admitted within a
bounded number of cycles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.resources import Resources
from gateway.domain.scheduling.admission import PREEMPTION_TRIALS, plan
from gateway.domain.scheduling.cohorts import CohortTerms, Limits
from gateway.domain.scheduling.preemption import choose, preemption_backoff
from gateway.domain.scheduling.queueing import (
    AdmissionPlan,
    PendingJob,
    PendingReason,
    PreemptionPolicy,
    PreemptionReason,
    RunningGang,
    Snapshot,
    TenantState,
)
from gateway.domain.scheduling.quota import TenantUsage
from tests.unit.builders import job, node, pod, running, snapshot, tenant, violations

LOWER = PreemptionPolicy.LOWER_PRIORITY


def member(
    name: str,
    cpu: float,
    *,
    cohort: str = "c",
    borrow: float | None = None,
    lend: float | None = None,
    gangs: Sequence[RunningGang] = (),
    policy: PreemptionPolicy = PreemptionPolicy.NEVER,
) -> TenantState:
    """A cohort member with ``cpu`` nominal CPUs, holding what its ``gangs`` hold."""
    terms = CohortTerms(
        cohort=cohort,
        borrowing_limit=Limits(cpu_millis=None if borrow is None else int(borrow * 1000)),
        lending_limit=Limits(cpu_millis=None if lend is None else int(lend * 1000)),
    )
    return tenant(name, cpu=cpu, usage=usage_of(name, gangs), cohort=terms, policy=policy)


def usage_of(name: str, gangs: Sequence[RunningGang]) -> TenantUsage:
    mine = [g for g in gangs if g.tenant == name]
    return TenantUsage(
        cpu_millis=sum(g.demand.cpu_millis for g in mine),
        memory_bytes=sum(g.demand.memory_bytes for g in mine),
        gpu_shares=sum(g.demand.gpu_shares for g in mine),
        running_jobs=len(mine),
    )


def cpu_job(id: str, cpu: float, *, tenant: str, **kwargs: object) -> PendingJob:
    return job(id, pod(cpu=cpu, mem_gib=0), tenant=tenant, **kwargs)  # type: ignore[arg-type]


def preempted(result: AdmissionPlan) -> dict[str, tuple[str, PreemptionReason]]:
    return {p.job_id: (p.preemptor, p.reason) for p in result.preempted}


def admitted(result: AdmissionPlan) -> set[str]:
    return {a.job_id for a in result.admitted}


# -- reclaim within a cohort (Kueue: reclaimWithinCohort) -----------------------------------------


def borrower_gangs() -> list[RunningGang]:
    """a (nominal 20) runs 40 CPUs on a 40-CPU node: 20 of them b's idle quota."""
    return [
        running("a-own", "n", tenant="a", cpu=20, admitted_at=0),
        running("a-old", "n", tenant="a", cpu=10, borrowed_cpu=10, admitted_at=10),
        running("a-new", "n", tenant="a", cpu=10, borrowed_cpu=10, admitted_at=20),
    ]


def test_a_lender_reclaims_its_quota_by_preempting_the_newest_borrowing_gang() -> None:
    gangs = borrower_gangs()
    snap = snapshot(
        [node("n", cpu=40, gpus=0)],
        [cpu_job("b-1", 10, tenant="b")],
        tenants=[member("a", 20, gangs=gangs), member("b", 20)],
        gangs=gangs,
        now=100,
    )
    result = plan(snap)
    assert preempted(result) == {"a-new": ("b-1", PreemptionReason.RECLAIM)}
    assert admitted(result) == {"b-1"}
    assert violations(snap, result) == []


def test_reclaim_preempts_the_fewest_gangs_first() -> None:
    gangs = [
        running("a-own", "n", tenant="a", cpu=20),
        *(running(f"a-small-{k}", "n", tenant="a", cpu=2, borrowed_cpu=2) for k in range(5)),
        running("a-big", "n", tenant="a", cpu=10, borrowed_cpu=10, priority=5),
    ]
    snap = snapshot(
        [node("n", cpu=40, gpus=0)],
        [cpu_job("b-1", 10, tenant="b")],
        tenants=[member("a", 20, gangs=gangs), member("b", 20)],
        gangs=gangs,
        now=100,
    )
    result = plan(snap)
    # One gang of priority 5 rather than five of priority 0.
    assert set(preempted(result)) == {"a-big"}
    assert violations(snap, result) == []


def test_reclaim_takes_the_lowest_priority_then_the_most_recent() -> None:
    gangs = [
        running("a-own", "n", tenant="a", cpu=20),
        running("a-high", "n", tenant="a", cpu=5, borrowed_cpu=5, priority=3, admitted_at=50),
        running("a-low-old", "n", tenant="a", cpu=5, borrowed_cpu=5, admitted_at=10),
        running("a-low-new", "n", tenant="a", cpu=5, borrowed_cpu=5, admitted_at=20),
    ]
    snap = snapshot(
        [node("n", cpu=35, gpus=0)],
        [cpu_job("b-1", 5, tenant="b")],
        tenants=[member("a", 20, gangs=gangs), member("b", 20)],
        gangs=gangs,
        now=100,
    )
    assert set(preempted(plan(snap))) == {"a-low-new"}


def test_reclaim_preempts_only_gangs_whose_nodes_the_job_can_use() -> None:
    # b's job must run on the GPU node; the newest borrower runs on the CPU node.
    gangs = [
        running("a-own", "cpu", tenant="a", cpu=16),
        running("a-gpu", "gpu", tenant="a", cpu=4, borrowed_cpu=4, admitted_at=10),
        running("a-cpu", "cpu", tenant="a", cpu=4, borrowed_cpu=4, admitted_at=20),
    ]
    snap = snapshot(
        [node("cpu", cpu=20, gpus=0), node("gpu", cpu=4, gpus=1)],
        [job("b-1", pod(cpu=4, mem_gib=0, gpu=100), tenant="b")],
        tenants=[member("a", 16, gangs=gangs), member("b", 16)],
        gangs=gangs,
        now=100,
    )
    result = plan(snap)
    assert preempted(result) == {"a-gpu": ("b-1", PreemptionReason.RECLAIM)}
    assert admitted(result) == {"b-1"}


def test_nothing_is_preempted_for_a_job_that_still_would_not_fit() -> None:
    # Volcano #5105 and friends: evicting without admitting. b's job needs a GPU node that
    # does not exist, and one that needs more than b's nominal quota reclaims nothing.
    gangs = borrower_gangs()
    snap = snapshot(
        [node("n", cpu=40, gpus=0)],
        [
            job("needs-gpu", pod(cpu=1, mem_gib=0, gpu=100), tenant="b"),
            cpu_job("above-nominal", 25, tenant="c"),
        ],
        tenants=[member("a", 20, gangs=gangs), member("b", 20), member("c", 0, lend=0)],
        gangs=gangs,
        now=100,
    )
    result = plan(snap)
    assert result.preempted == ()
    assert result.admitted == ()


def test_a_tenant_within_its_quota_is_never_reclaimed_from() -> None:
    gangs = [running("a-1", "n", tenant="a", cpu=20), running("c-1", "n", tenant="c", cpu=20)]
    snap = snapshot(
        [node("n", cpu=40, gpus=0)],
        [cpu_job("b-1", 10, tenant="b")],
        tenants=[
            member("a", 20, gangs=gangs),
            member("b", 20),
            member("c", 20, gangs=gangs),
        ],
        gangs=gangs,
        now=100,
    )
    result = plan(snap)
    assert result.preempted == ()
    assert result.admitted == ()


def test_a_borrower_reclaims_nothing() -> None:
    gangs = borrower_gangs()
    snap = snapshot(
        [node("n", cpu=40, gpus=0)],
        [cpu_job("a-more", 5, tenant="a")],
        tenants=[member("a", 20, gangs=gangs), member("b", 20)],
        gangs=gangs,
        now=100,
    )
    assert plan(snap).preempted == ()


def test_young_borrowers_make_the_lender_wait_for_a_reclaim_and_say_how_many() -> None:
    gangs = borrower_gangs()
    snap = snapshot(
        [node("n", cpu=40, gpus=0)],
        [cpu_job("b-1", 15, tenant="b")],
        tenants=[member("a", 20, gangs=gangs), member("b", 20)],
        gangs=gangs,
        now=100,
        min_runtime_seconds=300,
    )
    result = plan(snap)
    assert result.preempted == ()
    (waiting,) = result.waiting
    assert waiting.reason is PendingReason.WAITING_FOR_RECLAIM
    assert waiting.message == (
        "2 running gangs will be preempted to make room for it (for tenant b) once they have "
        "run the minimum runtime, from 1970-01-01T00:05:20Z"
    )
    later = plan(replace(snap, now=320))
    assert set(preempted(later)) == {"a-old", "a-new"}
    assert admitted(later) == {"b-1"}


def test_a_non_preemptible_gang_is_never_preempted_and_never_borrows() -> None:
    gangs = [
        running("a-own", "n", tenant="a", cpu=20),
        running("a-pinned", "n", tenant="a", cpu=10, borrowed_cpu=10, preemptible=False),
    ]
    snap = snapshot(
        [node("n", cpu=30, gpus=0)],
        [
            cpu_job("b-1", 10, tenant="b"),
            cpu_job("a-more", 5, tenant="a", preemptible=False),
        ],
        tenants=[member("a", 20, gangs=gangs), member("b", 20)],
        gangs=gangs,
        now=100,
    )
    result = plan(snap)
    assert result.preempted == ()
    assert result.admitted == ()
    reasons = {w.job_id: w.message for w in result.waiting}
    assert "its priority class is not preemptible" in reasons["a-more"]


# -- priority within a tenant (Kueue: withinClusterQueue LowerPriority) ---------------------------


def own_gangs() -> list[RunningGang]:
    return [
        running("low", "n", tenant="t", cpu=10, priority=0, admitted_at=10),
        running("mid", "n", tenant="t", cpu=10, priority=5, admitted_at=20),
    ]


def test_a_tenants_urgent_job_preempts_its_own_lower_priority_gang() -> None:
    gangs = own_gangs()
    snap = snapshot(
        [node("n", cpu=20, gpus=0)],
        [cpu_job("urgent", 10, tenant="t", priority=9)],
        tenants=[tenant("t", cpu=20, usage=usage_of("t", gangs), policy=LOWER)],
        gangs=gangs,
        now=100,
    )
    result = plan(snap)
    assert preempted(result) == {"low": ("urgent", PreemptionReason.PRIORITY)}
    assert admitted(result) == {"urgent"}
    assert violations(snap, result) == []


def test_priority_preemption_needs_the_tenants_policy_and_a_lower_priority() -> None:
    gangs = own_gangs()
    tenants = [tenant("t", cpu=20, usage=usage_of("t", gangs))]
    never = snapshot(
        [node("n", cpu=20, gpus=0)],
        [cpu_job("urgent", 10, tenant="t", priority=9)],
        tenants=tenants,
        gangs=gangs,
        now=100,
    )
    assert plan(never).preempted == ()
    equal = snapshot(
        [node("n", cpu=20, gpus=0)],
        [cpu_job("peer", 10, tenant="t", priority=0)],
        tenants=[replace(tenants[0], preemption_policy=LOWER)],
        gangs=gangs,
        now=100,
    )
    assert plan(equal).preempted == ()


def test_priority_preemption_makes_room_under_the_running_job_cap() -> None:
    gangs = own_gangs()
    snap = snapshot(
        [node("n", cpu=100, gpus=0)],
        [cpu_job("urgent", 1, tenant="t", priority=9)],
        tenants=[tenant("t", max_running=2, usage=usage_of("t", gangs), policy=LOWER)],
        gangs=gangs,
        now=100,
    )
    result = plan(snap)
    assert set(preempted(result)) == {"low"}
    assert admitted(result) == {"urgent"}


def test_another_tenants_gang_is_never_preempted_for_priority() -> None:
    gangs = [running("other", "n", tenant="o", cpu=20, priority=-5)]
    snap = snapshot(
        [node("n", cpu=20, gpus=0)],
        [cpu_job("urgent", 10, tenant="t", priority=9)],
        tenants=[tenant("t", policy=LOWER), tenant("o", usage=usage_of("o", gangs))],
        gangs=gangs,
        now=100,
    )
    assert plan(snap).preempted == ()


# -- Volcano: a large gang is not starved by small borrowers --------------------------------------


def test_a_large_gang_is_not_starved_by_small_borrowers() -> None:
    """a keeps submitting 1-CPU jobs that borrow b's idle quota; b's 16-pod gang (its whole
    nominal quota) waits only for the minimum runtime, then reclaims and runs."""
    nodes = [node(f"n{k}", cpu=8, gpus=0) for k in range(5)]  # 40 CPUs
    gangs: list[RunningGang] = []
    big = job("b-big", *(pod(f"w-{k}", role="w", cpu=1, mem_gib=0) for k in range(16)), tenant="b")
    queue = [big]
    now = 0.0
    serial = 0
    for cycle in range(40):
        queue += [cpu_job(f"a-{serial + k}", 1, tenant="a", submitted_at=now) for k in range(8)]
        serial += 8
        snap = snapshot(
            nodes,
            queue,
            tenants=[member("a", 20, gangs=gangs), member("b", 20, gangs=gangs)],
            gangs=gangs,
            now=now,
            min_runtime_seconds=60,
        )
        result = plan(snap)
        assert violations(snap, result) == []
        gangs, queue = advance(snap, result, gangs, queue)
        if "b-big" in admitted(result):
            assert now <= 120, f"admitted only at {now} s, in cycle {cycle}"
            return
        now += 10
    raise AssertionError("the large gang was never admitted")


# -- properties over random histories -------------------------------------------------------------


def advance(
    snap: Snapshot,
    result: AdmissionPlan,
    gangs: list[RunningGang],
    queue: list[PendingJob],
) -> tuple[list[RunningGang], list[PendingJob]]:
    """The state after the plan: victims back in the queue, admitted jobs running."""
    jobs = {j.id: j for j in queue}
    victims = {p.job_id for p in result.preempted}
    requeued = [original[g.job_id] for g in gangs if g.job_id in victims]
    gangs = [g for g in gangs if g.job_id not in victims]
    for admission in result.admitted:
        pending = jobs[admission.job_id]
        original[pending.id] = pending
        gangs.append(
            RunningGang(
                job_id=pending.id,
                tenant=pending.tenant,
                priority=pending.priority,
                preemptible=pending.preemptible,
                admitted_at=snap.now,
                placements=admission.placements,
            )
        )
    done = admitted(result)
    queue = [j for j in queue if j.id not in done] + [
        replace(j, queued_since=snap.now) for j in requeued
    ]
    return gangs, queue


#: Every job that ever ran, by id, so a victim goes back to the queue as it was submitted.
original: dict[str, PendingJob] = {}


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list, list[TenantState], list[list[PendingJob]]]:  # type: ignore[type-arg]
    nodes = [
        node(f"n{i}", cpu=draw(st.integers(4, 24)), gpus=draw(st.sampled_from([0, 0, 2])))
        for i in range(draw(st.integers(1, 4)))
    ]
    tenants = []
    for t in range(draw(st.integers(2, 5))):
        name = f"t{t}"
        limit = st.one_of(st.none(), st.none(), st.integers(0, 20))
        policy = draw(st.sampled_from(list(PreemptionPolicy)))
        if draw(st.integers(0, 4)):
            state = member(
                name,
                draw(st.integers(2, 20)),
                cohort=draw(st.sampled_from("xxy")),
                borrow=draw(limit),
                lend=draw(limit),
                policy=policy,
            )
        else:
            state = tenant(name, cpu=draw(st.integers(0, 20)), policy=policy)
        tenants.append(state)
    waves = []
    for w in range(draw(st.integers(2, 7))):
        wave = []
        # Each wave comes mostly from one tenant: one borrows, the next reclaims.
        focus = draw(st.sampled_from(tenants)).name
        for i in range(draw(st.integers(0, 8))):
            owner = focus if draw(st.integers(0, 3)) else draw(st.sampled_from(tenants)).name
            pods = [
                pod(
                    f"w-{k}",
                    role="w",
                    cpu=draw(st.integers(1, 4)),
                    mem_gib=0,
                    gpu=draw(st.sampled_from([0, 0, 0, 50, 100])),
                )
                for k in range(draw(st.integers(1, 2)))
            ]
            wave.append(
                job(
                    f"{owner}-{w}-{i}",
                    *pods,
                    tenant=owner,
                    priority=draw(st.integers(0, 3)),
                    submitted_at=float(w),
                    preemptible=draw(st.integers(0, 5)) > 0,
                )
            )
        waves.append(wave)
    return nodes, tenants, waves


def with_usage(tenants: Sequence[TenantState], gangs: Sequence[RunningGang]) -> list[TenantState]:
    return [replace(t, usage=usage_of(t.name, gangs)) for t in tenants]


@settings(max_examples=150, deadline=None)
@given(world=worlds(), data=st.data())
def test_random_histories_keep_every_invariant_of_preemption(world, data) -> None:  # type: ignore[no-untyped-def]
    nodes, tenants, waves = world
    gangs: list[RunningGang] = []
    queue: list[PendingJob] = []
    now = 0.0
    for wave in waves:
        queue += wave
        snap = snapshot(
            nodes,
            queue,
            tenants=with_usage(tenants, gangs),
            gangs=gangs,
            now=now,
            min_runtime_seconds=data.draw(st.sampled_from([0.0, 5.0])),
        )
        result = plan(snap)
        assert violations(snap, result) == []
        gangs, queue = advance(snap, result, gangs, queue)
        # Some gangs end.
        ids = [g.job_id for g in gangs]
        ending = data.draw(st.sets(st.sampled_from(ids), max_size=2)) if ids else set()
        gangs = [g for g in gangs if g.job_id not in ending]
        now += data.draw(st.sampled_from([1.0, 10.0]))


@settings(max_examples=150, deadline=None)
@given(world=worlds(), data=st.data())
def test_a_tenant_below_nominal_gets_its_job_admitted_within_bounded_cycles(world, data) -> None:  # type: ignore[no-untyped-def]
    """Liveness. On one node whose CPUs cover every cohort member's nominal quota (so that
    nodes never stand in the way once borrowers are gone), after a random history, a lender's
    job that fits its nominal quota is admitted within as many cycles as there are gangs
    running, plus one, while everyone else keeps their queues."""
    _, tenants, waves = world
    members = [t for t in tenants if t.cohort is not None]
    if len(members) < 2:
        return
    total = sum(t.quota.cpu_millis for t in tenants)
    nodes = [node("n", cpu=max(total // 1000, 1), gpus=0)]
    cpu_only = [
        [replace(j, pods=tuple(replace(p, gpu_shares=0) for p in j.pods)) for j in wave]
        for wave in waves
    ]
    gangs: list[RunningGang] = []
    queue: list[PendingJob] = []
    for step, wave in enumerate(cpu_only):
        queue += wave
        snap = snapshot(
            nodes, queue, tenants=with_usage(tenants, gangs), gangs=gangs, now=float(step)
        )
        gangs, queue = advance(snap, plan(snap), gangs, queue)
    lender = data.draw(st.sampled_from(members))
    held = usage_of(lender.name, gangs)
    room = lender.quota.cpu_millis - held.cpu_millis
    if room < 1000:
        return
    # The lender's queue is this one job; everyone else's queues stay as they are.
    want = cpu_job("reclaim", data.draw(st.integers(1, room // 1000)), tenant=lender.name)
    queue = [j for j in queue if j.tenant != lender.name] + [replace(want, priority=10**3)]
    bound = len(gangs) + 1
    for cycle in range(bound):
        now = 100.0 + cycle
        snap = snapshot(nodes, queue, tenants=with_usage(tenants, gangs), gangs=gangs, now=now)
        result = plan(snap)
        assert violations(snap, result) == []
        if "reclaim" in admitted(result):
            return
        gangs, queue = advance(snap, result, gangs, queue)
    raise AssertionError(f"not admitted in {bound} cycles")


# -- the choice of victims ------------------------------------------------------------------------


def test_choose_prefers_one_victim_in_order_over_several() -> None:
    sizes = {"a": 2, "b": 2, "c": 2, "d": 5, "e": 5}

    def fits(victims: Sequence[str]) -> int | None:
        freed = sum(sizes[v] for v in victims)
        return freed if freed >= 5 else None

    assert choose(list(sizes), fits) == (["d"], 5)


def test_choose_drops_victims_it_can_do_without() -> None:
    sizes = {"a": 1, "b": 3, "c": 1, "d": 3}

    def fits(victims: Sequence[str]) -> int | None:
        freed = sum(sizes[v] for v in victims)
        return freed if freed >= 6 else None

    chosen, _ = choose(list(sizes), fits) or ([], 0)
    assert sorted(chosen) == ["b", "d"]


def test_choose_finds_nothing_when_all_candidates_are_not_enough() -> None:
    assert choose(["a", "b"], lambda victims: None) is None
    assert choose([], lambda victims: 1) is None


def test_choose_keeps_a_valid_answer_when_it_can_no_longer_afford_to_look() -> None:
    budget = [3]

    def fits(victims: Sequence[str]) -> int | None:
        if budget[0] <= 0:
            return None
        budget[0] -= 1
        return len(victims) if len(victims) >= 2 else None

    chosen, _ = choose(["a", "b", "c", "d"], fits) or ([], 0)
    assert len(chosen) >= 2


def test_a_cycle_spends_a_bounded_number_of_trials() -> None:
    # Many lenders, each below nominal, and a cluster full of small borrowers: the cycle stops
    # looking once its trials are spent, and what it did decide is still valid.
    gangs = [running("a-own", "n", tenant="a", cpu=10)] + [
        running(f"a-{k}", "n", tenant="a", cpu=1, borrowed_cpu=1, admitted_at=k) for k in range(90)
    ]
    lenders = [member(f"l{k}", 1) for k in range(90)]
    snap = snapshot(
        [node("n", cpu=100, gpus=0)],
        [cpu_job(f"l{k}-1", 1, tenant=f"l{k}") for k in range(90)],
        tenants=[member("a", 10, gangs=gangs), *lenders],
        gangs=gangs,
        now=1000,
    )
    result = plan(snap)
    # Each lender's job needed one victim, and got one; the trials ran out before every lender
    # had its turn (the next cycle goes on).
    preemptors = [p.preemptor for p in result.preempted]
    assert len(preemptors) == len(set(preemptors))
    assert 0 < len(preemptors) < PREEMPTION_TRIALS
    assert violations(snap, result) == []


def test_a_job_preempted_again_backs_off_longer_each_time() -> None:
    assert [preemption_backoff(n) for n in range(5)] == [0.0, 30.0, 60.0, 120.0, 240.0]
    assert preemption_backoff(1000) == 1800.0


def test_resources_of_a_gang_add_up_its_placements() -> None:
    gang = running("g", "n", pods=3, cpu=2, mem_gib=1, borrowed_cpu=1)
    assert gang.demand == Resources(cpu_millis=6000, memory_bytes=3 << 30, gpu_shares=0)
    assert gang.borrows


def test_jobs_blocked_before_a_preemption_in_the_same_cycle_get_their_reason() -> None:
    """A gang is built on one cycle state's pod classes; a preemption replaces that state, and
    the reasons of jobs blocked before it are settled on the new one (a saved Hypothesis example
    once found them read against the old classes)."""
    gangs = [running("a-big", "n2", tenant="a", cpu=4, borrowed_cpu=2, admitted_at=0)]
    zone = {"zone": "a"}
    snap = snapshot(
        [
            node("n0", cpu=3, gpus=0, labels=zone),
            node("n1", cpu=3, gpus=0, labels=zone),
            node("n2", cpu=4, gpus=0),
        ],
        [
            cpu_job("x-small", 1, tenant="x", priority=9),
            job("x-wide", pod(cpu=4, mem_gib=0, selector=zone), tenant="x", priority=8),
            cpu_job("b-1", 2, tenant="b"),
        ],
        tenants=[tenant("x"), member("a", 2, gangs=gangs), member("b", 2)],
        gangs=gangs,
        now=100,
    )
    result = plan(snap)
    assert preempted(result) == {"a-big": ("b-1", PreemptionReason.RECLAIM)}
    assert admitted(result) == {"x-small", "b-1"}
    (wide,) = result.waiting
    assert (wide.job_id, wide.reason) == ("x-wide", PendingReason.INSUFFICIENT_CAPACITY)
    assert violations(snap, result) == []
