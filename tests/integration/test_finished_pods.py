"""What a finished job's clean_pod_policy keeps costs the reconciler nothing per pass, and goes
when the job's TTL after finishing has passed, even when many jobs finish at once.

A kept pod's owner is read when the sweep first meets it, not at every pass: passes run many
times a second under load, and a week of kept pods made each one read thousands of jobs. The
clean-up works off a backlog batch after batch, one per pass, instead of one batch a minute
(which jobs finishing at more than 100 a minute would outrun for ever).

The runtime is the simulated one (replicas are timers); the database, the admission cycle and
the reconciler are the real ones, with the reconciler's clock injected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.backends.simulated import SimulatedRuntime
from gateway.db import lifecycle
from gateway.domain.scheduling.nodes import Node
from gateway.loops import reconciler as module
from gateway.loops.reconciler import Reconciler
from tests.integration.test_admission_cycle import cycle, job, make_tenant
from tests.integration.test_admission_wakeup import state_of
from tests.openapi_check import CheckedClient

TTL = 60


class Clock:
    """The reconciler's clock: the real time (finished_at is the database's) plus an offset
    the test moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def leader(engine: AsyncEngine, runtime: SimulatedRuntime) -> tuple[Reconciler, Clock]:
    """The leader's reconciler over ``runtime``, with a clock the test moves."""
    clock = Clock()
    reconciler = Reconciler(
        engine, runtime, is_leader=lambda: True, clock=clock, ttl_after_finished=TTL
    )
    return reconciler, clock


def quick(name: str) -> dict[str, Any]:
    """A one-replica job whose replica exits 0 at once."""
    body = job(name)
    body["replicas"]["worker"]["command"] = ["true"]
    return body


async def finished(
    api: CheckedClient,
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    reconciler: Reconciler,
    names: Sequence[str],
) -> list[str]:
    """Submit, admit and run ``names`` to success; their ids."""
    ids = [(await api.post("/v1/jobs", json=quick(name))).body["id"] for name in names]
    assert len((await cycle(engine, nodes)).admitted) == len(ids)
    for _ in range(10):
        await reconciler.reconcile()
        if all([await state_of(engine, job_id) == "succeeded" for job_id in ids]):
            return ids
    raise AssertionError("the jobs did not succeed")


@pytest.fixture
def owners_read(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The job ids each read of pod owners asked for."""
    asked: list[tuple[str, ...]] = []
    real = lifecycle.pod_owners

    async def counting(engine: AsyncEngine, job_ids: Sequence[str]) -> Any:
        asked.append(tuple(job_ids))
        return await real(engine, job_ids)

    monkeypatch.setattr(lifecycle, "pod_owners", counting)
    return asked


async def test_a_kept_pods_job_is_read_once_not_at_every_pass_and_the_pod_goes_after_the_ttl(
    api: CheckedClient,
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    owners_read: list[tuple[str, ...]],
) -> None:
    await make_tenant(api)
    runtime = SimulatedRuntime()
    reconciler, clock = leader(engine, runtime)
    [done] = await finished(api, engine, nodes, reconciler, ["done"])
    kept = [key for key in await runtime.observe() if key[0] == done]
    assert kept == [(done, "done-worker-0")]  # clean_pod_policy Running keeps a finished pod

    for _ in range(5):
        await reconciler.reconcile()
    assert owners_read.count((done,)) == 1

    assert await reconciler.clean_up(force=True) == []  # its TTL has not passed
    clock.offset += TTL + 1
    assert await reconciler.clean_up(force=True) == [done]
    assert await runtime.observe() == {}
    await reconciler.reconcile()
    assert owners_read.count((done,)) == 1
    assert await state_of(engine, done) == "succeeded"  # the record stays


async def test_a_backlog_of_finished_jobs_is_cleaned_up_a_batch_a_pass_not_a_batch_a_minute(
    api: CheckedClient,
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "CLEAN_UP_BATCH", 2)
    await make_tenant(api)
    runtime = SimulatedRuntime()
    reconciler, clock = leader(engine, runtime)
    ids = await finished(api, engine, nodes, reconciler, [f"j{i}" for i in range(5)])
    clock.offset += TTL + 1

    rounds = [await reconciler.clean_up() for _ in range(4)]  # the clock stands still

    assert [len(done) for done in rounds] == [2, 2, 1, 0]
    assert sorted(job_id for done in rounds for job_id in done) == sorted(ids)
    assert await runtime.observe() == {}
    # The backlog worked off, the next round waits its minute (the clock is a TTL ahead of the
    # database's, so the late job is due at once).
    [late] = await finished(api, engine, nodes, reconciler, ["late"])
    assert await reconciler.clean_up() == []
    clock.offset += module.CLEAN_UP_EVERY
    assert await reconciler.clean_up() == [late]


async def test_kept_pods_of_a_deleted_tenants_jobs_go_once_the_sweep_looks_again(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    await make_tenant(api)
    runtime = SimulatedRuntime()
    reconciler, clock = leader(engine, runtime)
    [done] = await finished(api, engine, nodes, reconciler, ["done"])
    await reconciler.reconcile()
    # The tenant goes with its finished jobs: no TTL clean-up will ever find them.
    assert (await api.delete("/v1/admin/tenants/search")).status == 204

    await reconciler.reconcile()
    assert list(await runtime.observe()) == [(done, "done-worker-0")]  # kept until it looks
    clock.offset += module.KEPT_RECHECK_EVERY
    await reconciler.reconcile()
    assert await runtime.observe() == {}


class SlowRemovals(SimulatedRuntime):
    """A removal waits until the test lets it end (a kept replica in its grace period), or
    fails for the jobs named in ``failing``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.asked: list[str] = []
        self.failing: set[str] = set()

    async def remove(self, job_id: str, job_name: str, namespace: str) -> None:
        self.asked.append(job_id)
        if job_id in self.failing:
            raise RuntimeError("the cluster said no")
        await self.release.wait()
        await super().remove(job_id, job_name, namespace)


async def cleaned_up(engine: AsyncEngine, job_id: str) -> bool:
    async with engine.connect() as conn:
        return bool(
            await conn.scalar(
                text("SELECT cleaned_up_at IS NOT NULL FROM jobs WHERE id = CAST(:id AS uuid)"),
                {"id": job_id},
            )
        )


async def test_a_slow_removal_holds_up_no_pass_is_not_started_twice_and_is_recorded_after(
    api: CheckedClient,
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "SWEEP_WAIT_SECONDS", 0.05)
    await make_tenant(api)
    runtime = SlowRemovals()
    reconciler, clock = leader(engine, runtime)
    [done] = await finished(api, engine, nodes, reconciler, ["done"])
    clock.offset += TTL + 1

    assert await reconciler.clean_up(force=True) == []  # still removing: the pass goes on
    await reconciler.reconcile()
    assert await reconciler.clean_up(force=True) == []
    assert runtime.asked == [done]  # not asked twice meanwhile
    runtime.release.set()
    async with asyncio.timeout(10):
        while await runtime.observe():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert not await cleaned_up(engine, done)
    # The next round asks again (a removal is idempotent) and records it.
    assert await reconciler.clean_up(force=True) == [done]
    assert await cleaned_up(engine, done)
    assert runtime.asked == [done, done]
    assert await reconciler.clean_up(force=True) == []  # not due any more


async def test_a_batch_with_a_failed_removal_waits_its_minute_before_the_next(
    api: CheckedClient,
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(module, "CLEAN_UP_BATCH", 2)
    await make_tenant(api)
    runtime = SlowRemovals()
    runtime.release.set()
    reconciler, clock = leader(engine, runtime)
    failing, going = await finished(api, engine, nodes, reconciler, ["a", "b"])
    runtime.failing.add(failing)
    clock.offset += TTL + 1

    assert await reconciler.clean_up() == [going]  # a full batch, but not all of it went
    assert await reconciler.clean_up() == []  # so the next try is a minute later, not now
    runtime.failing.clear()
    clock.offset += module.CLEAN_UP_EVERY
    assert await reconciler.clean_up() == [failing]
