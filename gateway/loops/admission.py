"""The admission loop: on the leader, run a cycle whenever it is woken or the tick passes.

Two kinds of wake-up (``gateway.loops.runtime`` wires them):

- ``capacity_freed``: capacity may have come free (a job ended, failed, was cancelled or evicted,
  a node was added, this replica became the leader). A cycle then has capacity to fill, so it
  runs at once, even straight after another cycle.
- ``wake``: the queue changed (a submit or a cancel of a queued job). Cycles so woken are paced
  by their own cost: after a cycle that admitted jobs the loop rests as long as the cycle took,
  after one that admitted none 4x as long (the queue waits for capacity, and planning it again
  sooner would only take CPU from the API). A capacity wake-up ends a rest at once.

Without wake-ups a cycle still runs every ``interval`` seconds.

A cycle costs what changed, not what waits: the queue lives in memory on the leader
(``gateway.db.admission.LeaderQueue``) and a cycle considers the tenants' heads and a backfill
window (``gateway.domain.scheduling.admission``). What is O(queue), every job's queue positions,
runs as its own task (``run_places``), in a thread and then in small transactions between
cycles, resting 9x as long as it took (a tenth of the time at most, however long the queue).

A failed cycle is logged, its queue is loaded again whole, and it is retried at the next wake-up;
it never stops the loop. Cancellation (shutdown) ends the loop between cycles, or lets the cycle
in progress finish (up to CYCLE_GRACE seconds; past that its transaction is aborted and rolls
back whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from prometheus_client import Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.backends.base import Inventory
from gateway.db.admission import CycleResult, LeaderQueue, places_to_write, run_cycle, write_places
from gateway.domain.scheduling.queueing import DEFAULT_BACKFILL, PendingJob
from gateway.logs import loop_failed
from gateway.waits import within, woken

log = logging.getLogger(__name__)

#: Rest after a cycle woken by the queue, as a multiple of its duration: after one that
#: admitted jobs, and after one that admitted none.
PACING = 1.0
IDLE_PACING = 4.0
#: On shutdown, how long a cycle in progress may take to finish before it is cancelled.
CYCLE_GRACE = 5.0
#: Queue positions: rows written per transaction, and the rest after a pass as a multiple of
#: its duration (at least PLACES_MIN_REST seconds).
PLACES_CHUNK = 1000
PLACES_PACING = 9.0
PLACES_MIN_REST = 0.25


class AdmissionLoop:
    """Runs admission cycles while ``is_leader()`` says this replica leads.

    Invariants:
    - A cycle runs only on the leader, and at most one at a time in this process (cycles of all
      processes also serialize on a transaction-level lock, ``gateway.db.admission``); a chunk
      of queue positions is never written during a cycle.
    - The queue is held only while leading: a replica that stops leading forgets it, and the
      first cycle of a new leader loads it whole.
    - An exception in a cycle is logged and never ends the loop; only cancellation does, and a
      cycle in progress then finishes or rolls back whole (``CYCLE_GRACE``).
    - Wake-ups only hurry it; without them it still cycles every ``interval`` seconds. The loop
      holds no connection between cycles: leadership and LISTEN belong to the runtime.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        inventory: Inventory,
        *,
        is_leader: Callable[[], bool],
        interval: float,
        starvation_seconds: float,
        backfill: int = DEFAULT_BACKFILL,
        min_runtime_seconds: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.min_runtime_seconds = min_runtime_seconds
        self.inventory = inventory
        self.is_leader = is_leader
        self.interval = interval
        self.starvation_seconds = starvation_seconds
        self.backfill = backfill
        self.clock = clock
        #: Set by any wake-up; ``freed`` by the capacity ones, which skip the pacing rest.
        self.wake = asyncio.Event()
        self.freed = asyncio.Event()
        #: Set after every cycle (tests and benchmarks wait on it instead of sleeping).
        self.cycled = asyncio.Event()
        self.queue = LeaderQueue()
        self.cycles = 0
        self.last: CycleResult | None = None
        self._freed_at: float | None = None
        self._exclusive = asyncio.Lock()
        self._places_wanted = asyncio.Event()
        # In-process figures of this replica's cycles (only the leader runs any).
        self.cycle_seconds = Histogram(
            "muster_admission_attempt_duration_seconds",
            "Time one admission cycle took, catch-up to commit.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=None,
        )
        self.freed_to_admitted = Histogram(
            "muster_admission_refill_seconds",
            "From capacity coming free (a job's end, a node) to the commit of the next cycle "
            "that admitted a job.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=None,
        )
        self.cycle_jobs = Gauge(
            "muster_admission_cycle_jobs",
            "Queued jobs the leader held at its last admission cycle.",
            registry=None,
        )
        self.cycle_considered = Gauge(
            "muster_admission_cycle_considered_jobs",
            "Queued jobs the last admission cycle considered (tenant heads and backfill).",
            registry=None,
        )

    def capacity_freed(self) -> None:
        """Capacity may have come free: run a cycle at once (see the module docstring)."""
        if self._freed_at is None:
            self._freed_at = time.perf_counter()
        self.freed.set()
        self.wake.set()

    def queued(self, job: PendingJob) -> None:
        """A job this process just queued: spare the next cycle reading its spec (leader only)."""
        if self.is_leader():
            self.queue.prime(job)

    async def cycle(self) -> CycleResult:
        async with self._exclusive:
            self.freed.clear()
            freed_at, self._freed_at = self._freed_at, None
            nodes = await self.inventory.nodes()
            result = await run_cycle(
                self.engine,
                nodes,
                self.queue,
                clock=self.clock,
                starvation_seconds=self.starvation_seconds,
                min_runtime_seconds=self.min_runtime_seconds,
                backfill=self.backfill,
            )
        if freed_at is not None and result.admitted:
            self.freed_to_admitted.observe(time.perf_counter() - freed_at)
        self.cycles += 1
        self.last = result
        self.cycle_seconds.observe(result.seconds)
        self.cycle_jobs.set(result.queued)
        self.cycle_considered.set(result.considered)
        self._places_wanted.set()
        self.cycled.set()
        if result.admitted:
            log.info(
                "admitted %d of %d queued jobs (%d considered) in %.3f s",
                len(result.admitted),
                result.queued,
                result.considered,
                result.seconds,
            )
        return result

    async def write_places(self) -> int:
        """Write every queued job's positions that changed (and the reasons of jobs no cycle
        considers now); the number of rows written. Chunks interleave with cycles."""
        last = self.last
        if last is None or not self.queue.loaded:
            return 0
        snapshot = replace(last.snapshot, now=self.clock())
        places = await asyncio.to_thread(
            places_to_write, snapshot, self.queue.jobs.copy(), self.queue
        )
        for start in range(0, len(places), PLACES_CHUNK):
            async with self._exclusive:
                if not self.is_leader():
                    break
                await write_places(self.engine, self.queue, places[start : start + PLACES_CHUNK])
        return len(places)

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
                await within(task, CYCLE_GRACE)
            raise

    async def run(self) -> None:
        while True:
            self.wake.clear()
            result = None
            if self.is_leader():
                try:
                    result = await self._finish_on_shutdown(self.cycle())
                except Exception as exc:
                    loop_failed(log, "admission cycle failed; retrying at the next wake-up", exc)
            else:
                # Capacity freed elsewhere is the leader's to fill: a follower that kept the
                # event set would never rest again (and never yield the event loop).
                self.freed.clear()
                self._freed_at = None  # nor is it a refill of this replica's to time
                if self.queue.loaded:
                    self.queue.reset()
            # Pacing: rest after a cycle, unless capacity came free (filled at once).
            if not await woken(self.freed, rest_after(result)):
                await woken(self.wake, self.interval)

    async def run_places(self) -> None:
        """Keep the queue positions that users see up to date, on their own schedule."""
        while True:
            await self._places_wanted.wait()
            self._places_wanted.clear()
            if not self.is_leader():
                continue
            started = time.perf_counter()
            try:
                await self.write_places()
            except Exception as exc:
                loop_failed(
                    log, "writing queue positions failed; retrying after the next cycle", exc
                )
            took = time.perf_counter() - started
            await asyncio.sleep(max(PLACES_PACING * took, PLACES_MIN_REST))


def rest_after(result: CycleResult | None) -> float:
    """Seconds to rest after a cycle woken by the queue (None: no cycle ran)."""
    if result is None or result.seconds <= 0:
        return 0.0
    return (PACING if result.admitted else IDLE_PACING) * result.seconds
