"""The admission loop, run by the loops' runtime, wakes on a submit's NOTIFY, not only on its timer;
the runtime leads while it runs and steps down when it stops."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.serializers import job_view
from gateway.backends.nodes_file import StaticInventory
from gateway.domain.scheduling.nodes import Node
from gateway.loops.leader import Leadership
from gateway.loops.runtime import LoopRuntime
from gateway.settings import AdmissionSettings, WebhookSettings
from tests.integration.test_admission_cycle import job, make_tenant
from tests.openapi_check import CheckedClient


def loops(engine: AsyncEngine, nodes: tuple[Node, ...], interval: float) -> LoopRuntime:
    return LoopRuntime(
        engine,
        inventory=StaticInventory(nodes),
        pods=None,
        admission=AdmissionSettings(interval=interval),
        webhooks=WebhookSettings(),
        render_job=job_view,
    )


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
