"""Why a job waits, or can never run, in words a person can act on.

`admission.plan()` asks here for the reason and message of every job it does not admit:
`over_quota` when the tenant's quota is short, `short_of_sums` when the cluster's free sums are,
and `gang_reason` when the sums fit but no placement does. `never_fits` is asked at submission,
for problems that keep a job out forever.

Invariants kept here:

- Pure and deterministic: a message depends only on its arguments, never on the clock, so the
  same state gives the same words from one cycle to the next and the shell need not rewrite them.
- Every check reads the state it is given and changes nothing (`gang_reason` only searches).
- `never_fits` uses only allocatable and quota, never what is free now, and ignores readiness (a
  node that is down may come back): a job it passes could fit one day.
- Amounts are shown in human units (GPUs, CPUs, KiB..TiB), with at most two decimals.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from operator import attrgetter

from gateway.domain.resources import Extended, Resources, format_extended, merged
from gateway.domain.scheduling.best_fit import Need
from gateway.domain.scheduling.cohorts import CohortShortfall, CohortTerms
from gateway.domain.scheduling.nodes import (
    GPU_FRACTION,
    GPU_INVALID,
    GPU_NONE,
    GPU_WHOLE,
    SHARES_PER_DEVICE,
    GpuMode,
    Node,
    PodRequest,
    gpu_kind,
    names_of,
    node_admits,
)
from gateway.domain.scheduling.placement import ClusterState
from gateway.domain.scheduling.queueing import PendingReason
from gateway.domain.scheduling.quota import RESOURCE_NAMES, Quota, Shortfall, TenantUsage

_CPU = attrgetter("cpu_millis")
_MEMORY = attrgetter("memory_bytes")
_GPU = attrgetter("gpu_shares")
_EXTENDED = attrgetter("extended")


def over_quota(tenant: str, short: Shortfall) -> str:
    """The words of a job the tenant's quota keeps out now (``Quota.short_of``)."""
    fmt = _format(short.resource)
    return (
        f"needs {fmt(short.need)}; tenant {tenant} has {fmt(short.left)} of its "
        f"{fmt(short.limit)} quota left"
    )


def over_cohort_quota(tenant: str, cohort: str, short: CohortShortfall) -> str:
    """The words of a cohort member's job that its limits or its cohort keep out now."""
    fmt = _format(short.resource)
    need = f"needs {fmt(short.need)}"
    if short.limit is not None:
        return (
            f"{need}; tenant {tenant} holds {fmt(short.held)} and may hold at most "
            f"{fmt(short.nominal + short.limit)} ({fmt(short.nominal)} nominal and "
            f"{fmt(short.limit)} borrowed)"
        )
    idle = fmt(short.idle or 0)
    if short.lent_out:
        return (
            f"{need}; tenant {tenant}'s nominal quota is lent to other tenants of cohort "
            f"{cohort} ({idle} idle to lend)"
        )
    return f"{need}; cohort {cohort} has {idle} idle to lend"


def never_borrows(tenant: str, short: Shortfall) -> str:
    """The words of a job of a non-preemptible class that its tenant's nominal quota keeps out:
    borrowed quota is taken back by preemption, so such a job never borrows."""
    return (
        f"{over_quota(tenant, short)}; its priority class is not preemptible, so it runs "
        "within the tenant's nominal quota only"
    )


def waits_for_reclaim(victims: int, from_time: float, tenant: str) -> str:
    """The words of a job that running gangs would make room for once they have run the
    minimum runtime (``Snapshot.min_runtime_seconds``): how many, and from when. The gangs are
    not named: they may be other tenants'."""
    at = datetime.fromtimestamp(from_time, tz=UTC)
    gangs = "1 running gang" if victims == 1 else f"{victims} running gangs"
    return (
        f"{gangs} will be preempted to make room for it (for tenant {tenant}) once they have "
        f"run the minimum runtime, from {at:%Y-%m-%dT%H:%M:%SZ}"
    )


def at_running_cap(tenant: str, usage: TenantUsage, quota: Quota) -> str:
    return (
        f"tenant {tenant} already runs {usage.running_jobs} of at most "
        f"{quota.max_running_jobs} jobs"
    )


def short_of_sums(cluster: ClusterState, totals: tuple[int, int, int]) -> str:
    for need, free, fmt in (
        (totals[2], cluster.capacity.free_gpu, _gpus),
        (totals[0], cluster.capacity.free_cpu, _cpus),
        (totals[1], cluster.capacity.free_mem, _memory),
    ):
        if need > free:
            return f"needs {fmt(need)} in total; {fmt(free)} free in the cluster"
    return ""


def gang_reason(
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
    ext_by_class: dict[int, Extended] = {}
    for need_ in needs:
        if need_[6]:
            ext_by_class[need_[0]] = merged(ext_by_class.get(need_[0], ()), need_[6])
    for cls in sorted(by_class):
        free_ = cluster.class_free(cls)
        role = first_role[cls]
        if free_.nodes == 0:
            what = "GPU mode and extended resources" if cls in ext_by_class else "GPU mode"
            return (
                PendingReason.INSUFFICIENT_CAPACITY,
                f"no ready node passes the node selector, taints and {what} of its {role} pod",
            )
        sums = by_class[cls]
        asked = dict(ext_by_class.get(cls, ()))
        for need, free, fmt in (
            (sums[0], free_.gpu_sum, _gpus),
            (sums[1], free_.cpu_sum, _cpus),
            (sums[2], free_.memory_sum, _memory),
            *((asked[n], total, _format(n)) for n, total, _ in free_.extended if n in asked),
        ):
            if need > free:
                return (
                    PendingReason.INSUFFICIENT_CAPACITY,
                    f"needs {fmt(need)} on the nodes its {role} pods may use; "
                    f"{fmt(free)} free there",
                )
    for need_, role in zip(needs, roles, strict=True):
        free_ = cluster.class_free(need_[0])
        _, kind, cpu, mem, gpu, _, ext = need_
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
        most = {name: largest for name, _, largest in free_.extended}
        for name, amount in ext:
            if amount > most.get(name, 0):
                fmt = _format(name)
                return (
                    PendingReason.FRAGMENTED,
                    f"a {role} pod needs {fmt(amount)} on one node; the most free on any node "
                    f"is {fmt(most.get(name, 0))}",
                )
    for need_, role in zip(needs, roles, strict=True):
        if cluster.find(need_, None, honor=False) is None:
            _, _, cpu, mem, gpu, _, ext = need_
            wanted = [_gpus(gpu)] if gpu else []
            wanted += [_cpus(cpu), _memory(mem)]
            wanted += [_format(name)(amount) for name, amount in ext]
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
    pods: Sequence[PodRequest],
    nodes: Sequence[Node],
    quota: Quota,
    cohort: CohortTerms | None = None,
) -> list[tuple[str, str]]:
    """Problems that keep a job out forever, as (resource, message); empty if it could fit one day.

    Uses only allocatable and quota, never what is free now. Readiness is ignored: a node that is
    down may come back.
    """
    by_quota = never_fits_quota(quota, demand_of(pods), cohort)
    return by_quota + never_fits_nodes(pods, nodes, named={r for r, _ in by_quota})


def demand_of(pods: Sequence[PodRequest]) -> Resources:
    """What a gang asks for in all."""
    extended: Extended = ()
    for amounts in map(_EXTENDED, pods):
        extended = merged(extended, amounts)
    return Resources(
        cpu_millis=sum(map(_CPU, pods)),
        memory_bytes=sum(map(_MEMORY, pods)),
        gpu_shares=sum(map(_GPU, pods)),
        extended=extended,
    )


def never_fits_quota(
    quota: Quota, demand: Resources, cohort: CohortTerms | None = None
) -> list[tuple[str, str]]:
    """What of the tenant's quota (nominal, with its ``cohort`` terms where it has any) keeps a
    job with ``demand`` out forever, as (resource, message)."""
    borrowing = None if cohort is None else cohort.borrowing_limit
    problems = [
        (
            RESOURCE_NAMES.get(resource, resource),
            f"the job needs {_format(resource)(_demanded(demand, resource))} but "
            + _most(quota, resource, cohort),
        )
        for resource in quota.exceeded_by(demand, borrowing)
    ]
    if quota.runs_no_jobs:
        problems.append(("jobs", "the tenant's quota allows no running jobs"))
    return problems


def _most(quota: Quota, resource: str, cohort: CohortTerms | None) -> str:
    """The words of the most of ``resource`` the tenant could ever hold."""
    fmt = _format(resource)
    if resource not in RESOURCE_NAMES:  # an extended resource: never borrowed
        return f"the tenant's quota is {fmt(quota.limit_of(resource) or 0)}"
    nominal = getattr(quota, resource)
    if cohort is None:
        return f"the tenant's quota is {fmt(nominal)}"
    limit = cohort.borrowing_limit.of(resource) or 0
    return (
        f"the tenant may hold at most {fmt(nominal + limit)} ({fmt(nominal)} nominal and "
        f"{fmt(limit)} borrowed from cohort {cohort.cohort})"
    )


def never_fits_nodes(
    pods: Sequence[PodRequest], nodes: Sequence[Node], *, named: Collection[str] = ()
) -> list[tuple[str, str]]:
    """What of the cluster's nodes keeps a gang out forever, as (resource, message); the whole
    gang is weighed against the whole cluster only for resources not ``named`` already."""
    problems: list[tuple[str, str]] = []
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
            pod.extended,
            pod.affinity,
        )
        if asks == previous:
            continue
        previous = asks
        for problem in _pod_never_fits(pod, nodes, any_shared):
            if problem not in problems:
                problems.append(problem)
    # The whole gang against the whole cluster, for a resource no finer problem named yet.
    named = {*named, *(resource for resource, _ in problems)}
    return problems + _bigger_than_cluster(pods, nodes, named)


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
    selector, tolerations, affinity = pod.node_selector, pod.tolerations, pod.affinity
    names = names_of(pod.extended)
    eligible = [
        node
        for node in nodes
        if node_admits(
            node,
            selector,
            tolerations,
            kind,
            ignore_ready=True,
            extended=names,
            affinity=affinity,
        )
    ]
    if not eligible and names:
        usable = [
            node
            for node in nodes
            if node_admits(node, selector, tolerations, kind, ignore_ready=True, affinity=affinity)
        ]
        for name in names:
            if not any(node.extended.get(name, 0) > 0 for node in usable):
                return [(name, f"no node the {role} pod may use offers {name}")]
        return [(names[0], f"no node the {role} pod may use offers {', '.join(names)} together")]
    if not eligible:
        if kind != GPU_NONE and any(
            node_admits(node, selector, tolerations, GPU_NONE, ignore_ready=True, affinity=affinity)
            for node in nodes
        ):
            sort = "shared GPUs" if kind == GPU_FRACTION else "GPUs"
            return [("gpu", f"no node the {role} pod may use offers {sort}")]
        what = "node selector, node affinity" if affinity else "node selector"
        return [("selector", f"no node passes the {what} and tolerations of the {role} pod")]
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
    for name, need in pod.extended:
        most = max(node.extended.get(name, 0) for node in eligible)
        if need > most:
            problems.append(
                (
                    name,
                    f"the {role} pod needs {_format(name)(need)} on one node; the largest node it "
                    f"may use has {_format(name)(most)}",
                )
            )
    return problems


# -- human units ---------------------------------------------------------------------------------


def listing(nodes: Sequence[str], most: int = 5) -> str:
    named = ", ".join(nodes[:most])
    more = f" and {len(nodes) - most} more" if len(nodes) > most else ""
    return f"node{'s' if len(nodes) > 1 else ''} {named}{more}"


def _number(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text if text != "-0" else "0"


def _count(devices: int) -> str:
    return f"{devices} GPU" if devices == 1 else f"{devices} GPUs"


def _bigger_than_cluster(
    pods: Sequence[PodRequest], nodes: Sequence[Node], reported: set[str]
) -> list[tuple[str, str]]:
    """A gang runs whole or not at all: one that needs more in all than every node together
    offers can never run, though each of its pods would fit some node on its own."""
    problems: list[tuple[str, str]] = []
    for resource, need, offered, fmt in (
        (
            "gpu",
            sum(map(_GPU, pods)),
            sum(node.gpu_devices for node in nodes) * SHARES_PER_DEVICE,
            _gpus,
        ),
        ("cpu", sum(map(_CPU, pods)), sum(node.cpu_millis for node in nodes), _cpus),
        ("memory", sum(map(_MEMORY, pods)), sum(node.memory_bytes for node in nodes), _memory),
        *(
            (name, need, sum(node.extended.get(name, 0) for node in nodes), _format(name))
            for name, need in demand_of(pods).extended
        ),
    ):
        if need > offered and resource not in reported:
            problems.append(
                (
                    resource,
                    f"the job's pods need {fmt(need)} in all, and every node together offers "
                    f"{fmt(offered)}",
                )
            )
    return problems


def _gpus(shares: int) -> str:
    return f"{_number(shares / SHARES_PER_DEVICE)} GPU" + ("" if shares == 100 else "s")


def _cpus(millis: int) -> str:
    return f"{_number(millis / 1000)} CPU" + ("" if millis == 1000 else "s")


def _memory(size: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(size) >= scale:
            return f"{_number(size / scale)} {unit}"
    return f"{size} bytes"


_FORMATS = {"gpu_shares": _gpus, "cpu_millis": _cpus, "memory_bytes": _memory}


def _format(resource: str) -> Callable[[int], str]:
    """How an amount of ``resource`` reads: one of ``RESOURCES``, or an extended resource's
    name (``2 rdma/hca``, ``1Gi hugepages-2Mi``)."""
    fmt = _FORMATS.get(resource)
    if fmt is not None:
        return fmt

    def extended(amount: int) -> str:
        return f"{format_extended(resource, amount)} {resource}"

    return extended


def _demanded(demand: Resources, resource: str) -> int:
    if resource in _FORMATS:
        amount: int = getattr(demand, resource)
        return amount
    return dict(demand.extended).get(resource, 0)
