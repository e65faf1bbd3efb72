"""Observability: request ids and JSON logs, /metrics after a scripted scenario, and usage
accounting with hand-computed figures."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.api.serializers import job_view
from gateway.backends.nodes_file import StaticInventory
from gateway.db import lifecycle
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.spec import JobSpec
from gateway.domain.lifecycle.decisions import JobView, ReplicaObservation, ReplicaPhase, decide
from gateway.domain.scheduling.nodes import Node
from gateway.logs import ContextFilter, JsonFormatter
from gateway.loops.runtime import LoopRuntime
from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import event_stream
from tests.integration.test_admission_cycle import cycle, job, make_tenant
from tests.openapi_check import CheckedClient

GIB = 2**30


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.addFilter(ContextFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("gateway")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# -- request ids and logs ----------------------------------------------------------------------


async def test_request_id_is_echoed(api: CheckedClient) -> None:
    response = await api.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"


@pytest.mark.parametrize("given", [None, "", "x" * 129, "tab\there", "é"])
async def test_request_id_is_generated_when_missing_or_invalid(
    api: CheckedClient, given: str | None
) -> None:
    headers = {} if given is None else {"X-Request-ID": given}
    response = await api.get("/healthz", headers=headers)
    generated = response.headers["X-Request-ID"]
    assert len(generated) == 32
    int(generated, 16)


async def test_errors_carry_the_request_id(api: CheckedClient) -> None:
    unknown = await api.get("/no/such/route", headers={"X-Request-ID": "r-404"})
    assert unknown.status == 404
    assert unknown.headers["X-Request-ID"] == "r-404"
    missing = await api.get(
        "/v1/jobs/00000000-0000-0000-0000-000000000000", headers={"X-Request-ID": "r-job"}
    )
    assert missing.status == 404
    assert missing.headers["X-Request-ID"] == "r-job"


async def test_logs_are_json_lines_carrying_the_request_id(
    api: CheckedClient, log_lines: Lines
) -> None:
    await api.get("/healthz", headers={"X-Request-ID": "req-json-1"})
    await api.get("/v1/tenants/nobody/usage", headers={"X-Request-ID": "req-json-2"})
    entries = [json.loads(line) for line in log_lines.lines]
    assert all({"time", "level", "message", "logger"} <= set(entry) for entry in entries)
    by_id = {entry.get("request_id"): entry for entry in entries}
    assert "GET /healthz -> 200" in by_id["req-json-1"]["message"]
    assert by_id["req-json-2"]["tenant"] == "nobody"
    assert "-> 404" in by_id["req-json-2"]["message"]
    # Outside a request nothing is attached.
    logging.getLogger("gateway.test").warning("no request")
    assert "request_id" not in json.loads(log_lines.lines[-1])


# -- /metrics ------------------------------------------------------------------------------------


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


async def scrape(api: CheckedClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await api.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    return samples(response.text)


async def test_metrics_after_a_scripted_scenario(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api)
    await make_tenant(api, "ads", max_running_jobs=1)
    a = (await api.post("/v1/jobs", json=job("a", workers=2, gpu=0.5))).body
    b = (await api.post("/v1/jobs", json=job("b", workers=1, gpu=1))).body
    result = await cycle(engine, nodes)
    assert set(result.admitted) == {a["id"], b["id"]}
    # ads may run one job at a time: its second job waits with a reason.
    for name in ("ads-1", "ads-2"):
        submitted = await api.post("/v1/jobs", json=job(name, tenant="ads"))
        assert submitted.status == 201, submitted.text
    c = (await api.post("/v1/jobs", json=job("c", workers=1))).body
    e = (await api.post("/v1/jobs", json=job("e", workers=1))).body
    await cycle(engine, nodes)
    cancelled = await api.post(f"/v1/jobs/{b['id']}/cancel")
    assert cancelled.status == 200, cancelled.text
    # The real lifecycle: a runs; c runs and succeeds; e runs and loses its node.
    for job_id in (a["id"], c["id"], e["id"]):
        await _drive(engine, job_id, ReplicaPhase.RUNNING)
    await _drive(engine, c["id"], ReplicaPhase.SUCCEEDED, exit_code=0)
    await _drive(engine, e["id"], ReplicaPhase.RUNNING, node_ready=False)

    found = await scrape(api)
    reason = await _reason(engine, "ads-2")
    assert value(found, "muster_pending_jobs", tenant="ads", reason=reason) == 1
    assert value(found, "muster_admitted_jobs_total", tenant="search") == 4
    assert value(found, "muster_admitted_jobs_total", tenant="ads") == 1
    assert value(found, "muster_finished_jobs_total", tenant="search", state="cancelled") == 1
    assert value(found, "muster_finished_jobs_total", tenant="search", state="succeeded") == 1
    assert value(found, "muster_finished_jobs_total", tenant="search", state="failed") == 0
    assert value(found, "muster_evicted_jobs_total", tenant="search", reason="NodeLost") == 1
    assert value(found, "muster_tenant_quota", tenant="search", resource="cpu") == 1000
    assert value(found, "muster_tenant_quota", tenant="search", resource="gpu") == 64
    assert value(found, "muster_tenant_quota", tenant="search", resource="gpu_shares") == 6400
    # Job a still holds two 1-core, 1 GiB pods with half a GPU each; b's pod was released.
    assert value(found, "muster_tenant_usage", tenant="search", resource="cpu") == 2
    assert value(found, "muster_tenant_usage", tenant="search", resource="memory") == 2 * GIB
    assert value(found, "muster_tenant_usage", tenant="search", resource="gpu") == 1
    assert value(found, "muster_tenant_usage", tenant="ads", resource="gpu") == 0
    assert value(found, "muster_cluster_capacity", resource="cpu") == 192
    assert value(found, "muster_cluster_capacity", resource="memory") == 768 * GIB
    assert value(found, "muster_cluster_capacity", resource="gpu") == 12
    assert value(found, "muster_cluster_capacity", resource="gpu_shares") == 1200
    # search's job a (2 cores, 2 GiB, 1 GPU) and ads-1 (1 core, 1 GiB) hold resources.
    assert value(found, "muster_cluster_free", resource="cpu") == 189
    assert value(found, "muster_cluster_free", resource="memory") == 765 * GIB
    assert value(found, "muster_cluster_free", resource="gpu_shares") == 1100
    assert value(found, "muster_leader") == 0
    # Five admissions (a, b, ads-1, c, e), each timed from its submit, all within seconds.
    assert value(found, "muster_admission_wait_time_seconds_count") == 5
    assert value(found, "muster_admission_wait_time_seconds_bucket", le="60.0") == 5
    assert value(found, "muster_webhook_deliveries_total", outcome="delivered") == 0
    # The requests above were timed under their route templates.
    count = value(
        found,
        "muster_http_request_duration_seconds_count",
        route="/v1/jobs/{id}/cancel",
        method="POST",
        status="200",
    )
    assert count == 1
    assert (
        value(
            found,
            "muster_http_request_duration_seconds_count",
            route="/v1/jobs",
            method="POST",
            status="201",
        )
        == 6
    )


def loop_runtime(settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]) -> LoopRuntime:
    """The loops as ``muster serve`` builds them (not started)."""
    return LoopRuntime(
        engine,
        inventory=StaticInventory(nodes),
        pods=None,
        admission=settings.admission,
        webhooks=settings.webhooks,
        render_job=job_view,
    )


async def test_metrics_report_the_leaders_admission_cycles(
    api: CheckedClient, settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api)
    for name in ("x", "y", "z"):
        await api.post("/v1/jobs", json=job(name))
    loops = loop_runtime(settings, engine, nodes)
    await loops.admission.cycle()
    app = make_app(settings, engine, StaticInventory(nodes), collectors=loops.collectors)
    async with TestClient(TestServer(app)) as client:
        found = await scrape(CheckedClient(client, tokens.admin_token(settings)))
    assert value(found, "muster_admission_attempt_duration_seconds_count") == 1
    assert value(found, "muster_admission_cycle_jobs") == 3


async def test_metrics_report_leadership(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    app = make_app(settings, engine, StaticInventory(nodes), is_leader=lambda: True)
    async with TestClient(TestServer(app)) as client:
        found = await scrape(CheckedClient(client, tokens.admin_token(settings)))
    assert value(found, "muster_leader") == 1


async def _drive(
    engine: AsyncEngine,
    job_id: str,
    phase: ReplicaPhase,
    *,
    exit_code: int | None = None,
    node_ready: bool = True,
) -> None:
    """One reconciler step for a job whose every replica is observed in ``phase``."""
    (active,) = [j for j in await lifecycle.active_jobs(engine) if j.id == job_id]
    spec = check_job_spec(active.spec)
    assert isinstance(spec, JobSpec)
    view = JobView(
        id=job_id,
        state=active.state,
        spec=spec,
        attempt=active.attempt,
        restarts=active.restarts,
        admitted_at=active.admitted_at.timestamp(),
    )
    observed = [
        ReplicaObservation(
            pod_name=p.pod_name,
            role=p.role,
            index=p.index,
            phase=phase,
            exit_code=exit_code,
            node_ready=node_ready,
        )
        for p in active.placements
    ]
    decision = decide(view, observed, time.time())
    assert decision.transition is not None, decision
    assert await lifecycle.apply(engine, active, decision, time.time())


async def _reason(engine: AsyncEngine, name: str) -> str:
    async with engine.connect() as conn:
        reason = await conn.scalar(text("SELECT reason FROM jobs WHERE name = :n"), {"n": name})
    assert reason
    return str(reason)


# -- usage accounting --------------------------------------------------------------------------

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "muster-dashboard.json"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _place(
    engine: AsyncEngine,
    job_id: str,
    pod: str,
    *,
    cpu_millis: int,
    memory_gib: int,
    gpu_shares: int,
    created: float,
    started: float | None,
    released: float | None,
) -> None:
    """A placement held from ``started`` (or ``created``) to ``released``: hours after T0."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO placements (job_id, attempt, pod_name, role, replica_index, node,
                    cpu_millis, memory_bytes, gpu_shares, created_at, started_at, released_at)
                VALUES (:job, 0, :pod, 'worker', 0, 'shared-0', :cpu, :mem, :gpu,
                    :created, :started, :released)
                """
            ),
            {
                "job": job_id,
                "pod": pod,
                "cpu": cpu_millis,
                "mem": memory_gib * GIB,
                "gpu": gpu_shares,
                "created": _at(created),
                "started": _at(started),
                "released": _at(released),
            },
        )


def _at(hours: float | None) -> datetime | None:
    return None if hours is None else T0 + timedelta(hours=hours)


async def test_usage_with_fractional_gpus_equals_hand_computed_figures(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    await make_tenant(api, "ads")
    j1 = (await api.post("/v1/jobs", json=job("j1"))).body
    j2 = (await api.post("/v1/jobs", json=job("j2"))).body
    other = (await api.post("/v1/jobs", json=job("other", tenant="ads"))).body
    # The window is [T0+1h, T0+5h).
    # j1/p1: 2 cores, 4 GiB, half a GPU from 0h to 3h -> 2h in the window.
    await _place(
        engine,
        j1["id"],
        "p1",
        cpu_millis=2000,
        memory_gib=4,
        gpu_shares=50,
        created=0,
        started=0,
        released=3,
    )
    # j1/p2: never started: held from its creation at 2h until 6h -> 3h in the window.
    await _place(
        engine,
        j1["id"],
        "p2",
        cpu_millis=1000,
        memory_gib=1,
        gpu_shares=25,
        created=2,
        started=None,
        released=6,
    )
    # j2/p3: a whole GPU from 4h, still live -> 1h in the window.
    await _place(
        engine,
        j2["id"],
        "p3",
        cpu_millis=500,
        memory_gib=2,
        gpu_shares=100,
        created=4,
        started=4,
        released=None,
    )
    # j2/p4: released before the window opens.
    await _place(
        engine,
        j2["id"],
        "p4",
        cpu_millis=8000,
        memory_gib=8,
        gpu_shares=800,
        created=-2,
        started=-2,
        released=0.5,
    )
    # Another tenant's pod in the window counts for that tenant only.
    await _place(
        engine,
        other["id"],
        "p5",
        cpu_millis=1000,
        memory_gib=1,
        gpu_shares=100,
        created=1,
        started=1,
        released=2,
    )

    window = "from=2026-01-01T01:00:00Z&to=2026-01-01T05:00:00Z"
    response = await api.get(f"/v1/tenants/search/usage?{window}&per_job=true")
    assert response.status == 200, response.text
    body = response.body
    assert body["from"] == "2026-01-01T01:00:00Z"
    assert body["to"] == "2026-01-01T05:00:00Z"
    # p1: 2h x (2 cores, 4 GiB, 0.5 GPU); p2: 3h x (1, 1, 0.25); p3: 1h x (0.5, 2, 1).
    assert body["cpu_core_hours"] == pytest.approx(4 + 3 + 0.5)
    assert body["memory_gib_hours"] == pytest.approx(8 + 3 + 2)
    assert body["gpu_hours"] == pytest.approx(1 + 0.75 + 1)
    jobs = {entry["name"]: entry for entry in body["jobs"]}
    assert set(jobs) == {"j1", "j2"}
    assert jobs["j1"]["id"] == j1["id"]
    assert jobs["j1"]["gpu_hours"] == pytest.approx(1.75)
    assert jobs["j1"]["cpu_core_hours"] == pytest.approx(7)
    assert jobs["j2"]["gpu_hours"] == pytest.approx(1)
    assert jobs["j2"]["memory_gib_hours"] == pytest.approx(2)

    ads = (await api.get(f"/v1/tenants/ads/usage?{window}")).body
    assert ads["gpu_hours"] == pytest.approx(1)
    assert "jobs" not in ads


async def test_usage_refuses_bad_windows_and_unknown_tenants(api: CheckedClient) -> None:
    await make_tenant(api)
    unknown = await api.get("/v1/tenants/nobody/usage")
    assert unknown.status == 404
    for query in (
        "from=yesterday",
        "from=2026-01-01T00:00:00",
        "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "per_job=maybe",
    ):
        response = await api.get(f"/v1/tenants/search/usage?{query}")
        assert response.status == 400, query
    empty = (await api.get("/v1/tenants/search/usage")).body
    assert empty["gpu_hours"] == 0


# -- the event stream ----------------------------------------------------------------------------


async def read_events(
    api: CheckedClient, count: int, query: str, last_event_id: str | None = None
) -> list[dict[str, Any]]:
    """Read ``count`` events from GET /v1/events?query, then disconnect."""
    async with event_stream(api, query, last_event_id) as stream:
        return [await stream.next() for _ in range(count)]


async def _event_ids(engine: AsyncEngine, tenant: str) -> list[int]:
    """The tenant's event ids in the stream's order."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id FROM job_events WHERE tenant = :t ORDER BY txid, id"), {"t": tenant}
        )
        return [row.id for row in rows]


async def test_event_stream_resumes_without_losing_or_repeating_events(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api)
    await make_tenant(api, "ads")
    for name in ("s1", "s2", "s3"):
        await api.post("/v1/jobs", json=job(name))
        await api.post("/v1/jobs", json=job(name, tenant="ads"))
    first = await read_events(api, 2, "tenant=search")
    # Recorded while the client is away: admissions and one more submission.
    await cycle(engine, nodes)
    await api.post("/v1/jobs", json=job("s4"))
    expected = await _event_ids(engine, "search")
    assert len(expected) == 7
    rest = await read_events(api, 5, "tenant=search", last_event_id=first[-1]["stream_id"])
    received = first + rest
    assert [event["id"] for event in received] == expected
    assert {event["tenant"] for event in received} == {"search"}
    assert [event["type"] for event in received].count("admitted") == 3


async def test_event_stream_shows_a_caller_only_its_own_tenants_events(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...], settings: Settings
) -> None:
    await make_tenant(api)
    await make_tenant(api, "ads")
    for name in ("s1", "s2", "s3"):  # the two tenants' events interleave
        await api.post("/v1/jobs", json=job(name, tenant="ads"))
        await api.post("/v1/jobs", json=job(name))
    await cycle(engine, nodes)
    expected = await _event_ids(engine, "search")
    search = api.as_(tokens.token(settings, user="viewer@search", roles={"search": "viewer"}))
    received = await read_events(search, len(expected), "")
    assert [event["id"] for event in received] == expected
    # On resuming, the other tenant's newer event is skipped: the next one is its own tenant's.
    await api.post("/v1/jobs", json=job("a4", tenant="ads"))
    await api.post("/v1/jobs", json=job("s4"))
    (after,) = await read_events(search, 1, "", last_event_id=received[-1]["stream_id"])
    assert after["tenant"] == "search"
    assert after["id"] == (await _event_ids(engine, "search"))[-1]


async def test_event_stream_filters_by_job_and_type(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api)
    a = (await api.post("/v1/jobs", json=job("a"))).body
    b = (await api.post("/v1/jobs", json=job("b"))).body
    await cycle(engine, nodes)
    await api.post(f"/v1/jobs/{a['id']}/cancel")
    of_a = await read_events(api, 3, f"job={a['id']}")
    assert [event["type"] for event in of_a] == ["submitted", "admitted", "cancelled"]
    admitted = await read_events(api, 2, "type=admitted")
    assert {event["job_id"] for event in admitted} == {a["id"], b["id"]}
    assert all(event["type"] == "admitted" for event in admitted)


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("", {"Last-Event-ID": "x"}),
        ("", {"Last-Event-ID": "12-"}),
        ("", {"Last-Event-ID": "-12"}),
        ("", {"Last-Event-ID": "1-2-3"}),
        ("", {"Last-Event-ID": "1.5"}),
        ("", {"Last-Event-ID": "18446744073709551616-1"}),  # txid beyond xid8
        ("", {"Last-Event-ID": "1-9223372036854775808"}),  # id beyond bigint
        ("", {"Last-Event-ID": "9223372036854775808"}),
        ("job=nope", {}),
        ("type=exploded", {}),
        ("tenant=Not_A_Name", {}),
    ],
)
async def test_event_stream_refuses_bad_input(
    api: CheckedClient, query: str, headers: dict[str, str]
) -> None:
    response = await api.get(f"/v1/events?{query}", headers=headers)
    assert response.status == 400


async def test_the_grafana_dashboard_queries_only_metrics_muster_exports(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    loops = loop_runtime(settings, engine, nodes)
    app = make_app(settings, engine, StaticInventory(nodes), collectors=loops.collectors)
    async with TestClient(TestServer(app)) as client:
        await client.get("/healthz")
        headers = {"Authorization": f"Bearer {tokens.admin_token(settings)}"}
        async with client.get("/metrics", headers=headers) as response:
            body = await response.text()
    exported = set()
    for family in text_string_to_metric_families(body):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        exported.update(family.name + s for s in suffixes.get(family.type, ("",)))
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in expressions for name in re.findall(r"\bmuster_[a-z_]+", e)}
    assert used, "the dashboard shows no Muster metric"
    assert used - exported == set(), "dashboard queries metrics Muster does not export"
    # Per-replica sizing panels read cAdvisor and DCGM series of a job's pods.
    assert any("container_cpu_usage_seconds_total" in e for e in expressions)
    assert any("DCGM_FI_DEV_GPU_UTIL" in e for e in expressions)
