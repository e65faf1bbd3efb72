"""The runtime of the background loops: what they share, how they wake each other, who runs them.

One ``LoopRuntime`` per gateway process builds the loops (admission, the reconciler where the
backend runs pods, webhook delivery) and runs them with the two connections they share:

- leadership (``Leadership``, the advisory-lock connection): the admission loop and the
  reconciler act only while this process leads, and ``/metrics`` reports it;
- the LISTEN connection (``Listener``): each channel of ``gateway.db.channels`` wakes the loops
  that wait for it.

Every hand-off between them is written in ``LoopRuntime.__init__`` and nowhere else:

=============================  ==========================================================
when                           what
=============================  ==========================================================
this process becomes leader    admission runs at once (capacity to fill); wake the reconciler
NOTIFY ``Channel.JOBS``        wake admission, paced (a submit or cancel committed)
NOTIFY ``Channel.FREED``       admission runs at once (a job left the cluster)
the reconciler ended a job     admission runs at once (in-process, before the NOTIFY arrives)
the inventory changed          admission runs at once (a node was added or came back), and
                               the reconciler (a node that changed may have failed)
NOTIFY ``Channel.ADMITTED``    wake the reconciler (pods to create) and webhook delivery
NOTIFY ``Channel.WEBHOOKS``    wake webhook delivery (an outbox row was written)
the API queued a job           ``queued``: the leader's queue is primed with it
the runtime saw a replica end  wake the reconciler (pushed by the runtime, not polled)
=============================  ==========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from typing import Any

from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.backends.base import Inventory, Runtime
from gateway.db.channels import Channel
from gateway.db.notify import HandOff, Listener
from gateway.domain.jobs.spec import DEFAULT_TTL_SECONDS_AFTER_FINISHED
from gateway.domain.scheduling.queueing import PendingJob
from gateway.domain.webhooks import RetryPolicy
from gateway.loops.admission import AdmissionLoop
from gateway.loops.leader import Leadership
from gateway.loops.reconciler import Reconciler
from gateway.settings import AdmissionSettings, WebhookSettings
from gateway.webhooks.delivery import DeliveryLoop, RenderJob
from gateway.webhooks.ssrf import Guard

log = logging.getLogger(__name__)


class LoopRuntime:
    """The background loops of one gateway process, and the leadership and LISTEN connections
    they share.

    Invariants:
    - It alone holds leadership and the LISTEN connection; a loop holds neither, reads
      leadership through ``is_leader`` and is woken through its ``wake`` event.
    - The hand-offs (the table in the module docstring) are wired once, in ``__init__``.
    - While ``running``, each loop, the leadership and the listener run as a task named after
      it. A task that ends on its own, returning or raising, is logged as critical and
      ``on_crash`` is called: the process stops rather than run without one of its loops.
    - Shutdown (leaving ``running``) stops the loops first, each finishing what it must (an
      admission cycle in progress commits or rolls back whole, webhook attempts in flight get
      their grace), and only then releases leadership and closes the LISTEN connection, so no
      other replica leads while this one may still act as leader.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        inventory: Inventory,
        pods: Runtime | None,
        admission: AdmissionSettings,
        webhooks: WebhookSettings,
        render_job: RenderJob,
        clock: Callable[[], float] = time.time,
        ttl_after_finished: int = DEFAULT_TTL_SECONDS_AFTER_FINISHED,
    ) -> None:
        """``pods`` is where the backend runs pods (None: a backend that runs none, such as the
        static one, so no reconciler); ``render_job`` is the API's view of a job, for webhook
        payloads; ``clock`` the time admission and the lifecycle compare with."""
        self.admission = AdmissionLoop(
            engine,
            inventory,
            is_leader=self.is_leader,
            interval=admission.interval,
            starvation_seconds=admission.starvation_seconds,
            backfill=admission.backfill,
            min_runtime_seconds=admission.preemption_min_runtime,
            clock=clock,
        )
        freed = self.admission.capacity_freed
        self.reconciler = (
            None
            if pods is None
            else Reconciler(
                engine,
                pods,
                is_leader=self.is_leader,
                on_freed=freed,
                clock=clock,
                ttl_after_finished=ttl_after_finished,
            )
        )
        inventory.on_change(freed)
        if self.reconciler is not None and pods is not None:
            # A node that changed may have failed: its replicas are evicted at once, too.
            inventory.on_change(self.reconciler.wake.set)
            pods.on_change(self.reconciler.wake.set)
        # Every replica delivers webhooks: claims are leased rows, so replicas share the work.
        self.delivery = DeliveryLoop(
            engine,
            render_job=render_job,
            guard=Guard.from_settings(webhooks.allow_nets, webhooks.allow_http),
            policy=RetryPolicy(schedule=webhooks.retry_schedule),
            timeout=webhooks.timeout,
            secret_overlap=webhooks.secret_overlap,
        )
        # The hand-offs.
        reconcile: tuple[HandOff, ...] = (
            () if self.reconciler is None else (self.reconciler.wake.set,)
        )
        # A replica that is not the leader tries to take the lock every admission interval, so a
        # dead leader is replaced within one (README, "How admission works").
        self.leadership = Leadership(
            engine,
            interval=admission.interval,
            on_elected=(freed, *reconcile),
        )
        self.listener = Listener(
            engine,
            {
                Channel.JOBS: (self.admission.wake.set,),
                Channel.FREED: (freed,),
                Channel.ADMITTED: (*reconcile, self.delivery.wake.set),
                Channel.WEBHOOKS: (self.delivery.wake.set,),
            },
        )
        self._stopping = False

    def is_leader(self) -> bool:
        """Whether this process leads now (admission and reconciliation run here)."""
        return self.leadership.is_leader

    def queued(self, job: PendingJob) -> None:
        """A job the API of this process just queued (``Submits.on_queued``)."""
        self.admission.queued(job)

    @property
    def collectors(self) -> Sequence[Collector]:
        """The loops' in-process metrics, for ``/metrics``."""
        return (
            self.admission.cycle_seconds,
            self.admission.freed_to_admitted,
            self.admission.cycle_jobs,
            self.admission.cycle_considered,
        )

    @contextlib.asynccontextmanager
    async def running(self, *, on_crash: Callable[[], None]) -> AsyncIterator[None]:
        """Run every loop while the block runs; stop them all, in order, when it ends."""
        self._stopping = False
        shared = self._start(
            {"leadership": self.leadership.run(), "listener": self.listener.run()}, on_crash
        )
        loops: dict[str, Coroutine[Any, Any, None]] = {
            "admission": self.admission.run(),
            "queue-places": self.admission.run_places(),
        }
        if self.reconciler is not None:
            loops["reconciler"] = self.reconciler.run()
        loops["webhooks"] = self.delivery.run()
        started = self._start(loops, on_crash)
        try:
            yield
        finally:
            self._stopping = True
            await _stop(started)
            await _stop(shared)

    def _start(
        self, coroutines: Mapping[str, Coroutine[Any, Any, None]], on_crash: Callable[[], None]
    ) -> list[asyncio.Task[None]]:
        tasks = []
        for name, coroutine in coroutines.items():
            task = asyncio.create_task(coroutine, name=name)
            task.add_done_callback(lambda done: self._ended(done, on_crash))
            tasks.append(task)
        return tasks

    def _ended(self, task: asyncio.Task[None], on_crash: Callable[[], None]) -> None:
        """A loop must never end on its own: if one does, stop the whole process loudly."""
        if self._stopping or task.cancelled():
            return
        log.critical(
            "background loop %r ended unexpectedly; shutting down",
            task.get_name(),
            exc_info=task.exception(),
        )
        on_crash()


async def _stop(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
