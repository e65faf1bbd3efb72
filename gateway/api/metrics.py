"""GET /metrics, in the Prometheus text format.

Names follow Kueue's where the meaning is the same, with the ``muster_`` prefix. Gauges and
counters about jobs and tenants are computed from the database at scrape time (counters count
job_events rows, which are append-only), so every replica reports the same truth; only the HTTP
request-duration histogram is this process's own. Resources are labelled ``cpu`` (cores),
``memory`` (bytes), ``gpu`` (devices, fractional) and ``gpu_shares`` (hundredths of a device).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from gateway.api.auth import require_admin
from gateway.api.context import ENGINE, INVENTORY, RUNTIME, SETTINGS
from gateway.api.observability import REQUEST_DURATION
from gateway.backends.kubernetes.informer import Informer, WatchCollector
from gateway.backends.kubernetes.inventory import KubernetesInventory
from gateway.backends.kubernetes.runtime import KubernetesRuntime
from gateway.db.metrics import MetricCounts, metric_counts
from gateway.domain.lifecycle.states import EventType
from gateway.domain.resources import GPU_SHARES_PER_DEVICE, Resources
from gateway.domain.scheduling.capacity import free_capacity
from gateway.domain.scheduling.nodes import Node
from gateway.domain.scheduling.queueing import PreemptionReason
from gateway.domain.webhooks import AttemptOutcome

IS_LEADER: web.AppKey[Callable[[], bool]] = web.AppKey("is_leader")
COLLECTORS: web.AppKey[tuple[Collector, ...]] = web.AppKey("collectors")

routes = web.RouteTableDef()

FINISHED = (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED)
WAIT_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


def _resources(cpu_millis: float, memory_bytes: float, gpu_shares: float) -> dict[str, float]:
    return {
        "cpu": cpu_millis / 1000,
        "memory": float(memory_bytes),
        "gpu": gpu_shares / GPU_SHARES_PER_DEVICE,
        "gpu_shares": float(gpu_shares),
    }


def _amounts(amounts: Resources) -> dict[str, float]:
    return _resources(amounts.cpu_millis, amounts.memory_bytes, amounts.gpu_shares)


class DatabaseCollector(Collector):
    """Renders figures already read from the database (collect() cannot await)."""

    def __init__(self, counts: MetricCounts, nodes: Iterable[Node], leader: bool) -> None:
        self.counts = counts
        self.nodes = tuple(nodes)
        self.leader = leader

    def collect(self) -> Iterator[Any]:
        yield from self._jobs()
        yield from self._admission_waits()
        yield from self._deliveries()
        yield from self._tenants()
        yield from self._cluster()
        leader = GaugeMetricFamily(
            "muster_leader", "1 on the replica that holds the admission leader lock, else 0."
        )
        leader.add_metric([], 1.0 if self.leader else 0.0)
        yield leader

    def _jobs(self) -> Iterator[Any]:
        tenants = [status.tenant.name for status in self.counts.tenants]
        pending = GaugeMetricFamily(
            "muster_pending_jobs",
            "Queued jobs by tenant and waiting reason.",
            labels=["tenant", "reason"],
        )
        for queued in self.counts.pending:
            pending.add_metric([queued.tenant, queued.reason], float(queued.jobs))
        yield pending
        admitted: dict[str, float] = dict.fromkeys(tenants, 0.0)
        finished: dict[tuple[str, str], float] = {
            (tenant, state.value): 0.0 for tenant in tenants for state in FINISHED
        }
        evicted: dict[tuple[str, str], float] = {}
        preempted: dict[tuple[str, str], float] = {
            (tenant, reason.value): 0.0 for tenant in tenants for reason in PreemptionReason
        }
        for count in self.counts.events:
            tenant, kind, n = count.tenant, count.type, float(count.events)
            if kind is EventType.ADMITTED:
                admitted[tenant] = admitted.get(tenant, 0.0) + n
            elif kind in FINISHED:
                key = (tenant, kind.value)
                finished[key] = finished.get(key, 0.0) + n
            elif kind is EventType.REQUEUED:
                key = (tenant, count.reason or "Unknown")
                evicted[key] = evicted.get(key, 0.0) + n
                if count.preemption:
                    key = (tenant, count.preemption)
                    preempted[key] = preempted.get(key, 0.0) + n
        family = CounterMetricFamily(
            "muster_admitted_jobs",
            "Jobs admitted, by tenant (every attempt counts).",
            labels=["tenant"],
        )
        for tenant, n in sorted(admitted.items()):
            family.add_metric([tenant], n)
        yield family
        family = CounterMetricFamily(
            "muster_finished_jobs",
            "Jobs that reached a terminal state, by tenant and state.",
            labels=["tenant", "state"],
        )
        for (tenant, state), n in sorted(finished.items()):
            family.add_metric([tenant, state], n)
        yield family
        family = CounterMetricFamily(
            "muster_evicted_jobs",
            "Admitted or running jobs sent back to the queue, by tenant and reason.",
            labels=["tenant", "reason"],
        )
        for (tenant, reason), n in sorted(evicted.items()):
            family.add_metric([tenant, reason], n)
        yield family
        family = CounterMetricFamily(
            "muster_preempted_jobs",
            "Gangs preempted, by the victim's tenant and why: Reclaim (its tenant borrowed quota "
            "a cohort member took back) or Priority (a job of its tenant with a higher "
            "priority).",
            labels=["tenant", "reason"],
        )
        for (tenant, reason), n in sorted(preempted.items()):
            family.add_metric([tenant, reason], n)
        yield family

    def _admission_waits(self) -> Iterator[Any]:
        buckets = [sum(1 for w in self.counts.waits if w <= bound) for bound in WAIT_BUCKETS]
        family = HistogramMetricFamily(
            "muster_admission_wait_time_seconds",
            "Time from submit (or requeue) to admission, over every admission.",
        )
        family.add_metric(
            [],
            [
                *zip((str(b) for b in WAIT_BUCKETS), map(float, buckets), strict=True),
                ("+Inf", float(len(self.counts.waits))),
            ],
            sum_value=sum(self.counts.waits),
        )
        yield family

    def _deliveries(self) -> Iterator[Any]:
        family = CounterMetricFamily(
            "muster_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, failed, gone, refused.",
            labels=["outcome"],
        )
        counts = dict.fromkeys((outcome.value for outcome in AttemptOutcome), 0.0)
        counts.update({c.outcome.value: float(c.attempts) for c in self.counts.deliveries})
        for outcome, n in sorted(counts.items()):
            family.add_metric([outcome], n)
        yield family

    def _tenants(self) -> Iterator[Any]:
        quota = GaugeMetricFamily(
            "muster_tenant_quota", "A tenant's quota by resource.", labels=["tenant", "resource"]
        )
        usage = GaugeMetricFamily(
            "muster_tenant_usage",
            "What a tenant's admitted and running jobs hold, by resource.",
            labels=["tenant", "resource"],
        )
        borrowed = GaugeMetricFamily(
            "muster_tenant_borrowed",
            "What a tenant holds above its nominal quota, on quota its cohort lends, by resource.",
            labels=["tenant", "resource"],
        )
        lent = GaugeMetricFamily(
            "muster_tenant_lent",
            "What of a tenant's nominal quota other members of its cohort hold, by resource.",
            labels=["tenant", "resource"],
        )
        for status in self.counts.tenants:
            name, limit, held = status.tenant.name, status.tenant.settings.quota, status.usage
            standing = status.standing
            for family, values in (
                (quota, _resources(limit.cpu_millis, limit.memory_bytes, limit.gpu_shares)),
                (usage, _resources(held.cpu_millis, held.memory_bytes, held.gpu_shares)),
                (borrowed, _amounts(standing.borrowed)),
                (lent, _amounts(standing.lent)),
            ):
                for resource, value in values.items():
                    family.add_metric([name, resource], value)
        yield quota
        yield usage
        yield borrowed
        yield lent

    def _cluster(self) -> Iterator[Any]:
        ready = [node for node in self.nodes if node.ready]
        free = free_capacity(ready, self.counts.holdings)
        capacity = _resources(
            sum(n.cpu_millis for n in ready),
            sum(n.memory_bytes for n in ready),
            sum(n.gpu_devices for n in ready) * GPU_SHARES_PER_DEVICE,
        )
        left = _resources(
            sum(max(f.cpu_millis, 0) for f in free),
            sum(max(f.memory_bytes, 0) for f in free),
            sum(max(sum(f.gpu), 0) for f in free),
        )
        for name, helptext, values in (
            ("muster_cluster_capacity", "What ready nodes offer Muster, by resource.", capacity),
            ("muster_cluster_free", "What is left on ready nodes, by resource.", left),
        ):
            family = GaugeMetricFamily(name, helptext, labels=["resource"])
            for resource, value in values.items():
                family.add_metric([resource], value)
            yield family


def _informers(inventory: object, runtime: object) -> list[Informer[Any]]:
    """The Kubernetes backend's informers (each once), for their figures; none elsewhere."""
    found: list[Informer[Any]] = []
    for part in (inventory, runtime):
        if isinstance(part, KubernetesInventory | KubernetesRuntime):
            found += [i for i in part.informers if all(i is not f for f in found)]
    return found


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Every tenant's figures: public when MUSTER_PUBLIC_METRICS is set, else for admins."""
    if not request.app[SETTINGS].auth.public_metrics:
        require_admin(request)
    counts = await metric_counts(request.app[ENGINE])
    nodes = await request.app[INVENTORY].nodes()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(counts, nodes, request.app[IS_LEADER]()))
    registry.register(request.app[REQUEST_DURATION])
    for collector in request.app[COLLECTORS]:  # the leader's admission cycle figures
        registry.register(collector)
    informers = _informers(request.app[INVENTORY], request.app[RUNTIME])
    if informers:
        registry.register(WatchCollector(informers))
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
