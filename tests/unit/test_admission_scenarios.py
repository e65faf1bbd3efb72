"""Admission scenarios: one behaviour of `plan()` or `never_fits()` per test, as tables of cases."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

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
    tolerates,
)
from gateway.domain.scheduling.queue import AdmissionQueue
from gateway.domain.scheduling.queueing import (
    AdmissionPlan,
    PendingJob,
    PendingReason,
    Snapshot,
    Waiting,
)
from gateway.domain.scheduling.quota import Quota, TenantUsage
from gateway.domain.scheduling.reasons import never_fits
from tests.unit.builders import (
    GIB,
    gang,
    holding,
    holdings_of,
    job,
    node,
    pod,
    snapshot,
    tenant,
    violations,
)


def decide(snap: Snapshot) -> AdmissionPlan:
    """plan(), checked against every invariant on the way."""
    result = plan(snap)
    assert violations(snap, result) == []
    return result


def admitted_ids(result: AdmissionPlan) -> list[str]:
    return [a.job_id for a in result.admitted]


def waiting(result: AdmissionPlan, job_id: str) -> Waiting:
    return next(w for w in result.waiting if w.job_id == job_id)


def nodes_of(result: AdmissionPlan, job_id: str) -> list[str]:
    admission = next(a for a in result.admitted if a.job_id == job_id)
    return [p.node for p in admission.placements]


# -- GPUs ---------------------------------------------------------------------------------------


def test_eight_free_gpus_split_four_and_four_do_not_take_an_eight_gpu_pod() -> None:
    snap = snapshot(
        [node("a", gpus=4), node("b", gpus=4)],
        [job("big", pod("worker-0", gpu=800))],
    )
    result = decide(snap)
    assert result.admitted == ()
    assert waiting(result, "big").reason is PendingReason.FRAGMENTED
    assert waiting(result, "big").message == (
        "a worker pod needs 8 GPUs on one node; the most free on any node is 4 GPUs"
    )


def test_two_half_gpu_jobs_share_one_device() -> None:
    snap = snapshot(
        [node("a", gpus=2)],
        [
            job("j1", pod(gpu=50), submitted_at=1),
            job("j2", pod(gpu=50), submitted_at=2),
        ],
    )
    result = decide(snap)
    assert admitted_ids(result) == ["j1", "j2"]
    slices = [a.placements[0].gpu for a in result.admitted]
    assert slices == [(GpuSlice(device=0, shares=50),), (GpuSlice(device=0, shares=50),)]


def test_a_fraction_goes_to_the_fullest_device_that_still_fits() -> None:
    snap = snapshot(
        [node("a", gpus=3)],
        [job("j", pod(gpu=30))],
        holdings=[holding("a", gpu=[(0, 80), (2, 60)])],
    )
    result = decide(snap)
    # Device 0 has 20 free (too little), device 2 has 40 (the best fit), device 1 has 100.
    assert result.admitted[0].placements[0].gpu == (GpuSlice(device=2, shares=30),)


@pytest.mark.parametrize(
    ("gpus", "admitted", "devices"),
    [
        pytest.param(2, ["j1", "j2"], [0, 1], id="two devices: one each"),
        pytest.param(1, ["j1"], [0], id="one device: the second waits"),
    ],
)
def test_sixty_and_fifty_percent_never_share_a_device(
    gpus: int, admitted: list[str], devices: list[int]
) -> None:
    snap = snapshot(
        [node("a", gpus=gpus)],
        [job("j1", pod(gpu=60), submitted_at=1), job("j2", pod(gpu=50), submitted_at=2)],
    )
    result = decide(snap)
    assert admitted_ids(result) == admitted
    assert [a.placements[0].gpu[0].device for a in result.admitted] == devices


def test_a_whole_gpu_takes_an_entirely_free_device() -> None:
    snap = snapshot(
        [node("a", gpus=2)],
        [job("j", pod(gpu=100))],
        holdings=[holding("a", gpu=[(0, 10)])],
    )
    result = decide(snap)
    assert result.admitted[0].placements[0].gpu == (GpuSlice(device=1, shares=100),)


@pytest.mark.parametrize(
    ("shares", "admitted"),
    [
        pytest.param(50, False, id="a fraction is refused"),
        pytest.param(100, True, id="a whole gpu is taken"),
        pytest.param(300, True, id="whole gpus are taken"),
    ],
)
def test_device_plugin_nodes_take_only_whole_gpus(shares: int, admitted: bool) -> None:
    snap = snapshot([node("dp", gpus=4, mode=GpuMode.DEVICE_PLUGIN)], [job("j", pod(gpu=shares))])
    result = decide(snap)
    assert bool(result.admitted) is admitted
    if not admitted:
        assert waiting(result, "j").reason is PendingReason.INSUFFICIENT_CAPACITY


def test_gpu_pods_never_land_on_nodes_without_gpus() -> None:
    snap = snapshot(
        [node("cpu-only", gpus=0), node("gpu", gpus=1)],
        [job("j", pod(gpu=100), pod("worker-1", gpu=100))],
    )
    result = decide(snap)
    assert result.admitted == ()


@pytest.mark.parametrize(
    ("nodes", "holdings", "pods", "reason", "message"),
    [
        pytest.param(
            [node("a", gpus=2)],
            [holding("a", gpu=[(0, 60), (1, 60)])],
            [pod(gpu=50)],
            PendingReason.FRAGMENTED,
            "a worker pod needs 0.5 GPUs of one device; the most free on any device is 0.4 GPUs",
            id="a fraction larger than any device's room",
        ),
        pytest.param(
            [node("a", gpus=0, cpu=4), node("b", gpus=0, cpu=4)],
            [],
            [pod(cpu=6)],
            PendingReason.FRAGMENTED,
            "a worker pod needs 6 CPUs on one node; the most free on any node is 4 CPUs",
            id="cpu split over nodes",
        ),
        pytest.param(
            [node("a", gpus=4, cpu=2), node("b", gpus=1, cpu=16)],
            [],
            [pod(cpu=4, gpu=200)],
            PendingReason.FRAGMENTED,
            "no node has 2 GPUs, 4 CPUs and 1 GiB free at once for a worker pod",
            id="gpu on one node, cpu on another",
        ),
        pytest.param(
            [node("a", gpus=3), node("b", gpus=3)],
            [],
            gang("j", 3, gpu=200),
            PendingReason.FRAGMENTED,
            "the free sums would fit, but no set of nodes fits all 3 pods at once",
            id="each pod fits somewhere, the gang does not",
        ),
        pytest.param(
            [node("a", gpus=8, labels={"zone": "a"}), node("b", gpus=1, labels={"zone": "b"})],
            [],
            gang("j", 2, gpu=100, selector={"zone": "b"}),
            PendingReason.INSUFFICIENT_CAPACITY,
            "needs 2 GPUs on the nodes its worker pods may use; 1 GPU free there",
            id="enough in the cluster, not where the selector points",
        ),
    ],
)
def test_waiting_messages_name_what_is_missing(
    nodes: list[Node],
    holdings: list[Holding],
    pods: list[PodRequest],
    reason: PendingReason,
    message: str,
) -> None:
    result = decide(snapshot(nodes, [job("j", *pods)], holdings=holdings))
    assert (waiting(result, "j").reason, waiting(result, "j").message) == (reason, message)


# -- gangs and placement ------------------------------------------------------------------------


def test_parameter_servers_spread_over_distinct_nodes() -> None:
    nodes = [node(f"n{k}", gpus=0, cpu=16) for k in range(4)]
    spread = decide(snapshot(nodes, [job("tf", *gang("tf", 4, role="ps", cpu=2, spread=True))]))
    packed = decide(snapshot(nodes, [job("tf", *gang("tf", 4, role="ps", cpu=2))]))
    assert sorted(nodes_of(spread, "tf")) == ["n0", "n1", "n2", "n3"]
    assert len(set(nodes_of(packed, "tf"))) == 1  # best fit packs what need not spread


def test_spread_falls_back_to_sharing_a_node_when_there_are_too_few() -> None:
    nodes = [node("n0", gpus=0, cpu=16), node("n1", gpus=0, cpu=16)]
    result = decide(snapshot(nodes, [job("tf", *gang("tf", 4, role="ps", cpu=2, spread=True))]))
    assert sorted(set(nodes_of(result, "tf"))) == ["n0", "n1"]


def test_a_gang_is_placed_whole_or_not_at_all() -> None:
    snap = snapshot(
        [node("a", gpus=2), node("b", gpus=2)],
        [job("j", *gang("j", 5, gpu=100))],
    )
    result = decide(snap)
    assert result.admitted == ()
    assert waiting(result, "j").reason is PendingReason.INSUFFICIENT_CAPACITY
    assert waiting(result, "j").message == "needs 5 GPUs in total; 4 GPUs free in the cluster"


def test_largest_pods_are_placed_first_so_the_gang_fits() -> None:
    # Placed in the given order, the small pods would take node a and leave no room for 4 GPUs.
    snap = snapshot(
        [node("a", gpus=4), node("b", gpus=2)],
        [job("j", pod("worker-0", gpu=100), pod("worker-1", gpu=100), pod("chief-0", gpu=400))],
    )
    result = decide(snap)
    placements = {p.pod_name: p.node for p in result.admitted[0].placements}
    assert placements == {"chief-0": "a", "worker-0": "b", "worker-1": "b"}


def test_best_fit_picks_the_node_that_leaves_the_least_free() -> None:
    snap = snapshot(
        [node("roomy", gpus=8), node("snug", gpus=8)],
        [job("j", pod(gpu=200))],
        holdings=[holding("snug", gpu=[(d, 100) for d in range(5)])],
    )
    assert nodes_of(decide(snap), "j") == ["snug"]


def test_existing_holdings_are_respected() -> None:
    snap = snapshot(
        [node("a", gpus=0, cpu=8)],
        [job("j1", pod(cpu=4), submitted_at=1), job("j2", pod(cpu=4), submitted_at=2)],
        holdings=[holding("a", cpu=3)],
    )
    result = decide(snap)
    assert admitted_ids(result) == ["j1"]
    assert waiting(result, "j2").message == "needs 4 CPUs in total; 1 CPU free in the cluster"


def test_a_job_without_pods_is_never_admitted() -> None:
    snap = snapshot([node("a")], [replace(job("empty"), pods=())])
    result = decide(snap)
    assert result.admitted == ()
    assert waiting(result, "empty").message == "the job has no pods to place"


def test_not_ready_nodes_are_not_used() -> None:
    snap = snapshot([node("down", ready=False), node("up", gpus=0)], [job("j", pod(gpu=100))])
    assert decide(snap).admitted == ()


# -- taints and selectors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("taint", "toleration", "tolerated"),
    [
        (Taint(key="k", value="v"), Toleration(key="k", value="v"), True),
        (Taint(key="k", value="v"), Toleration(key="k", value="other"), False),
        (Taint(key="k", value="v"), Toleration(key="k", operator="Exists"), True),
        (Taint(key="k", value="v"), Toleration(key="other", operator="Exists"), False),
        (Taint(key="k", value="v"), Toleration(key=None, operator="Exists"), True),
        (Taint(key="k", value="v"), Toleration(key=None), False),
        (Taint(key="k", value=""), Toleration(key="k"), True),
        (
            Taint(key="k", value="v", effect="NoExecute"),
            Toleration(key="k", value="v", effect="NoSchedule"),
            False,
        ),
        (
            Taint(key="k", value="v", effect="NoExecute"),
            Toleration(key="k", value="v", effect="NoExecute"),
            True,
        ),
    ],
)
def test_toleration_matching_follows_kubernetes(
    taint: Taint, toleration: Toleration, tolerated: bool
) -> None:
    assert tolerates([toleration], taint) is tolerated


@pytest.mark.parametrize(
    ("effect", "tolerations", "placed"),
    [
        pytest.param("NoSchedule", (), False, id="NoSchedule keeps pods off"),
        pytest.param("NoExecute", (), False, id="NoExecute keeps pods off"),
        pytest.param("PreferNoSchedule", (), True, id="PreferNoSchedule is only a preference"),
        pytest.param(
            "NoSchedule", (Toleration(key="team", value="ml"),), True, id="a toleration lets in"
        ),
        pytest.param(
            "NoSchedule", (Toleration(key=None, operator="Exists"),), True, id="Exists everything"
        ),
    ],
)
def test_taints_keep_off_pods_that_do_not_tolerate_them(
    effect: str, tolerations: tuple[Toleration, ...], placed: bool
) -> None:
    tainted = node("tainted", taints=[Taint(key="team", value="ml", effect=effect)])
    result = decide(snapshot([tainted], [job("j", pod(gpu=100, tolerations=tolerations))]))
    assert bool(result.admitted) is placed


@pytest.mark.parametrize(
    ("selector", "where"),
    [
        pytest.param({}, "a", id="no selector: best fit"),
        pytest.param({"zone": "b"}, "b", id="selector picks its zone"),
        pytest.param({"zone": "b", "disk": "ssd"}, "b", id="every label must match"),
        pytest.param({"zone": "c"}, None, id="no node matches"),
    ],
)
def test_node_selectors_pick_the_nodes_a_pod_may_use(
    selector: dict[str, str], where: str | None
) -> None:
    nodes = [
        node("a", labels={"zone": "a", "disk": "ssd"}),
        node("b", labels={"zone": "b", "disk": "ssd"}),
    ]
    result = decide(snapshot(nodes, [job("j", pod(gpu=100, selector=selector))]))
    if where is None:
        assert result.admitted == ()
        assert waiting(result, "j").message == (
            "no ready node passes the node selector, taints and GPU mode of its worker pod"
        )
    else:
        assert nodes_of(result, "j") == [where]


# -- order --------------------------------------------------------------------------------------


def test_higher_priority_goes_first_even_when_submitted_later() -> None:
    snap = snapshot(
        [node("a", gpus=1)],
        [
            job("early-low", pod(gpu=100), priority=0, submitted_at=1),
            job("late-high", pod(gpu=100), priority=5, submitted_at=9),
        ],
    )
    result = decide(snap)
    assert admitted_ids(result) == ["late-high"]
    assert waiting(result, "early-low").reason is PendingReason.INSUFFICIENT_CAPACITY


def test_within_a_priority_earlier_submissions_go_first() -> None:
    snap = snapshot(
        [node("a", gpus=2)],
        [job(f"j{k}", pod(gpu=100), submitted_at=10 - k) for k in range(4)],
    )
    assert admitted_ids(decide(snap)) == ["j3", "j2"]


def test_two_equal_weight_tenants_with_long_queues_take_turns() -> None:
    pending = [
        job(f"{t}{k}", pod(gpu=100), tenant=t, submitted_at=k) for t in "ab" for k in range(10)
    ]
    result = decide(snapshot([node("n", gpus=6)], pending))
    assert [a.tenant for a in result.admitted] == ["a", "b", "a", "b", "a", "b"]


def test_fair_share_follows_weight() -> None:
    pending = [
        job(f"{t}{k}", pod(gpu=100), tenant=t, submitted_at=k) for t in "ab" for k in range(10)
    ]
    snap = snapshot(
        [node("n", gpus=6)], pending, tenants=[tenant("a", weight=2.0), tenant("b", weight=1.0)]
    )
    tenants = [a.tenant for a in decide(snap).admitted]
    assert (tenants.count("a"), tenants.count("b")) == (4, 2)


def test_a_tenant_already_holding_more_waits_behind_one_holding_less() -> None:
    snap = snapshot(
        [node("n", gpus=2, cpu=64)],
        [
            job("rich", pod(gpu=100), tenant="rich", submitted_at=0),
            job("poor", pod(gpu=100), tenant="poor", submitted_at=5),
        ],
        tenants=[tenant("rich", usage=TenantUsage(cpu_millis=32_000)), tenant("poor")],
    )
    assert admitted_ids(decide(snap))[0] == "poor"


def test_backfill_lets_a_later_small_job_past_a_blocked_big_one() -> None:
    snap = snapshot(
        [node("a", gpus=4)],
        [job("big", pod(gpu=800), submitted_at=0), job("small", pod(gpu=100), submitted_at=1)],
    )
    result = decide(snap)
    assert admitted_ids(result) == ["small"]


def test_a_job_waiting_for_its_quota_holds_back_lower_priorities_of_its_tenant() -> None:
    # The big job needs the whole quota while small ones hold part of it: smaller jobs of lower
    # priority would keep taking what it waits for, so they wait behind it.
    snap = snapshot(
        [node("n", cpu=64)],
        [
            job("big", pod(cpu=20), priority=200, submitted_at=5),
            job("small", pod(cpu=1), priority=50, submitted_at=0),
        ],
        tenants=[tenant("t", cpu=20, usage=TenantUsage(cpu_millis=5000, running_jobs=5))],
    )
    result = decide(snap)
    assert admitted_ids(result) == []
    assert [w.job_id for w in result.waiting] == ["big"]
    assert waiting(result, "big").reason is PendingReason.WAITING_FOR_QUOTA


def test_jobs_of_equal_priority_pass_one_waiting_for_quota_until_it_starves() -> None:
    pending = [
        job("big", pod(cpu=20), submitted_at=0, queued_since=0),
        job("small", pod(cpu=1), submitted_at=5),
    ]
    tenants = [tenant("t", cpu=20, usage=TenantUsage(cpu_millis=5000, running_jobs=5))]
    fresh = snapshot([node("n", cpu=64)], pending, tenants=tenants, now=10)
    assert admitted_ids(decide(fresh)) == ["small"]
    starving = snapshot([node("n", cpu=64)], pending, tenants=tenants, now=10, starvation_seconds=5)
    assert admitted_ids(decide(starving)) == []


def test_other_tenants_are_not_held_back_by_one_tenants_quota() -> None:
    snap = snapshot(
        [node("n", cpu=64)],
        [
            job("a-big", pod(cpu=20), tenant="a", priority=200),
            job("a-small", pod(cpu=1), tenant="a", priority=50),
            job("b-small", pod(cpu=1), tenant="b", priority=50),
        ],
        tenants=[tenant("a", cpu=20, usage=TenantUsage(cpu_millis=5000)), tenant("b", cpu=20)],
    )
    assert admitted_ids(decide(snap)) == ["b-small"]


def test_the_backfill_window_bounds_the_blocked_jobs_a_cycle_considers() -> None:
    # Three tenants with ten jobs each that cannot fit, and one that fits at the back of "a".
    pending = [
        job(f"{t}{k}", pod(gpu=800), tenant=t, submitted_at=k) for t in "abc" for k in range(10)
    ]
    pending.append(job("a-fits", pod(gpu=100), tenant="a", submitted_at=99))
    full = snapshot([node("n", gpus=4)], pending)
    assert admitted_ids(decide(full)) == ["a-fits"]
    narrow = replace(full, backfill=4)
    result = decide(narrow)
    assert admitted_ids(result) == []
    # Every tenant's head, then four more: the window is shared in the cycle's order.
    assert len(result.waiting) == 3 + 4
    assert {"a0", "b0", "c0"} <= {w.job_id for w in result.waiting}


def test_admitted_jobs_do_not_use_up_the_backfill_window() -> None:
    pending = [job(f"j{k}", pod(gpu=100), submitted_at=k) for k in range(6)]
    result = decide(replace(snapshot([node("n", gpus=4)], pending), backfill=0))
    assert admitted_ids(result) == ["j0", "j1", "j2", "j3"]
    assert [w.job_id for w in result.waiting] == ["j4"]


def test_waiting_jobs_report_their_positions() -> None:
    snap = snapshot(
        [node("a", gpus=1)],
        [
            job("a1", pod(gpu=100), tenant="a", submitted_at=0),
            job("a2", pod(gpu=100), tenant="a", submitted_at=1),
            job("b1", pod(gpu=100), tenant="b", submitted_at=2),
            job("a3", pod(gpu=100), tenant="a", submitted_at=3),
            job("b2", pod(gpu=100), tenant="b", submitted_at=4, not_before=60),
        ],
        now=10,
        tenants=[tenant("a", usage=TenantUsage(gpu_shares=100))],
    )
    places = [
        (q.job_id, q.tenant_position, q.position, q.reason)
        for q in queue_places(snap, AdmissionQueue.of(snap.pending))
    ]
    # Tenant a holds a GPU, so b's head goes first; b2 is in backoff, so it comes last.
    assert places == [
        ("b1", 1, 1, None),
        ("a1", 1, 2, None),
        ("a2", 2, 3, None),
        ("a3", 3, 4, None),
        ("b2", 2, 5, PendingReason.BACKOFF_AFTER_EVICTION),
    ]


# -- quota --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quota", "usage", "message"),
    [
        pytest.param(
            {"gpu": 100},
            TenantUsage(),
            "needs 2 GPUs; tenant t has 1 GPU of its 1 GPU quota left",
            id="gpu",
        ),
        pytest.param(
            {"cpu": 6},
            TenantUsage(cpu_millis=2000),
            "needs 8 CPUs; tenant t has 4 CPUs of its 6 CPUs quota left",
            id="cpu",
        ),
        pytest.param(
            {"mem_gib": 16},
            TenantUsage(),
            "needs 32 GiB; tenant t has 16 GiB of its 16 GiB quota left",
            id="memory",
        ),
        pytest.param(
            {"max_running": 3},
            TenantUsage(running_jobs=3),
            "tenant t already runs 3 of at most 3 jobs",
            id="running jobs",
        ),
    ],
)
def test_quota_keeps_a_job_waiting(quota: dict[str, int], usage: TenantUsage, message: str) -> None:
    snap = snapshot(
        [node("a")],
        [
            job(
                "j",
                pod("worker-0", cpu=4, mem_gib=16, gpu=100),
                pod("worker-1", cpu=4, mem_gib=16, gpu=100),
            )
        ],
        tenants=[tenant("t", usage=usage, **quota)],
    )
    result = decide(snap)
    assert result.admitted == ()
    assert waiting(result, "j").reason is PendingReason.WAITING_FOR_QUOTA
    assert waiting(result, "j").message == message


def test_quota_counts_jobs_admitted_earlier_in_the_same_cycle() -> None:
    snap = snapshot(
        [node("a")],
        [job(f"j{k}", pod(gpu=100), submitted_at=k) for k in range(3)],
        tenants=[tenant("t", gpu=200, max_running=10)],
    )
    result = decide(snap)
    assert admitted_ids(result) == ["j0", "j1"]
    assert waiting(result, "j2").reason is PendingReason.WAITING_FOR_QUOTA


def test_max_running_jobs_counts_jobs_admitted_in_the_cycle() -> None:
    snap = snapshot(
        [node("a")],
        [job(f"j{k}", pod(cpu=1), submitted_at=k) for k in range(4)],
        tenants=[tenant("t", max_running=3, usage=TenantUsage(running_jobs=1))],
    )
    result = decide(snap)
    assert admitted_ids(result) == ["j0", "j1"]
    assert {w.reason for w in result.waiting} == {PendingReason.WAITING_FOR_QUOTA}


def test_a_job_of_an_unknown_tenant_waits_for_quota() -> None:
    snap = replace(snapshot([node("a")], [job("j", tenant="ghost")]), tenants={})
    result = decide(snap)
    assert waiting(result, "j").reason is PendingReason.WAITING_FOR_QUOTA


# -- backoff and starvation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("not_before", "admitted"),
    [
        pytest.param(None, True, id="no backoff"),
        pytest.param(99.0, True, id="backoff over"),
        pytest.param(100.0, True, id="backoff ends now"),
        pytest.param(101.0, False, id="still in backoff"),
    ],
)
def test_an_evicted_job_waits_out_its_backoff(not_before: float | None, admitted: bool) -> None:
    snap = snapshot([node("a")], [job("j", not_before=not_before)], now=100.0)
    result = decide(snap)
    assert bool(result.admitted) is admitted
    if not admitted:
        assert not result.waiting  # not considered while in backoff
        (place,) = queue_places(snap, AdmissionQueue.of(snap.pending))
        assert place.reason is PendingReason.BACKOFF_AFTER_EVICTION
        assert place.message == "evicted; back in the queue at 1970-01-01T00:01:41Z"


SMALL_JOB_CYCLES = 4  # how long each small job runs once admitted
BIG_ARRIVES = SMALL_JOB_CYCLES + 1  # by then the small jobs hold GPUs on both nodes


def run_cycles(starvation_seconds: float, cycles: int = 40) -> tuple[int | None, set[str]]:
    """A big job behind a steady stream of small ones, one admission cycle per second.

    Each second a small job of two spread one-GPU pods arrives and runs for SMALL_JOB_CYCLES
    cycles once admitted, so both nodes always hold some small pods and the big job (eight GPUs
    on one node) never finds a free node by chance. Returns how many cycles after it arrived the
    big job was admitted, and the "job:reason" pairs seen while jobs waited.
    """
    nodes = [node("n1", gpus=8), node("n2", gpus=8)]
    pending: list[PendingJob] = []
    running: list[tuple[int, PendingJob, list[Holding]]] = []  # (finishes at, job, holdings)
    reasons: set[str] = set()
    for now in range(cycles):
        running = [entry for entry in running if entry[0] > now]
        if now == BIG_ARRIVES:
            pending.append(job("big", pod(gpu=800), tenant="big", submitted_at=float(now)))
        pending.append(
            job(
                f"small-{now}",
                *gang("small", 2, role="ps", gpu=100, spread=True),
                tenant="small",
                submitted_at=float(now),
            )
        )
        small = [p for _, j, _ in running if j.tenant == "small" for p in j.pods]
        snap = snapshot(
            nodes,
            pending,
            tenants=[
                tenant("big"),
                tenant(
                    "small",
                    usage=TenantUsage(
                        cpu_millis=sum(p.cpu_millis for p in small),
                        memory_bytes=sum(p.memory_bytes for p in small),
                        gpu_shares=sum(p.gpu_shares for p in small),
                        running_jobs=sum(1 for _, j, _ in running if j.tenant == "small"),
                    ),
                ),
            ],
            holdings=[h for _, _, held in running for h in held],
            now=float(now),
            starvation_seconds=starvation_seconds,
        )
        result = decide(snap)
        reasons |= {f"{w.job_id.split('-')[0]}:{w.reason}" for w in result.waiting}
        held_by = holdings_of(result, snap)
        running += [(now + SMALL_JOB_CYCLES, j, held_by[j.id]) for j in pending if j.id in held_by]
        pending = [j for j in pending if j.id not in held_by]
        if "big" in held_by:
            return now - BIG_ARRIVES, reasons
    return None, reasons


def test_a_big_job_starves_behind_small_ones_without_the_guard() -> None:
    waited, reasons = run_cycles(starvation_seconds=math.inf)
    assert waited is None
    assert "big:Fragmented" in reasons


def test_a_starving_big_job_gets_its_nodes_reserved_and_is_admitted() -> None:
    starvation_seconds = 5.0
    waited, reasons = run_cycles(starvation_seconds=starvation_seconds)
    assert waited is not None
    # Starving from the first cycle past the threshold; the reserved node drains as the small
    # jobs on it finish, within one small job's run time.
    assert starvation_seconds < waited <= starvation_seconds + SMALL_JOB_CYCLES + 1
    assert "big:Fragmented" in reasons


def test_a_reservation_holds_the_starving_jobs_nodes_against_later_jobs() -> None:
    snap = snapshot(
        [node("a", gpus=4), node("b", gpus=4)],
        [
            job("old", pod(gpu=400), tenant="x", submitted_at=0.0),
            job("new", pod(gpu=100), tenant="y", submitted_at=90.0),
        ],
        holdings=[holding("a", gpu=[(0, 100)]), holding("b", gpu=[(0, 100), (1, 100)])],
        now=100.0,
        starvation_seconds=60.0,
    )
    result = decide(snap)
    # "old" cannot fit now; it is starving, so node a (the emptier) is held for it.
    assert result.reserved_nodes == ("a",)
    assert result.reserved_for == "old"
    assert waiting(result, "old").message.endswith("; held for it: node a")
    assert admitted_ids(result) == ["new"]
    assert nodes_of(result, "new") == ["b"]


def test_a_job_that_fits_only_on_reserved_nodes_waits_as_reserved() -> None:
    snap = snapshot(
        [node("a", gpus=4), node("b", gpus=4)],
        [
            job("old", pod(gpu=400), tenant="x", submitted_at=0.0),
            job("new", pod(gpu=300), tenant="y", submitted_at=90.0),
        ],
        holdings=[holding("a", gpu=[(0, 100)]), holding("b", gpu=[(0, 100), (1, 100)])],
        now=100.0,
        starvation_seconds=60.0,
    )
    result = decide(snap)
    assert result.admitted == ()
    assert waiting(result, "new").reason is PendingReason.RESERVED
    # Another tenant's job is not named to this one.
    assert waiting(result, "new").message == (
        "it would fit, but a job of another tenant has waited past the starvation threshold "
        "and holds node a"
    )


def test_a_reservation_names_the_starving_job_to_its_own_tenant() -> None:
    snap = snapshot(
        [node("a", gpus=4), node("b", gpus=4)],
        [
            job("old", pod(gpu=400), tenant="x", submitted_at=0.0),
            job("new", pod(gpu=300), tenant="x", submitted_at=90.0),
        ],
        holdings=[holding("a", gpu=[(0, 100)]), holding("b", gpu=[(0, 100), (1, 100)])],
        now=100.0,
        starvation_seconds=60.0,
    )
    result = decide(snap)
    assert waiting(result, "new").message == (
        "it would fit, but job old has waited past the starvation threshold and holds node a"
    )


def test_no_reservation_for_a_job_that_does_not_fit_an_empty_cluster() -> None:
    snap = snapshot(
        [node("a", gpus=4)],
        [job("huge", pod(gpu=800), submitted_at=0.0), job("small", pod(gpu=100), submitted_at=1)],
        now=100.0,
        starvation_seconds=10.0,
    )
    result = decide(snap)
    assert result.reserved_nodes == ()
    assert admitted_ids(result) == ["small"]


def test_a_starving_job_that_fits_is_simply_admitted() -> None:
    snap = snapshot([node("a")], [job("j", submitted_at=0.0)], now=100.0, starvation_seconds=1.0)
    result = decide(snap)
    assert admitted_ids(result) == ["j"]
    assert result.reserved_nodes == ()


def test_starvation_counts_from_queued_since_when_given() -> None:
    pending = [
        job("old", pod(gpu=400), submitted_at=0.0, queued_since=95.0),
        job("new", pod(gpu=100), submitted_at=1.0),
    ]
    snap = snapshot(
        [node("a", gpus=4)],
        pending,
        holdings=[holding("a", gpu=[(0, 100)])],
        now=100.0,
        starvation_seconds=60.0,
    )
    assert decide(snap).reserved_nodes == ()


# -- determinism --------------------------------------------------------------------------------


def test_the_order_of_nodes_and_jobs_in_the_snapshot_does_not_matter() -> None:
    nodes = [node(f"n{k}", gpus=2, labels={"zone": "ab"[k % 2]}) for k in range(6)]
    pending = [
        job(
            f"j{k}", *gang("j", 1 + k % 3, gpu=50 * (1 + k % 2)), tenant="ab"[k % 2], submitted_at=k
        )
        for k in range(12)
    ]
    forward = decide(snapshot(nodes, pending))
    backward = decide(snapshot(nodes[::-1], pending[::-1]))
    assert forward == backward


# -- never_fits ---------------------------------------------------------------------------------

QUOTA = Quota(
    cpu_millis=64_000,
    memory_bytes=256 * GIB,
    gpu_shares=1600,
    max_running_jobs=5,
    max_queued_jobs=1000,
)
CLUSTER = (
    node("big", gpus=8, cpu=64, mem_gib=512, mode=GpuMode.DEVICE_PLUGIN),
    node("small", gpus=4, cpu=32, mem_gib=128, mode=GpuMode.DEVICE_PLUGIN, labels={"zone": "z"}),
)


@pytest.mark.parametrize(
    ("pods", "nodes", "quota", "problems"),
    [
        pytest.param([pod(cpu=8, gpu=100)], CLUSTER, QUOTA, [], id="fits one day"),
        pytest.param(
            [pod(f"worker-{k}", cpu=24) for k in range(4)],
            CLUSTER,
            QUOTA,
            [("cpu", "the job needs 96 CPUs but the tenant's quota is 64 CPUs")],
            id="over the cpu quota",
        ),
        pytest.param(
            [pod(gpu=800), pod("worker-1", gpu=800), pod("worker-2", gpu=100)],
            CLUSTER,
            QUOTA,
            [("gpu", "the job needs 17 GPUs but the tenant's quota is 16 GPUs")],
            id="over the gpu quota",
        ),
        pytest.param(
            [pod(cpu=1)],
            CLUSTER,
            replace(QUOTA, max_running_jobs=0),
            [("jobs", "the tenant's quota allows no running jobs")],
            id="no running jobs allowed",
        ),
        pytest.param(
            [pod(gpu=1600)],
            CLUSTER,
            replace(QUOTA, gpu_shares=10_000),
            [
                (
                    "gpu",
                    "the worker pod needs 16 GPUs on one node; the largest node it may use has "
                    "8 GPUs",
                )
            ],
            id="more gpus than the largest node",
        ),
        pytest.param(
            [pod(cpu=48, selector={"zone": "z"})],
            CLUSTER,
            QUOTA,
            [
                (
                    "cpu",
                    "the worker pod needs 48 CPUs on one node; the largest node it may use has "
                    "32 CPUs",
                )
            ],
            id="more cpu than the largest node its selector allows",
        ),
        pytest.param(
            [pod(mem_gib=200, selector={"zone": "z"})],
            CLUSTER,
            QUOTA,
            [
                (
                    "memory",
                    "the worker pod needs 200 GiB on one node; the largest node it may use has "
                    "128 GiB",
                )
            ],
            id="more memory than the largest node",
        ),
        pytest.param(
            [pod(gpu=50)],
            CLUSTER,
            QUOTA,
            [
                (
                    "gpu",
                    "the worker pod asks for 0.5 GPUs, a fraction of a GPU, but no node shares "
                    "GPUs",
                )
            ],
            id="a fraction without shared nodes",
        ),
        pytest.param(
            [pod(gpu=150)],
            CLUSTER,
            QUOTA,
            [
                (
                    "gpu",
                    "the worker pod asks for 1.5 GPUs; a request is whole GPUs or a fraction "
                    "of one",
                )
            ],
            id="neither whole nor a fraction",
        ),
        pytest.param(
            [pod(selector={"zone": "nowhere"})],
            CLUSTER,
            QUOTA,
            [("selector", "no node passes the node selector and tolerations of the worker pod")],
            id="no node matches",
        ),
        pytest.param(
            [pod(cpu=1)],
            (node("down", gpus=0, ready=False),),
            QUOTA,
            [],
            id="a node that is down may come back",
        ),
        pytest.param(
            [pod(gpu=400)] * 4,
            CLUSTER,
            QUOTA,
            [
                (
                    "gpu",
                    "the job's pods need 16 GPUs in all, and every node together offers 12 GPUs",
                )
            ],
            id="a gang bigger than the whole cluster, though each pod fits a node",
        ),
        pytest.param(
            [pod(cpu=30)] * 4,
            CLUSTER,
            Quota(
                cpu_millis=200_000,
                memory_bytes=256 * GIB,
                gpu_shares=0,
                max_running_jobs=5,
                max_queued_jobs=1000,
            ),
            [
                (
                    "cpu",
                    "the job's pods need 120 CPUs in all, and every node together offers 96 CPUs",
                )
            ],
            id="more cpu in all than every node together",
        ),
    ],
)
def test_never_fits_names_what_keeps_a_job_out_forever(
    pods: list[PodRequest],
    nodes: tuple[Node, ...],
    quota: Quota,
    problems: list[tuple[str, str]],
) -> None:
    assert never_fits(pods, nodes, quota) == problems


def test_never_fits_ignores_what_is_free_now() -> None:
    # The cluster is full right now, but the job fits an empty one.
    assert never_fits([pod(gpu=800)], [node("a", gpus=8)], QUOTA) == []


# -- free capacity ------------------------------------------------------------------------------


def test_free_capacity_subtracts_holdings_per_node_and_device() -> None:
    free = free_capacity(
        [node("b", gpus=2, cpu=8, mem_gib=16), node("a", gpus=0, cpu=4, mem_gib=8)],
        [holding("b", cpu=2, mem_gib=4, gpu=[(1, 25)]), holding("gone", cpu=1)],
    )
    assert [(f.name, f.cpu_millis, f.memory_bytes, f.gpu) for f in free] == [
        ("a", 4000, 8 * GIB, ()),
        ("b", 6000, 12 * GIB, (100, 75)),
    ]
