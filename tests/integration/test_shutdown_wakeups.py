"""Shutdown stops every loop even when its cancellation meets a wake-up.

``muster serve`` once failed now and then to stop within 15 s of SIGTERM
(``test_serve_keeps_jobs_across_restart``). The cause: Python 3.11's ``asyncio.wait_for`` drops
a cancellation that arrives as the awaited thing completes (CPython gh-86296), and the loops
rested in ``wait_for(self.wake.wait(), interval)``. Shutdown cancels each loop once and waits for
it; when a wake-up (a NOTIFY, leadership, a job's end) came in the same moment, the loop went on
to its next cycle as if never asked to stop, and the process never ended. Right after a restart,
when wake-ups are many, the odds were highest.

Here every loop is woken and then, zero to three turns of the event loop later (the window in
which ``wait_for`` drops the cancel), stopped: all of them must end at once. With the old rest
put back (``gateway.waits.woken`` on ``wait_for``) turns 0, 1 and 2 fail at the 15 s timeout;
``tests/unit/test_waits.py`` holds ``within``, the stand-in for every other ``wait_for``, to the
same.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain.scheduling.nodes import Node
from gateway.loops.runtime import LoopRuntime
from tests.integration.test_admission_cycle import make_tenant
from tests.integration.test_admission_wakeup import HOUR, loops
from tests.openapi_check import CheckedClient


async def resting(runtime: LoopRuntime) -> None:
    """Wait until the leader's loops have run once and rest (for an hour, unless woken)."""
    assert runtime.reconciler is not None
    async with asyncio.timeout(10):
        while runtime.admission.cycles < 1 or runtime.reconciler.passes < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        for _ in range(20):
            await asyncio.sleep(0)


@pytest.mark.parametrize("turns", range(4))
async def test_every_loop_stops_when_shutdown_meets_a_wake_up(
    api: CheckedClient, engine: AsyncEngine, nodes: tuple[Node, ...], turns: int
) -> None:
    await make_tenant(api)
    runtime = loops(engine, nodes, interval=HOUR, simulate=True)
    assert runtime.reconciler is not None
    crashed = asyncio.Event()
    async with asyncio.timeout(15):  # the loops' grace on shutdown is 5 s at most
        async with runtime.running(on_crash=crashed.set):
            await resting(runtime)
            runtime.admission.wake.set()
            runtime.admission.freed.set()
            runtime.reconciler.wake.set()
            runtime.delivery.wake.set()
            for _ in range(turns):
                await asyncio.sleep(0)
        # Leaving the block cancelled every loop and waited for each to end.
    assert not crashed.is_set()
    assert not runtime.is_leader()  # leadership released: the last step of the stop
