"""The reads a dashboard makes: who holds each GPU device, the queue in order, an event stream
that starts now, and usage as a series of buckets. Each keeps tenants apart as the rest of the
API does, and answers a bad query parameter with 400."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain.scheduling.nodes import Node
from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import event_stream
from tests.integration.test_admission_cycle import GIB, cycle, job, make_tenant
from tests.openapi_check import CheckedClient

A, B = "search", "ads"
#: A node too small for any job of ``job``'s: every job stays queued, with a queue position.
NO_ROOM = (Node(name="tiny", cpu_millis=500, memory_bytes=GIB),)


def viewer_of(api: CheckedClient, settings: Settings, tenant: str) -> CheckedClient:
    """The API as a user who may read ``tenant`` only."""
    return api.as_(
        tokens.token(settings, user=f"viewer@{tenant}.example", roles={tenant: "viewer"})
    )


# -- GET /v1/cluster: each GPU device's holders -------------------------------------------------


def _shared_device(cluster: dict[str, Any]) -> dict[str, Any]:
    """The one device of shared-0 that two half-GPU jobs fill."""
    shared = next(n for n in cluster["nodes"] if n["name"] == "shared-0")
    full = [d for d in shared["gpu_devices"] if d["free_shares"] == 0]
    assert len(full) == 1, shared["gpu_devices"]
    device: dict[str, Any] = full[0]
    return device


async def test_a_tenant_sees_its_own_device_holder_and_only_the_shares_of_anothers(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...], settings: Settings
) -> None:
    await make_tenant(api, A)
    await make_tenant(api, B)
    mine = (await api.post("/v1/jobs", json=job("mine", gpu=0.5, tenant=A))).body
    theirs = (await api.post("/v1/jobs", json=job("theirs", gpu=0.5, tenant=B))).body
    assert len((await cycle(engine, nodes)).admitted) == 2

    seen_by_a = _shared_device((await viewer_of(api, settings, A).get("/v1/cluster")).body)

    assert seen_by_a["holders"] == [
        {"tenant": A, "job_id": mine["id"], "job_name": "mine", "shares": 50},
        {"tenant": None, "job_id": None, "job_name": None, "shares": 50},
    ]
    seen_by_admin = _shared_device((await api.get("/v1/cluster")).body)
    assert seen_by_admin["holders"] == [
        {"tenant": B, "job_id": theirs["id"], "job_name": "theirs", "shares": 50},
        {"tenant": A, "job_id": mine["id"], "job_name": "mine", "shares": 50},
    ]


async def test_a_device_nobody_holds_lists_no_holders(api: CheckedClient) -> None:
    cluster = (await api.get("/v1/cluster")).body

    devices = [d for node in cluster["nodes"] for d in node["gpu_devices"]]
    assert devices
    assert all(d["holders"] == [] for d in devices)


# -- GET /v1/queue ------------------------------------------------------------------------------


async def test_the_queue_lists_queued_jobs_by_position_then_unplaced_ones_last(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api, A)
    grant = await api.patch(f"/v1/admin/tenants/{A}", json={"max_priority": 5})
    assert grant.status == 200, grant.text
    low = (await api.post("/v1/jobs", json=job("low", tenant=A))).body
    high = (await api.post("/v1/jobs", json=job("high", tenant=A, priority=5))).body
    await cycle(engine, NO_ROOM)
    late = (await api.post("/v1/jobs", json=job("late", tenant=A))).body  # no position yet
    done = (await api.post("/v1/jobs", json=job("done", tenant=A))).body
    await api.post(f"/v1/jobs/{done['id']}/cancel")

    page = (await api.get("/v1/queue")).body

    assert [j["id"] for j in page["items"]] == [high["id"], low["id"], late["id"]]
    assert [j["queue"] for j in page["items"]] == [
        {"position": 1, "tenant_position": 1},
        {"position": 2, "tenant_position": 2},
        None,
    ]
    assert page["next_cursor"] is None


async def test_the_queue_shows_a_user_only_the_tenants_it_may_read(
    api: CheckedClient, engine: AsyncEngine, settings: Settings
) -> None:
    await make_tenant(api, A)
    await make_tenant(api, B)
    ours = (await api.post("/v1/jobs", json=job("ours", tenant=A))).body
    await api.post("/v1/jobs", json=job("theirs", tenant=B))
    await cycle(engine, NO_ROOM)
    viewer = viewer_of(api, settings, A)

    seen = (await viewer.get("/v1/queue")).body
    asked_for_b = await viewer.get(f"/v1/queue?tenant={B}")
    jobs_of_b = await viewer.get(f"/v1/jobs?tenant={B}")

    assert [j["id"] for j in seen["items"]] == [ours["id"]]
    assert (asked_for_b.status, asked_for_b.body) == (jobs_of_b.status, jobs_of_b.body)
    assert asked_for_b.body == {"items": [], "next_cursor": None}
    both = (await api.get("/v1/queue")).body
    assert {j["tenant"] for j in both["items"]} == {A, B}
    only_b = (await api.get(f"/v1/queue?tenant={B}")).body
    assert [j["name"] for j in only_b["items"]] == ["theirs"]


async def test_paging_through_the_queue_returns_every_job_once_in_order(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api, A)
    await make_tenant(api, B)
    for index in range(4):
        await api.post("/v1/jobs", json=job(f"a{index}", tenant=A))
        await api.post("/v1/jobs", json=job(f"b{index}", tenant=B))
    await cycle(engine, NO_ROOM)
    await api.post("/v1/jobs", json=job("unplaced-1", tenant=A))
    await api.post("/v1/jobs", json=job("unplaced-2", tenant=B))
    whole = (await api.get("/v1/queue?limit=500")).body["items"]

    paged: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get(f"/v1/queue?{query}")).body
        paged += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert len(whole) == 10
    assert [j["id"] for j in paged] == [j["id"] for j in whole]
    assert [j["name"] for j in paged][-2:] == ["unplaced-1", "unplaced-2"]


@pytest.mark.parametrize(
    "query",
    ["cursor=s5", "cursor=q1-", "cursor=q12345678901-1", "limit=0", "limit=x", "tenant=A", "x=1"],
)
async def test_the_queue_answers_a_bad_query_parameter_with_400(
    api: CheckedClient, query: str
) -> None:
    response = await api.get(f"/v1/queue?{query}")

    assert response.status == 400, response.text
    assert query.split("=")[0] in response.body["detail"]


async def test_a_queue_cursor_past_the_end_gives_an_empty_page(api: CheckedClient) -> None:
    await make_tenant(api, A)
    await api.post("/v1/jobs", json=job("a", tenant=A))

    page = (await api.get("/v1/queue?cursor=q9999999999-999999999999999999")).body

    assert page == {"items": [], "next_cursor": None}


# -- GET /v1/events?after= ----------------------------------------------------------------------


async def test_a_stream_after_now_skips_earlier_events_and_sends_later_ones(
    api: CheckedClient,
) -> None:
    await make_tenant(api, A)
    await api.post("/v1/jobs", json=job("before-1", tenant=A))
    await api.post("/v1/jobs", json=job("before-2", tenant=A))

    async with event_stream(api, "after=now") as stream:
        later = (await api.post("/v1/jobs", json=job("later", tenant=A))).body
        received = await stream.next()

    assert (received["job_id"], received["type"]) == (later["id"], "submitted")


async def test_a_stream_starts_after_the_position_given_as_after(api: CheckedClient) -> None:
    await make_tenant(api, A)
    first = (await api.post("/v1/jobs", json=job("first", tenant=A))).body
    await api.post("/v1/jobs", json=job("second", tenant=A))
    async with event_stream(api) as stream:
        assert (await stream.next())["job_id"] == first["id"]
        position = (await stream.next())["stream_id"]
    third = (await api.post("/v1/jobs", json=job("third", tenant=A))).body

    async with event_stream(api, f"after={position}") as stream:
        received = await stream.next()

    assert received["job_id"] == third["id"]  # not second's, nor first's


async def test_last_event_id_wins_over_after(api: CheckedClient) -> None:
    await make_tenant(api, A)
    first = (await api.post("/v1/jobs", json=job("first", tenant=A))).body
    second = (await api.post("/v1/jobs", json=job("second", tenant=A))).body
    async with event_stream(api) as stream:
        read = await stream.next()
    assert read["job_id"] == first["id"]

    async with event_stream(api, "after=now", last_event_id=read["stream_id"]) as stream:
        resumed = await stream.next()

    assert resumed["job_id"] == second["id"]


@pytest.mark.parametrize(
    "after", ["later", "NOW", "12", "1-", "-1", "12345678901234567890-1", "1-1234567890123456789"]
)
async def test_a_bad_after_is_answered_with_400_even_beside_last_event_id(
    api: CheckedClient, after: str
) -> None:
    for headers in ({}, {"Last-Event-ID": "1-1"}):
        response = await api.get(f"/v1/events?after={after}", headers=headers)

        assert response.status == 400, (after, headers)
        assert "after" in response.body["detail"]


# -- GET /v1/tenants/{tenant}/usage?step= -------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _hold(
    engine: AsyncEngine,
    job_id: str,
    pod: str,
    *,
    cpu_millis: int,
    gpu_shares: int,
    held: tuple[float, float | None],
) -> None:
    """A placement of ``cpu_millis`` and 1 GiB held over ``held``, hours after T0 (None: live)."""
    started, released = held
    async with engine.begin() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO placements (job_id, attempt, pod_name, role, replica_index, node,
                    cpu_millis, memory_bytes, gpu_shares, created_at, started_at, released_at)
                VALUES (:job, 0, :pod, 'worker', 0, 'shared-0', :cpu, :mem, :gpu,
                    :started, :started, :released)
                """
            ),
            {
                "job": job_id,
                "pod": pod,
                "cpu": cpu_millis,
                "mem": GIB,
                "gpu": gpu_shares,
                "started": T0 + timedelta(hours=started),
                "released": None if released is None else T0 + timedelta(hours=released),
            },
        )


def _z(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


async def test_a_usage_series_cuts_the_window_into_steps_that_add_up_to_the_totals(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api, A)
    await make_tenant(api, B)
    one = (await api.post("/v1/jobs", json=job("one", tenant=A))).body
    two = (await api.post("/v1/jobs", json=job("two", tenant=A))).body
    other = (await api.post("/v1/jobs", json=job("other", tenant=B))).body
    await _hold(engine, one["id"], "p1", cpu_millis=1000, gpu_shares=50, held=(0.5, 2.5))
    await _hold(engine, one["id"], "p2", cpu_millis=2000, gpu_shares=0, held=(-3, 1.25))
    await _hold(engine, two["id"], "p3", cpu_millis=500, gpu_shares=100, held=(4.5, None))
    await _hold(engine, other["id"], "p4", cpu_millis=8000, gpu_shares=100, held=(0, 5))

    window = f"from={_z(0)}&to={_z(5)}"
    response = await api.get(f"/v1/tenants/{A}/usage?{window}&step=7200")

    assert response.status == 200, response.text
    body = response.body
    series = body["series"]
    assert [(b["from"], b["to"]) for b in series] == [
        (_z(0), _z(2)),
        (_z(2), _z(4)),
        (_z(4), _z(5)),  # the last bucket ends with the window
    ]
    # p1: 1 core over [0.5, 2.5) -> 1.5 h, 0.5 h; p2: 2 cores over [0, 1.25); p3: 0.5 h of 4-5.
    assert [b["cpu_core_hours"] for b in series] == pytest.approx([1.5 + 2.5, 0.5, 0.25])
    assert [b["gpu_hours"] for b in series] == pytest.approx([0.75, 0.25, 0.5])
    for resource in ("cpu_core_hours", "memory_gib_hours", "gpu_hours"):
        assert sum(b[resource] for b in series) == pytest.approx(body[resource])
    without_step = (await api.get(f"/v1/tenants/{A}/usage?{window}")).body
    assert "series" not in without_step
    assert without_step["cpu_core_hours"] == pytest.approx(body["cpu_core_hours"])


async def test_a_usage_series_without_from_covers_the_week_before_to(
    api: CheckedClient,
) -> None:
    await make_tenant(api, A)

    body = (await api.get(f"/v1/tenants/{A}/usage?to={_z(0)}&step=86400")).body
    total = (await api.get(f"/v1/tenants/{A}/usage?to={_z(0)}")).body

    assert body["from"] == _z(-7 * 24)
    assert [b["from"] for b in body["series"]] == [_z(-24 * day) for day in range(7, 0, -1)]
    assert all(b["cpu_core_hours"] == 0 for b in body["series"])
    assert total["from"] == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("step=59", "step"),
        ("step=2592001", "step"),
        ("step=1.5", "step"),
        ("step=-60", "step"),
        ("step=abc", "step"),
        (f"from={_z(0)}&to={_z(17)}&step=60", "1020 buckets"),
        ("to=0001-01-03T00:00:00Z&step=60", "from"),
    ],
)
async def test_a_bad_usage_step_is_answered_with_400(
    api: CheckedClient, query: str, says: str
) -> None:
    await make_tenant(api, A)

    response = await api.get(f"/v1/tenants/{A}/usage?{query}")

    assert response.status == 400, response.text
    assert says in response.body["detail"]


async def test_a_usage_series_of_exactly_a_thousand_buckets_is_answered(
    api: CheckedClient,
) -> None:
    await make_tenant(api, A)

    response = await api.get(f"/v1/tenants/{A}/usage?from={_z(0)}&to={_z(1000)}&step=3600")

    assert response.status == 200, response.text
    assert len(response.body["series"]) == 1000
    assert response.body["series"][-1]["to"] == _z(1000)


# -- GET /v1/jobs/{id}/replicas and GET /v1/jobs?order=newest -----------------------------------


async def test_a_jobs_replicas_show_their_nodes_and_gpu_devices_once_placed(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...], settings: Settings
) -> None:
    await make_tenant(api, A)
    await make_tenant(api, B)
    placed = (await api.post("/v1/jobs", json=job("pair", gpu=0.5, workers=2, tenant=A))).body
    assert (await api.get(f"/v1/jobs/{placed['id']}/replicas")).body == {"items": []}

    assert len((await cycle(engine, nodes)).admitted) == 1
    replicas = (await viewer_of(api, settings, A).get(f"/v1/jobs/{placed['id']}/replicas")).body

    assert [r["name"] for r in replicas["items"]] == ["pair-worker-0", "pair-worker-1"]
    for replica in replicas["items"]:
        assert replica["node"] == "shared-0"
        assert replica["gpu"] == 0.5
        assert [d["shares"] for d in replica["gpu_devices"]] == [50]
        assert replica["attempt"] == 0
        assert replica["released_at"] is None
    # Another tenant's viewer: as for a job that does not exist.
    hidden = await viewer_of(api, settings, B).get(f"/v1/jobs/{placed['id']}/replicas")
    assert hidden.status == 404


async def test_jobs_listed_newest_first_page_by_page(api: CheckedClient) -> None:
    await make_tenant(api, A)
    ids = [(await api.post("/v1/jobs", json=job(f"j{i}", tenant=A))).body["id"] for i in range(5)]

    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = "order=newest&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get(f"/v1/jobs?{query}")).body
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert (await api.get("/v1/jobs?order=sideways")).status == 400
