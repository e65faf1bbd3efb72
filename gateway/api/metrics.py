"""GET /metrics (Prometheus text format), GET /v1/tenants/{tenant}/usage (accounting) and
GET /v1/events (a Server-Sent Events stream of job events).

The stream's event ids are positions, ``<txid>-<id>`` (the writing transaction's id, then the
event's id; see ``gateway.db.usage``): a client that resumes with Last-Event-ID gets every event
after that position and none before it. A plain event id is accepted too (the ids of
GET /v1/jobs/{id}/events, and of this stream before positions).

Names follow Kueue's where the meaning is the same, with the ``muster_`` prefix. Gauges and
counters about jobs and tenants are computed from the database at scrape time (counters count
job_events rows, which are append-only), so every replica reports the same truth; only the HTTP
request-duration histogram is this process's own. Resources are labelled ``cpu`` (cores),
``memory`` (bytes), ``gpu`` (devices, fractional) and ``gpu_shares`` (hundredths of a device).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from gateway.api.auth import check_tenant, recheck, require_admin, require_role
from gateway.api.context import ENGINE, INVENTORY, SETTINGS
from gateway.api.observability import REQUEST_DURATION, REQUEST_ID_HEADER
from gateway.api.paging import tenant_filter
from gateway.api.views import event_view, json_response
from gateway.db.usage import (
    STREAM_START,
    Consumption,
    EventPosition,
    MetricCounts,
    event_position,
    events_after,
    metric_counts,
    position_of_event,
    tenant_usage,
)
from gateway.domain.access import Action
from gateway.domain.lifecycle.states import EventType
from gateway.domain.resources import GPU_SHARES_PER_DEVICE
from gateway.domain.scheduling.capacity import free_capacity
from gateway.domain.scheduling.nodes import Node
from gateway.errors import BadRequest
from gateway.logs import bind, log_context

IS_LEADER: web.AppKey[Callable[[], bool]] = web.AppKey("is_leader")
COLLECTORS: web.AppKey[tuple[Collector, ...]] = web.AppKey("collectors")

routes = web.RouteTableDef()

FINISHED = ("succeeded", "failed", "cancelled")
WAIT_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


def _resources(cpu_millis: float, memory_bytes: float, gpu_shares: float) -> dict[str, float]:
    return {
        "cpu": cpu_millis / 1000,
        "memory": float(memory_bytes),
        "gpu": gpu_shares / GPU_SHARES_PER_DEVICE,
        "gpu_shares": float(gpu_shares),
    }


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
        tenants = [row["name"] for row in self.counts.tenants]
        pending = GaugeMetricFamily(
            "muster_pending_jobs",
            "Queued jobs by tenant and waiting reason.",
            labels=["tenant", "reason"],
        )
        for row in self.counts.pending:
            pending.add_metric([row["tenant"], row["reason"]], float(row["jobs"]))
        yield pending
        admitted: dict[str, float] = dict.fromkeys(tenants, 0.0)
        finished: dict[tuple[str, str], float] = {
            (tenant, state): 0.0 for tenant in tenants for state in FINISHED
        }
        evicted: dict[tuple[str, str], float] = {}
        for row in self.counts.events:
            tenant, kind, n = row["tenant"], row["type"], float(row["events"])
            if kind == "admitted":
                admitted[tenant] = admitted.get(tenant, 0.0) + n
            elif kind in FINISHED:
                finished[(tenant, kind)] = finished.get((tenant, kind), 0.0) + n
            elif kind == "requeued":
                key = (tenant, row["reason"] or "Unknown")
                evicted[key] = evicted.get(key, 0.0) + n
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
        counts = dict.fromkeys(("delivered", "failed", "gone", "refused"), 0.0)
        counts.update({row["outcome"]: float(row["attempts"]) for row in self.counts.deliveries})
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
        for row in self.counts.tenants:
            name = row["name"]
            limits = _resources(
                row["quota_cpu_millis"], row["quota_memory_bytes"], row["quota_gpu_shares"]
            )
            used = _resources(row["used_cpu"], row["used_memory"], row["used_gpu"])
            for resource, value in limits.items():
                quota.add_metric([name, resource], value)
            for resource, value in used.items():
                usage.add_metric([name, resource], value)
        yield quota
        yield usage

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
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def _instant(query: Mapping[str, str], key: str, default: datetime) -> datetime:
    raw = query.get(key)
    if raw is None:
        return default
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise BadRequest(f"{key} must be an RFC 3339 date-time") from exc
    if value.tzinfo is None:
        raise BadRequest(f"{key} must carry a time zone offset")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+00:01 is before year 1 in UTC
        raise BadRequest(f"{key} is out of range") from exc


def _flag(query: Mapping[str, str], key: str) -> bool:
    raw = query.get(key, "false")
    if raw not in ("true", "false"):
        raise BadRequest(f"{key} must be true or false")
    return raw == "true"


def _consumption_view(consumed: Consumption) -> dict[str, float]:
    return {
        "cpu_core_hours": consumed.cpu_core_hours,
        "memory_gib_hours": consumed.memory_gib_hours,
        "gpu_hours": consumed.gpu_hours,
    }


@routes.get("/v1/tenants/{tenant}/usage")
async def usage(request: web.Request) -> web.Response:
    name = request.match_info["tenant"]
    check_tenant(request, name)
    bind(tenant=name)
    now = datetime.now(UTC)
    until = _instant(request.query, "to", now)
    since = _instant(request.query, "from", datetime(1970, 1, 1, tzinfo=UTC))
    if since >= until:
        raise BadRequest("from must be before to")
    per_job = _flag(request.query, "per_job")
    jobs = await tenant_usage(request.app[ENGINE], name, since, until)
    total = Consumption(
        cpu_core_hours=sum(j.consumed.cpu_core_hours for j in jobs),
        memory_gib_hours=sum(j.consumed.memory_gib_hours for j in jobs),
        gpu_hours=sum(j.consumed.gpu_hours for j in jobs),
    )
    body: dict[str, Any] = {
        "tenant": name,
        "from": since.isoformat().replace("+00:00", "Z"),
        "to": until.isoformat().replace("+00:00", "Z"),
        **_consumption_view(total),
    }
    if per_job:
        body["jobs"] = [
            {"id": j.job_id, "name": j.name, **_consumption_view(j.consumed)} for j in jobs
        ]
    return json_response(body)


EVENT_PAGE = 100
EVENT_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


MAX_TXID = 2**64 - 1  # xid8 is unsigned
MAX_EVENT_ID = 2**63 - 1  # job_events.id is a bigint
POSITION_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,19})")
PLAIN_ID = re.compile(r"[0-9]{1,19}")


def _sse_id(position: EventPosition) -> str:
    return f"{position.txid}-{position.id}"


async def _resume_from(request: web.Request) -> EventPosition:
    """The position after which the stream starts: Last-Event-ID's, else the beginning."""
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return STREAM_START
    if (match := POSITION_ID.fullmatch(raw)) is not None:
        position = EventPosition(int(match[1]), int(match[2]))
        if position.txid <= MAX_TXID and position.id <= MAX_EVENT_ID:
            return position
    elif PLAIN_ID.fullmatch(raw) is not None and int(raw) <= MAX_EVENT_ID:
        return await position_of_event(request.app[ENGINE], int(raw))
    raise BadRequest("Last-Event-ID must be an id of this stream (<txid>-<id>) or an event id")


def _event_filters(query: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    tenant = tenant_filter(query)
    job = query.get("job")
    if job is not None:
        try:
            job = str(uuid.UUID(job))
        except ValueError as exc:
            raise BadRequest("job must be a job id (a UUID)") from exc
    kind = query.get("type")
    if kind is not None and kind not in {t.value for t in EventType}:
        raise BadRequest(f"type must be one of {', '.join(t.value for t in EventType)}")
    return tenant, job, kind


@routes.get("/v1/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Job events from job_events, by writing transaction then id, each once its transaction and
    every older one have finished (so a client that resumes with Last-Event-ID misses nothing
    committed meanwhile, whatever order transactions commit in). Runs until the client goes, or
    its token expires, or it loses its last role; a revoked tenant's events stop at once."""
    tenants = require_role(request).tenants(Action.READ)  # None: an admin sees every tenant
    tenant, job, kind = _event_filters(request.query)
    last = await _resume_from(request)
    if tenant is not None:
        bind(tenant=tenant)
    engine = request.app[ENGINE]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            REQUEST_ID_HEADER: (log_context.get() or {}).get("request_id", ""),
        }
    )
    await response.prepare(request)
    try:
        await response.write(b"retry: 1000\n\n")
        quiet_since = time.monotonic()
        while request.transport is not None and not request.transport.is_closing():
            # A stream outlives its request: it ends when the token expires, and follows
            # grants as they change.
            caller = await recheck(request)
            if caller is None:
                break
            tenants = caller.tenants(Action.READ)
            rows = await events_after(
                engine,
                last,
                tenant=tenant,
                tenants=tenants,
                job_id=job,
                event_type=kind,
                limit=EVENT_PAGE,
            )
            for row in rows:
                data = {**event_view(row), "tenant": row["tenant"]}
                last = event_position(row)
                message = f"id: {_sse_id(last)}\nevent: {row['type']}\ndata: {json.dumps(data)}\n\n"
                await response.write(message.encode())
            if rows:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                await response.write(b": keep-alive\n\n")
                quiet_since = time.monotonic()
            if len(rows) < EVENT_PAGE:
                await asyncio.sleep(EVENT_POLL_SECONDS)
    except ConnectionResetError:
        pass
    return response
