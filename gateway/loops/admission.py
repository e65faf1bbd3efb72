"""The admission loop: on the leader, run a cycle whenever it is woken or the tick passes.

It is woken when this replica becomes the leader, and on every NOTIFY of ``Channel.JOBS`` (a submit
or a cancel committed); ``gateway.loops.runtime`` wires both.

A failed cycle is logged and retried at the next wake-up; it never stops the loop. Cycles are
paced by their own cost (and run at most five a second), so a burst of submits costs a few
cycles, not one per submit: after a cycle that admitted jobs the loop rests 4x the cycle's
time (at most a fifth of the process), after one that admitted none 9x (a tenth: the queue is
stuck until capacity frees, and re-planning it sooner would only take CPU from the API).

Cancellation (shutdown) ends the loop between cycles, or lets the cycle in progress finish (up to
CYCLE_GRACE seconds; past that its transaction is aborted and rolls back whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.backends.base import Inventory
from gateway.db.admission import CycleResult, PendingJobCache, run_cycle
from gateway.domain.scheduling.queueing import PendingJob

log = logging.getLogger(__name__)

#: Rest after a cycle, as a multiple of its duration: after one that admitted jobs, and after
#: one that admitted none.
PACING = 4.0
IDLE_PACING = 9.0
#: The shortest rest between cycles: under a stream of submits, admit in batches of at most a
#: fifth of a second's arrivals rather than re-planning the queue for every few submits.
MIN_REST = 0.2
#: On shutdown, how long a cycle in progress may take to finish before it is cancelled.
CYCLE_GRACE = 5.0


class AdmissionLoop:
    """Runs admission cycles while ``is_leader()`` says this replica leads.

    Invariants:
    - A cycle runs only on the leader, and at most one at a time in this process (cycles of all
      processes also serialize on a transaction-level lock, ``gateway.db.admission``).
    - An exception in a cycle is logged and never ends the loop; only cancellation does, and a
      cycle in progress then finishes or rolls back whole (``CYCLE_GRACE``).
    - ``wake`` is the only way to hurry it; without wake-ups it still cycles every ``interval``
      seconds. The loop holds no connection between cycles: leadership and LISTEN belong to the
      runtime that runs it.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        inventory: Inventory,
        *,
        is_leader: Callable[[], bool],
        interval: float,
        starvation_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.inventory = inventory
        self.is_leader = is_leader
        self.interval = interval
        self.starvation_seconds = starvation_seconds
        self.clock = clock
        self.wake = asyncio.Event()
        self.cache = PendingJobCache()
        self.cycles = 0
        # In-process figures of this replica's cycles (only the leader runs any).
        self.cycle_seconds = Histogram(
            "muster_admission_attempt_duration_seconds",
            "Time one admission cycle took, snapshot to commit.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=None,
        )
        self.cycle_jobs = Gauge(
            "muster_admission_cycle_jobs",
            "Queued jobs the last admission cycle considered.",
            registry=None,
        )
        self.last: CycleResult | None = None

    def queued(self, job: PendingJob) -> None:
        """A job this process just queued: spare the next cycle reading it back (leader only;
        see ``PendingJobCache``)."""
        if self.is_leader():
            self.cache.prime(job)

    async def cycle(self) -> CycleResult:
        nodes = await self.inventory.nodes()
        result = await run_cycle(
            self.engine,
            nodes,
            self.cache,
            clock=self.clock,
            starvation_seconds=self.starvation_seconds,
        )
        self.cycles += 1
        self.last = result
        self.cycle_seconds.observe(result.seconds)
        self.cycle_jobs.set(result.considered)
        if result.admitted:
            log.info(
                "admitted %d of %d queued jobs in %.3f s",
                len(result.admitted),
                result.considered,
                result.seconds,
            )
        return result

    @staticmethod
    async def _finish_on_shutdown(work: Coroutine[Any, Any, CycleResult]) -> CycleResult:
        """Await ``work``; if this task is cancelled (shutdown), give the cycle in progress up to
        CYCLE_GRACE seconds to end whole, commit or rollback, before it is cancelled too: a
        statement cancelled mid-flight on the driver connection can leave that connection
        unusable, and closing the pool then waits on it."""
        task = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, CYCLE_GRACE)
            raise

    async def run(self) -> None:
        while True:
            self.wake.clear()
            result = None
            if self.is_leader():
                try:
                    result = await self._finish_on_shutdown(self.cycle())
                except Exception:
                    log.exception("admission cycle failed; retrying at the next wake-up")
            # Wake-ups that arrive during the rest are served by the next cycle.
            await asyncio.sleep(rest_after(result))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval)


def rest_after(result: CycleResult | None) -> float:
    """Seconds to rest after a cycle (None: no cycle ran), so that a long queue re-planned on
    every submit takes at most a fifth of the process while it admits, and a tenth while it
    is stuck."""
    if result is None or result.seconds <= 0:
        return 0.0
    pacing = PACING if result.admitted else IDLE_PACING
    return max(pacing * result.seconds, MIN_REST)
