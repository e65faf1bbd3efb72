"""plan() with cohorts: tenants borrow the quota others leave idle, within their limits.

Scenarios after Kueue's documented borrowing, and a property test: over random clusters,
cohorts and queues, no node is over-committed, no gang is partial, no tenant goes above nominal
plus its borrowing limit and no cohort's pool is overdrawn (``builders.violations``).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.scheduling.admission import plan
from gateway.domain.scheduling.cohorts import CohortTerms, Limits
from gateway.domain.scheduling.queueing import PendingReason, TenantState
from gateway.domain.scheduling.quota import TenantUsage
from tests.unit.builders import job, node, pod, snapshot, tenant, violations


def member(
    name: str,
    cpu: float,
    *,
    cohort: str = "c",
    borrow: float | None = None,
    lend: float | None = None,
    usage_cpu: float = 0,
) -> TenantState:
    terms = CohortTerms(
        cohort=cohort,
        borrowing_limit=Limits(cpu_millis=None if borrow is None else int(borrow * 1000)),
        lending_limit=Limits(cpu_millis=None if lend is None else int(lend * 1000)),
    )
    used = TenantUsage(cpu_millis=int(usage_cpu * 1000), running_jobs=1 if usage_cpu else 0)
    return tenant(name, cpu=cpu, usage=used, cohort=terms)


def small_jobs(tenant_name: str, count: int, *, cpu: float = 1) -> list:
    return [
        job(f"{tenant_name}-{i}", pod(cpu=cpu, mem_gib=0), tenant=tenant_name, submitted_at=i)
        for i in range(count)
    ]


def test_a_tenant_borrows_its_cohorts_idle_quota() -> None:
    snap = snapshot(
        [node("n", cpu=100, gpus=0)],
        small_jobs("a", 50),
        tenants=[member("a", 20), member("b", 20)],
    )
    result = plan(snap)
    assert len(result.admitted) == 40  # its 20 and b's idle 20
    assert violations(snap, result) == []


def test_borrowing_stops_at_the_limit_and_says_so() -> None:
    snap = snapshot(
        [node("n", cpu=100, gpus=0)],
        small_jobs("a", 50),
        tenants=[member("a", 20, borrow=5), member("b", 20)],
    )
    result = plan(snap)
    assert len(result.admitted) == 25
    (first_waiting, *_) = result.waiting
    assert first_waiting.reason is PendingReason.WAITING_FOR_QUOTA
    assert first_waiting.message == (
        "needs 1 CPU; tenant a holds 25 CPUs and may hold at most 25 CPUs "
        "(20 CPUs nominal and 5 CPUs borrowed)"
    )


def test_a_lender_whose_quota_is_lent_out_is_told_so() -> None:
    # a holds 40 (20 of them b's); b's own job now waits for its quota to come back.
    snap = snapshot(
        [node("n", cpu=100, gpus=0)],
        small_jobs("b", 1, cpu=5),
        tenants=[member("a", 20, usage_cpu=40), member("b", 20)],
    )
    result = plan(snap)
    assert result.admitted == ()
    (waiting,) = result.waiting
    assert waiting.reason is PendingReason.WAITING_FOR_QUOTA
    assert "lent to other tenants of cohort c" in waiting.message


def test_the_unlent_part_of_a_quota_stays_its_owners() -> None:
    snap = snapshot(
        [node("n", cpu=100, gpus=0)],
        small_jobs("a", 50) + small_jobs("b", 50),
        tenants=[member("a", 20), member("b", 20, lend=5)],
    )
    result = plan(snap)
    admitted = {t: sum(1 for a in result.admitted if a.tenant == t) for t in ("a", "b")}
    assert admitted["b"] >= 15
    assert admitted["a"] + admitted["b"] == 40
    assert violations(snap, result) == []


def test_tenants_of_no_cohort_keep_to_their_quota_beside_a_cohort() -> None:
    snap = snapshot(
        [node("n", cpu=100, gpus=0)],
        small_jobs("solo", 30) + small_jobs("a", 30),
        tenants=[tenant("solo", cpu=10), member("a", 20), member("b", 20)],
    )
    result = plan(snap)
    admitted = {t: sum(1 for a in result.admitted if a.tenant == t) for t in ("solo", "a")}
    assert admitted == {"solo": 10, "a": 30}


@st.composite
def cohort_snapshots(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    nodes = [
        node(f"n{i}", cpu=draw(st.integers(4, 40)), gpus=0) for i in range(draw(st.integers(1, 4)))
    ]
    tenants = []
    jobs = []
    for t in range(draw(st.integers(1, 5))):
        name = f"t{t}"
        limit = st.one_of(st.none(), st.integers(0, 30))
        if draw(st.booleans()):
            borrow, lend = draw(limit), draw(limit)
            state = member(
                name,
                draw(st.integers(0, 30)),
                cohort=draw(st.sampled_from("xy")),
                borrow=borrow,
                lend=lend,
            )
        else:
            state = tenant(name, cpu=draw(st.integers(0, 30)))
        tenants.append(state)
        for i in range(draw(st.integers(0, 12))):
            pods = [
                pod(f"w-{k}", role="w", cpu=draw(st.integers(1, 8)), mem_gib=0)
                for k in range(draw(st.integers(1, 3)))
            ]
            jobs.append(
                job(
                    f"{name}-{i}",
                    *pods,
                    tenant=name,
                    priority=draw(st.integers(0, 2)),
                    submitted_at=float(i),
                )
            )
    return snapshot(nodes, jobs, tenants=tenants)


@settings(max_examples=200, deadline=None)
@given(snap=cohort_snapshots())
def test_random_cohorts_never_break_a_limit_or_overcommit_a_node(snap) -> None:  # type: ignore[no-untyped-def]
    result = plan(snap)
    assert violations(snap, result) == []


def test_each_placement_records_what_of_it_is_borrowed_last_pods_first() -> None:
    # a holds 18 of its 20 CPUs; a gang of three 2-CPU pods borrows 4 CPUs of b's idle quota.
    gang = job("gang", *(pod(f"w-{k}", role="w", cpu=2, mem_gib=0) for k in range(3)), tenant="a")
    snap = snapshot(
        [node("n", cpu=100, gpus=0)],
        [gang],
        tenants=[member("a", 20, usage_cpu=18), member("b", 20)],
    )
    (admission,) = plan(snap).admitted
    borrowed = {p.pod_name: p.borrowed.cpu_millis for p in admission.placements}
    assert borrowed == {"w-0": 0, "w-1": 2000, "w-2": 2000}


def test_nothing_is_recorded_borrowed_within_nominal_or_outside_a_cohort() -> None:
    jobs = [job("in", pod(cpu=5, mem_gib=0), tenant="a"), job("out", pod(cpu=5), tenant="solo")]
    snap = snapshot(
        [node("n", cpu=100, gpus=0)],
        jobs,
        tenants=[member("a", 20), member("b", 20), tenant("solo", cpu=10)],
    )
    result = plan(snap)
    assert len(result.admitted) == 2
    assert all(p.borrowed.cpu_millis == 0 for a in result.admitted for p in a.placements)
