"""The reconciler's sweep never waits long on a pod's grace period.

A preempted or cancelled job's pods are deleted by the sweep, each within its own grace period,
which a tenant may set long, and a replica may ignore SIGTERM for all of it. The pass waits a
little for the deletes and then goes on: the other jobs' pods are not held up, a pod still
stopping is not asked to stop twice, and once it is gone a pass that still sees it asks again.

The runtime here is a double whose delete takes as long as the test says, as a local replica
within its grace period does; the database and the reconciler are the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.backends.base import Gang, PodStatus
from gateway.domain.lifecycle.decisions import ReplicaPhase
from gateway.loops import reconciler as module
from gateway.loops.reconciler import Reconciler
from tests.integration.test_admission_cycle import job, make_tenant
from tests.openapi_check import CheckedClient


class SlowStops:
    """Pods that run until deleted; a delete ends when the test lets it (``release``)."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], PodStatus] = {}
        self.asked: list[tuple[str, str]] = []
        self.release = asyncio.Event()

    def start(self, job_id: str, name: str) -> None:
        self.pods[(job_id, name)] = PodStatus(
            job_id=job_id, name=name, attempt=0, phase=ReplicaPhase.RUNNING, exit_code=None
        )

    async def observe(self) -> Mapping[tuple[str, str], PodStatus]:
        return dict(self.pods)

    async def create(self, gang: Gang, names: tuple[str, ...]) -> None:
        for name in names:
            self.start(gang.job_id, name)

    async def delete(self, job_id: str, name: str) -> None:
        self.asked.append((job_id, name))
        await self.release.wait()
        self.pods.pop((job_id, name), None)

    def logs(self, job_id: str, name: str, *, follow: bool) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def close(self) -> None:
        return None

    def refusal(self, tenant: str) -> str | None:
        return None

    def on_change(self, callback: Callable[[], None]) -> None:
        return None


@pytest.fixture
def quick_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "SWEEP_WAIT_SECONDS", 0.05)


async def test_a_pod_in_its_grace_period_holds_up_no_pass_and_is_asked_to_stop_once(
    api: CheckedClient, engine: AsyncEngine, quick_sweeps: None
) -> None:
    await make_tenant(api)
    cancelled = (await api.post("/v1/jobs", json=job("gone"))).body
    assert (await api.post(f"/v1/jobs/{cancelled['id']}/cancel")).status == 200
    runtime = SlowStops()
    runtime.start(cancelled["id"], "gone-worker-0")
    reconciler = Reconciler(engine, runtime, is_leader=lambda: True)

    await asyncio.wait_for(reconciler.reconcile(), timeout=10)
    await asyncio.wait_for(reconciler.reconcile(), timeout=10)

    assert runtime.asked == [(cancelled["id"], "gone-worker-0")]
    runtime.release.set()
    await asyncio.sleep(0)  # the stop task ends
    await asyncio.wait_for(reconciler.reconcile(), timeout=10)
    assert runtime.pods == {}
    # A pod that a stop did not end (a real runtime would report it again) is asked again.
    runtime.start(cancelled["id"], "gone-worker-0")
    await asyncio.wait_for(reconciler.reconcile(), timeout=10)
    assert runtime.asked == [(cancelled["id"], "gone-worker-0")] * 2
