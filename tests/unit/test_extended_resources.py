"""Extended resources (rdma/hca, hugepages-2Mi, amd.com/gpu...): named, placed per node against
each node's allocatable, limited by quotas, never lent in a cohort, never over-committed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.resources import (
    QuantityError,
    Resources,
    extended_amount,
    extended_name_problem,
    format_extended,
)
from gateway.domain.scheduling.admission import plan
from gateway.domain.scheduling.cohorts import CohortTerms, Limits
from gateway.domain.scheduling.queueing import PendingReason, PreemptionPolicy, PreemptionReason
from gateway.domain.scheduling.quota import Quota, TenantUsage
from gateway.domain.scheduling.reasons import never_fits
from tests.unit.builders import (
    GIB,
    holding,
    job,
    node,
    pod,
    running,
    snapshot,
    tenant,
    violations,
)

RDMA = "rdma/hca"
PAGES = "hugepages-2Mi"


def placed(result: object) -> dict[str, dict[str, str]]:
    return {
        a.job_id: {p.pod_name: p.node for p in a.placements}
        for a in result.admitted  # type: ignore[attr-defined]
    }


def waiting(result: object) -> dict[str, tuple[PendingReason | None, str]]:
    return {w.job_id: (w.reason, w.message) for w in result.waiting}  # type: ignore[attr-defined]


# -- names and amounts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["rdma/hca", "amd.com/gpu", "nvidia.com/mig-1g.10gb", "hugepages-2Mi", "hugepages-1Gi"]
)
def test_names_nodes_advertise_are_extended_resources(name: str) -> None:
    assert extended_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("nvidia.com/gpu", "requested as gpu"),
        ("cpu", "not an extended resource"),
        ("pods", "not an extended resource"),
        ("gpus", "not a resource name"),
        ("hugepages-lots", "not a huge page size"),
        ("kubernetes.io/batteries", "Kubernetes' own"),
        ("Example.com/x", "not a resource name"),
        ("a/" + "x" * 64, "not a resource name"),
    ],
)
def test_other_names_are_refused_with_the_reason(name: str, words: str) -> None:
    problem = extended_name_problem(name)
    assert problem is not None
    assert words in problem


def test_amounts_are_whole_units_and_hugepages_whole_pages() -> None:
    assert extended_amount(RDMA, "2") == 2
    assert extended_amount(PAGES, "1Gi") == GIB
    assert format_extended(PAGES, GIB) == "1Gi"
    assert format_extended(RDMA, 2) == "2"
    with pytest.raises(QuantityError, match="not a whole number of units"):
        extended_amount(RDMA, "500m")
    with pytest.raises(QuantityError, match="2Mi pages"):
        extended_amount(PAGES, "3Mi")
    with pytest.raises(QuantityError, match="more than any node"):
        extended_amount(RDMA, "10E")


# -- placement -----------------------------------------------------------------------------------


def test_a_node_without_the_resource_is_never_chosen() -> None:
    # The roomier node lacks rdma: best fit would pick the smaller one anyway, so make the
    # plain node the tighter fit.
    nodes = [node("plain", cpu=2), node("rdma", cpu=64, extended={RDMA: 2})]
    result = plan(snapshot(nodes, [job("j", pod(cpu=1, extended={RDMA: 1}))]))
    assert placed(result) == {"j": {"worker-0": "rdma"}}
    assert [p.extended for p in result.admitted[0].placements] == [((RDMA, 1),)]


def test_pods_share_a_node_only_as_far_as_its_resource_goes() -> None:
    nodes = [node("a", extended={RDMA: 3}), node("b", extended={RDMA: 3})]
    pods = [pod(f"worker-{k}", extended={RDMA: 2}) for k in range(2)]
    result = plan(snapshot(nodes, [job("j", *pods)]))
    assert sorted(placed(result)["j"].values()) == ["a", "b"]


def test_what_holdings_hold_of_a_resource_is_not_free() -> None:
    nodes = [node("a", extended={RDMA: 4})]
    held = [holding("a", extended={RDMA: 3})]
    result = plan(snapshot(nodes, [job("j", pod(extended={RDMA: 2}))], holdings=held))
    assert placed(result) == {}
    reason, message = waiting(result)["j"]
    assert reason is PendingReason.INSUFFICIENT_CAPACITY
    assert "2 rdma/hca" in message
    assert "1 rdma/hca free" in message


def test_a_gang_that_no_node_set_fits_waits_naming_the_resource_per_node() -> None:
    nodes = [node("a", extended={RDMA: 1}), node("b", extended={RDMA: 1})]
    result = plan(snapshot(nodes, [job("j", pod(extended={RDMA: 2}))]))
    reason, message = waiting(result)["j"]
    assert reason is PendingReason.FRAGMENTED
    assert "needs 2 rdma/hca on one node; the most free on any node is 1 rdma/hca" in message


def test_a_job_asking_for_a_resource_no_node_offers_can_never_run() -> None:
    problems = never_fits(
        [pod(extended={RDMA: 1})],
        [node("a", extended={PAGES: GIB})],
        Quota(
            cpu_millis=10**9,
            memory_bytes=10**15,
            gpu_shares=10**6,
            max_running_jobs=10,
            max_queued_jobs=10,
        ),
    )
    assert problems == [(RDMA, "no node the worker pod may use offers rdma/hca")]


def test_a_preempted_gang_gives_back_its_extended_resources() -> None:
    nodes = [node("a", cpu=8, extended={RDMA: 1})]
    victim = running("old", "a", tenant="t", cpu=1, priority=0, admitted_at=0.0, extended={RDMA: 1})
    snap = snapshot(
        nodes,
        [job("new", pod(cpu=1, extended={RDMA: 1}), priority=5)],
        tenants=[
            tenant(
                "t",
                policy=PreemptionPolicy.LOWER_PRIORITY,
                usage=_usage(cpu=1000, extended={RDMA: 1}),
            )
        ],
        gangs=[victim],
        now=1000.0,
    )
    result = plan(snap)
    assert placed(result) == {"new": {"worker-0": "a"}}
    assert [(p.job_id, p.reason) for p in result.preempted] == [("old", PreemptionReason.PRIORITY)]
    assert violations(snap, result) == []


# -- quotas --------------------------------------------------------------------------------------


def _usage(*, cpu: int = 0, extended: dict[str, int] | None = None) -> TenantUsage:
    return TenantUsage(
        cpu_millis=cpu, running_jobs=1 if cpu else 0, extended=tuple((extended or {}).items())
    )


def test_a_quota_limits_only_the_extended_resources_it_names() -> None:
    quota = Quota(
        cpu_millis=10_000,
        memory_bytes=10 * GIB,
        gpu_shares=0,
        max_running_jobs=10,
        max_queued_jobs=10,
        extended=((RDMA, 2),),
    )
    one = Resources(cpu_millis=1000, memory_bytes=GIB, extended=((PAGES, GIB), (RDMA, 1)))
    assert quota.fits_now(TenantUsage(extended=((RDMA, 1),)), one)
    assert not quota.fits_now(TenantUsage(extended=((RDMA, 2),)), one)
    short = quota.short_of(TenantUsage(extended=((RDMA, 2),)), one)
    assert short is not None
    assert (short.resource, short.need, short.left) == (RDMA, 1, 0)
    assert quota.exceeded_by(Resources(cpu_millis=1, memory_bytes=1, extended=((RDMA, 3),))) == (
        RDMA,
    )
    assert quota.exceeded_by(Resources(cpu_millis=1, memory_bytes=1, extended=((PAGES, 9),))) == ()


def test_a_tenant_over_its_extended_quota_waits_and_is_told_which() -> None:
    nodes = [node("a", extended={RDMA: 8})]
    snap = snapshot(
        nodes,
        [job("j1", pod(extended={RDMA: 2})), job("j2", pod(extended={RDMA: 2}), submitted_at=1)],
        tenants=[tenant("t", extended={RDMA: 3})],
    )
    result = plan(snap)
    assert set(placed(result)) == {"j1"}
    reason, message = waiting(result)["j2"]
    assert reason is PendingReason.WAITING_FOR_QUOTA
    assert message == "needs 2 rdma/hca; tenant t has 1 rdma/hca of its 3 rdma/hca quota left"
    assert violations(snap, result) == []


def test_a_cohort_never_lends_extended_resources() -> None:
    terms = CohortTerms(cohort="c", borrowing_limit=Limits(), lending_limit=Limits())
    nodes = [node("a", extended={RDMA: 8})]
    snap = snapshot(
        nodes,
        [job("j", pod(extended={RDMA: 2}), tenant="borrower")],
        tenants=[
            tenant("borrower", cohort=terms, extended={RDMA: 1}),
            tenant("lender", cohort=terms, extended={RDMA: 8}),
        ],
    )
    result = plan(snap)
    assert placed(result) == {}
    reason, message = waiting(result)["j"]
    assert reason is PendingReason.WAITING_FOR_QUOTA
    assert "rdma/hca" in message


def test_a_job_over_its_tenants_extended_quota_can_never_run() -> None:
    quota = Quota(
        cpu_millis=10**9,
        memory_bytes=10**15,
        gpu_shares=0,
        max_running_jobs=10,
        max_queued_jobs=10,
        extended=((RDMA, 1),),
    )
    problems = never_fits([pod(extended={RDMA: 2})], [node("a", extended={RDMA: 4})], quota)
    assert problems == [(RDMA, "the job needs 2 rdma/hca but the tenant's quota is 1 rdma/hca")]


# -- no over-commit, for every resource name ----------------------------------------------------

NAMES = (RDMA, PAGES, "amd.com/gpu")
AMOUNT = st.sampled_from([0, 0, 1, 2, 4])


@st.composite
def extended_snapshots(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    nodes, holdings = [], []
    for k in range(draw(st.integers(1, 6))):
        offered = {n: a for n in NAMES if (a := draw(AMOUNT))}
        nodes.append(node(f"n{k}", gpus=draw(st.integers(0, 2)), cpu=8, extended=offered))
        held = {n: a for n in NAMES if (a := draw(AMOUNT))}
        if held and draw(st.booleans()):
            holdings.append(holding(f"n{k}", cpu=1, extended=held))
    jobs = []
    for j in range(draw(st.integers(1, 12))):
        pods = [
            pod(
                f"worker-{p}",
                cpu=draw(st.sampled_from([0.5, 1, 4])),
                gpu=draw(st.sampled_from([0, 0, 50, 100])),
                extended={n: a for n in NAMES if (a := draw(AMOUNT))},
            )
            for p in range(draw(st.integers(1, 4)))
        ]
        jobs.append(job(f"j{j:02d}", *pods, tenant=draw(st.sampled_from("abc")), submitted_at=j))
    terms = CohortTerms(cohort="c")
    tenants = [
        tenant(
            name,
            cohort=terms if draw(st.booleans()) else None,
            cpu=draw(st.sampled_from([None, 4.0])),
            extended={n: a for n in NAMES if draw(st.booleans()) and (a := draw(AMOUNT)) >= 0},
        )
        for name in "abc"
    ]
    return snapshot(nodes, jobs, tenants=tenants, holdings=holdings)


@settings(max_examples=150, deadline=None)
@given(extended_snapshots())
def test_random_plans_never_over_commit_any_resource_name_or_break_a_quota(snap) -> None:  # type: ignore[no-untyped-def]
    result = plan(snap)
    assert violations(snap, result) == []
