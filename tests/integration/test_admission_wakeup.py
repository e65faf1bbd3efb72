"""The admission loop, run by the loops' runtime, wakes on a submit's NOTIFY, not only on its timer;
capacity coming free (a job's end, a cancel, an eviction, a new node) leads to the next admission
at once; the runtime leads while it runs and steps down when it stops.

The tests of capacity wait on the loop's own signal (``cycled``), never on a sleep, with ticks an
hour apart: an admission they see was woken."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.serializers import job_view
from gateway.backends.nodes_file import StaticInventory
from gateway.backends.simulated import SimulatedRuntime
from gateway.domain.scheduling.nodes import Node
from gateway.loops.admission import AdmissionLoop
from gateway.loops.leader import Leadership
from gateway.loops.runtime import LoopRuntime
from gateway.settings import AdmissionSettings, WebhookSettings
from tests.integration.test_admission_cycle import Clock, job, make_tenant
from tests.openapi_check import CheckedClient


def loops(
    engine: AsyncEngine,
    nodes: tuple[Node, ...] | StaticInventory,
    interval: float,
    *,
    simulate: bool = False,
) -> LoopRuntime:
    inventory = nodes if isinstance(nodes, StaticInventory) else StaticInventory(nodes)
    runtime = LoopRuntime(
        engine,
        inventory=inventory,
        pods=SimulatedRuntime(inventory) if simulate else None,
        admission=AdmissionSettings(interval=interval),
        webhooks=WebhookSettings(),
        render_job=job_view,
        clock=Clock(1e9),
    )
    if runtime.reconciler is not None:
        runtime.reconciler.interval = interval
    return runtime


HOUR = 3600.0


def one_at_a_time(name: str, command: list[str]) -> dict[str, Any]:
    """A one-CPU job running ``command``; the tenant runs one job at a time."""
    body = job(name)
    body["replicas"]["worker"]["command"] = command
    return body


async def state_of(engine: AsyncEngine, job_id: str) -> str:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT state FROM jobs WHERE id = CAST(:id AS uuid)"), {"id": job_id}
        )
    return str(found)


async def reaches(runtime: LoopRuntime, engine: AsyncEngine, job_id: str, state: str) -> None:
    """Wait, cycle by cycle, until the job is in ``state``; the guard is far below the tick."""
    async with asyncio.timeout(20):
        while True:
            runtime.admission.cycled.clear()
            if await state_of(engine, job_id) == state:
                return
            await runtime.admission.cycled.wait()


async def settled(runtime: LoopRuntime, engine: AsyncEngine, job_id: str, state: str) -> None:
    """Wait, pass by pass, until the reconciler has moved the job to ``state``."""
    reconciler = runtime.reconciler
    assert reconciler is not None
    async with asyncio.timeout(20):
        while True:
            reconciler.passed.clear()
            if await state_of(engine, job_id) == state:
                return
            await reconciler.passed.wait()


def refills(runtime: LoopRuntime) -> float:
    """How many admissions a capacity wake-up led to (``muster_admission_refill_seconds``)."""
    (metric,) = runtime.admission.freed_to_admitted.collect()
    return next(s.value for s in metric.samples if s.name.endswith("_count"))


async def test_a_job_that_ends_admits_the_next_at_once(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api, max_running_jobs=1)
    first = (await api.post("/v1/jobs", json=one_at_a_time("first", ["true"]))).body
    second = (await api.post("/v1/jobs", json=one_at_a_time("second", ["serve"]))).body
    runtime = loops(engine, nodes, interval=HOUR, simulate=True)
    crashed = asyncio.Event()
    async with runtime.running(on_crash=crashed.set):
        # Elected: the first is admitted; its replica exits at once, the runtime says so, the
        # reconciler ends the job and hands admission the freed slot.
        await reaches(runtime, engine, second["id"], "admitted")
        assert await state_of(engine, first["id"]) == "succeeded"
        assert refills(runtime) >= 1  # admitted by a capacity wake-up
    assert not crashed.is_set()


async def test_a_cancel_admits_the_next_at_once(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api, max_running_jobs=1)
    first = (await api.post("/v1/jobs", json=one_at_a_time("first", ["serve"]))).body
    second = (await api.post("/v1/jobs", json=one_at_a_time("second", ["serve"]))).body
    runtime = loops(engine, nodes, interval=HOUR, simulate=True)
    async with runtime.running(on_crash=lambda: None):
        await settled(runtime, engine, first["id"], "running")
        assert await state_of(engine, second["id"]) == "queued"
        assert (await api.post(f"/v1/jobs/{first['id']}/cancel")).status == 200
        await reaches(runtime, engine, second["id"], "admitted")


async def test_an_eviction_admits_the_next_at_once(api: CheckedClient, engine: AsyncEngine) -> None:
    gib = 2**30
    a = Node(name="a", cpu_millis=1000, memory_bytes=8 * gib)
    b = Node(name="b", cpu_millis=1000, memory_bytes=8 * gib)
    inventory = StaticInventory((a, b))
    await make_tenant(api)
    wide = job("wide", workers=2)  # a CPU on each node
    wide["replicas"]["worker"]["command"] = ["serve"]
    first = (await api.post("/v1/jobs", json=wide)).body
    second = (await api.post("/v1/jobs", json=one_at_a_time("second", ["serve"]))).body
    runtime = loops(engine, inventory, interval=HOUR, simulate=True)
    async with runtime.running(on_crash=lambda: None):
        await settled(runtime, engine, first["id"], "running")
        assert await state_of(engine, second["id"]) == "queued"
        # Node a fails: the whole gang is evicted (requeued, with a backoff), which frees its
        # CPU on node b for the second job.
        inventory.replace((replace(a, ready=False), b))
        await reaches(runtime, engine, second["id"], "admitted")
        assert await state_of(engine, first["id"]) == "queued"


async def test_a_new_node_admits_at_once(api: CheckedClient, engine: AsyncEngine) -> None:
    gib = 2**30
    small = Node(name="small", cpu_millis=1000, memory_bytes=8 * gib)
    inventory = StaticInventory((small,))
    await make_tenant(api)
    body = job("wide", workers=2)
    waiting = (await api.post("/v1/jobs", json=body)).body
    runtime = loops(engine, inventory, interval=HOUR)
    async with runtime.running(on_crash=lambda: None):
        await reaches(runtime, engine, waiting["id"], "queued")
        while runtime.admission.cycles < 1:
            runtime.admission.cycled.clear()
            await runtime.admission.cycled.wait()
        assert await state_of(engine, waiting["id"]) == "queued"  # two CPUs do not fit one
        inventory.replace((small, replace(small, name="added")))
        await reaches(runtime, engine, waiting["id"], "admitted")


async def test_submit_wakes_the_leader_long_before_its_timer(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api)
    runtime = loops(engine, nodes, interval=600)
    crashed = asyncio.Event()
    async with runtime.running(on_crash=crashed.set):
        async with asyncio.timeout(10):
            # The first cycle runs as soon as it leads (being elected wakes it).
            while runtime.admission.cycles < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        created = (await api.post("/v1/jobs", json=job("woken"))).body
        async with asyncio.timeout(10):  # the timer would take 600 s
            while (await api.get(f"/v1/jobs/{created['id']}")).body["state"] != "admitted":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert runtime.is_leader()
    assert not runtime.is_leader()
    assert not crashed.is_set()


async def test_one_runtime_leads_and_another_takes_over_when_it_stops(
    engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    first, second = loops(engine, nodes, interval=0.05), loops(engine, nodes, interval=0.05)
    crashed = asyncio.Event()
    first_running, first_stopped = first.running(on_crash=crashed.set), False
    await first_running.__aenter__()
    try:
        async with asyncio.timeout(10):
            while not first.is_leader():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        async with second.running(on_crash=crashed.set):
            await asyncio.sleep(0.3)  # several of its tries at the lock
            assert first.is_leader()
            assert not second.is_leader()
            # The leader stops, and steps down as it does.
            await first_running.__aexit__(None, None, None)
            first_stopped = True
            assert not first.is_leader()
            async with asyncio.timeout(10):
                while not second.is_leader():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
    finally:
        if not first_stopped:
            await first_running.__aexit__(None, None, None)
    assert not crashed.is_set()


@pytest.mark.timeout(20)
async def test_a_follower_told_of_freed_capacity_keeps_resting_and_yields_the_loop(
    engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    # Another replica's job ended: every replica hears muster_freed, only the leader cycles.
    follower = AdmissionLoop(
        engine,
        StaticInventory(nodes),
        is_leader=lambda: False,
        interval=HOUR,
        starvation_seconds=300,
    )
    running = asyncio.create_task(follower.run())
    try:
        for _ in range(3):
            follower.capacity_freed()
            for _ in range(10):
                await asyncio.sleep(0)  # a loop that never rests would never let this return
            assert not follower.freed.is_set()
        assert follower.cycles == 0
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_loop_that_ends_on_its_own_stops_the_process_loudly(
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = loops(engine, nodes, interval=600)

    async def broken() -> None:
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(runtime.delivery, "run", broken)
    crashed = asyncio.Event()
    async with runtime.running(on_crash=crashed.set):
        await asyncio.wait_for(crashed.wait(), 10)
    (record,) = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "'webhooks' ended unexpectedly" in record.getMessage()
    # The other tasks were stopped and leadership released: the lock is free.
    check = Leadership(engine, interval=1)
    assert await check.check()
    await check.release()
