"""Required node affinity: Kubernetes' nodeSelectorTerms, honoured by placement for every pod of
a gang (a node that does not match is never chosen), merged with Muster's pinning in the pods."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.scheduling.admission import plan
from gateway.domain.scheduling.nodes import Requirement, Term, affinity_admits
from gateway.domain.scheduling.queueing import PendingReason
from gateway.domain.scheduling.quota import Quota
from gateway.domain.scheduling.reasons import never_fits
from tests.unit.builders import job, node, pod, snapshot, violations

ZONE_A: Term = (Requirement(key="zone", operator="In", values=("a",)),)
FAST: Term = (Requirement(key="gen", operator="Gt", values=("8",)),)


@pytest.mark.parametrize(
    ("requirement", "labels", "matches"),
    [
        (Requirement(key="zone", operator="In", values=("a", "b")), {"zone": "b"}, True),
        (Requirement(key="zone", operator="In", values=("a",)), {}, False),
        (Requirement(key="zone", operator="NotIn", values=("a",)), {}, True),
        (Requirement(key="zone", operator="NotIn", values=("a",)), {"zone": "a"}, False),
        (Requirement(key="ssd", operator="Exists"), {"ssd": ""}, True),
        (Requirement(key="ssd", operator="DoesNotExist"), {"ssd": ""}, False),
        (Requirement(key="gen", operator="Gt", values=("8",)), {"gen": "9"}, True),
        (Requirement(key="gen", operator="Gt", values=("8",)), {"gen": "8"}, False),
        (Requirement(key="gen", operator="Lt", values=("8",)), {"gen": "x"}, False),
        (Requirement(key="metadata.name", operator="In", values=("n",), field=True), {}, True),
        (Requirement(key="metadata.name", operator="NotIn", values=("n",), field=True), {}, False),
    ],
)
def test_requirements_mean_what_they_mean_in_kubernetes(
    requirement: Requirement, labels: dict[str, str], matches: bool
) -> None:
    assert affinity_admits(node("n", labels=labels), ((requirement,),)) is matches


def test_terms_are_alternatives_and_an_empty_term_matches_nothing() -> None:
    fast_b = node("n", labels={"zone": "b", "gen": "9"})
    assert affinity_admits(fast_b, (ZONE_A, FAST))
    assert not affinity_admits(fast_b, (ZONE_A,))
    assert not affinity_admits(fast_b, ((),))
    assert affinity_admits(fast_b, ())


def test_a_node_the_affinity_rules_out_is_never_chosen() -> None:
    # The tighter node (best fit) is in zone b: affinity alone sends the pod to zone a.
    nodes = [node("b", cpu=2, labels={"zone": "b"}), node("a", cpu=64, labels={"zone": "a"})]
    worker = replace(pod(cpu=1), affinity=(ZONE_A,))
    result = plan(snapshot(nodes, [job("j", worker)]))
    assert {p.node for a in result.admitted for p in a.placements} == {"a"}


def test_a_gang_whose_affinity_no_ready_node_matches_waits_saying_so() -> None:
    nodes = [node("b", labels={"zone": "b"})]
    result = plan(snapshot(nodes, [job("j", replace(pod(), affinity=(ZONE_A,)))]))
    [waiting] = result.waiting
    assert waiting.reason is PendingReason.INSUFFICIENT_CAPACITY
    assert "no ready node passes the node selector" in waiting.message


def test_an_affinity_no_node_matches_can_never_run() -> None:
    quota = Quota(
        cpu_millis=10**9,
        memory_bytes=10**15,
        gpu_shares=10**6,
        max_running_jobs=10,
        max_queued_jobs=10,
    )
    worker = replace(pod(), affinity=(ZONE_A,))
    assert never_fits([worker], [node("b", labels={"zone": "b"})], quota) == [
        (
            "selector",
            "no node passes the node selector, node affinity and tolerations of the worker pod",
        )
    ]


TERMS = st.sampled_from([(), (ZONE_A,), (FAST,), (ZONE_A, FAST), ((),)])


@st.composite
def affinity_snapshots(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    nodes = [
        node(
            f"n{k}",
            cpu=draw(st.sampled_from([2, 8])),
            gpus=0,
            labels={"zone": draw(st.sampled_from("ab")), "gen": draw(st.sampled_from("79"))},
        )
        for k in range(draw(st.integers(1, 5)))
    ]
    jobs = [
        job(
            f"j{j}",
            *(
                replace(pod(f"worker-{p}", cpu=draw(st.sampled_from([1, 2]))), affinity=draw(TERMS))
                for p in range(draw(st.integers(1, 3)))
            ),
            submitted_at=j,
        )
        for j in range(draw(st.integers(1, 8)))
    ]
    return snapshot(nodes, jobs)


@settings(max_examples=100, deadline=None)
@given(affinity_snapshots())
def test_random_plans_place_every_pod_on_a_node_its_affinity_matches(snap) -> None:  # type: ignore[no-untyped-def]
    assert violations(snap, plan(snap)) == []
