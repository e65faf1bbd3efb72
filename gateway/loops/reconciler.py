"""The reconciler: desired pods (the database) against observed pods (the runtime), on the leader.

Level-triggered: every pass compares the whole desired state with the whole observed state, so a
missed event, a crash between two steps or a gateway restart changes nothing but the timing.

One pass, in order:
1. observe every pod the runtime has;
2. for each admitted or running job, ask ``domain.lifecycle.decide`` what its pods mean;
3. write the decision's transition (guarded by state and attempt), then act on the runtime:
   delete, restart (delete and create again), create;
4. delete pods no live job wants: pods of unknown, cancelled and requeued (evicted, preempted)
   jobs, and pods of finished jobs that their clean_pod_policy does not keep. A kept pod's job
   is read when the sweep first meets it in a phase and then once a minute (a finished job
   never changes, but it goes with its tenant); the TTL clean-up removes kept pods later. A pod
   deleted gets its grace period, which a tenant may set long: the pass waits
   ``SWEEP_WAIT_SECONDS`` at most for the deletes, and those still stopping finish on their own
   (none is asked twice meanwhile), so a replica that ignores SIGTERM holds up no other job.

A pass runs every ``interval`` seconds on the leader, and at once when woken: when this replica
becomes the leader and on every NOTIFY of ``Channel.ADMITTED`` (``gateway.loops.runtime`` wires
both).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.backends.base import Gang, PodStatus, Runtime
from gateway.db import lifecycle as store
from gateway.domain.jobs.spec import DEFAULT_TTL_SECONDS_AFTER_FINISHED, JobSpec, from_document
from gateway.domain.lifecycle.decisions import (
    Decision,
    JobView,
    ReplicaObservation,
    ReplicaPhase,
    decide,
    unwanted,
)
from gateway.domain.lifecycle.records import ActiveJob
from gateway.domain.lifecycle.states import JobState
from gateway.errors import KubernetesUnavailable
from gateway.logs import loop_failed
from gateway.waits import woken

log = logging.getLogger(__name__)

#: The moves of a pass after which the job holds no capacity (its placements are released).
_OFF_THE_CLUSTER = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED})
#: The states a job never leaves whose pods its clean_pod_policy may keep.
_FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED})
#: A decision to do nothing (most jobs, most passes): nothing to write, nothing to act on.
_NOTHING = Decision()
#: How long a pass waits for the deletes of its sweep before it goes on without them.
SWEEP_WAIT_SECONDS = 2.0


#: How often (seconds) the leader looks for finished jobs whose TTL has passed.
CLEAN_UP_EVERY = 60.0
#: How many jobs one pass cleans up at most; while a batch is full the next pass goes on.
CLEAN_UP_BATCH = 100
#: How often (seconds) the sweep reads the jobs of the pods it keeps again.
KEPT_RECHECK_EVERY = 60.0


class Reconciler:
    """Drives the runtime's pods towards the database's jobs while ``is_leader()`` is True.

    Invariants:
    - Passes run only on the leader, one at a time; every job change goes through
      ``gateway.db.lifecycle`` (guarded by state and attempt), and the runtime is acted on only
      after that write committed, so a pass that dies half-way is finished by the next one.
    - An exception in a pass is logged and never ends the loop; only cancellation does.
    - ``wake`` only hurries the next pass; the loop holds no connection between passes.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        runtime: Runtime,
        *,
        is_leader: Callable[[], bool],
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_freed: Callable[[], None] | None = None,
        ttl_after_finished: int = DEFAULT_TTL_SECONDS_AFTER_FINISHED,
    ) -> None:
        """``on_freed`` is called when a pass moved a job off the cluster (it ended or was
        evicted), as soon as that move committed: admission refills the capacity."""
        self.engine = engine
        self.runtime = runtime
        self.is_leader = is_leader
        self.on_freed = on_freed
        self.interval = interval
        self.clock = clock
        self.wake = asyncio.Event()
        #: Set after every pass (tests wait on it instead of sleeping).
        self.passed = asyncio.Event()
        self.passes = 0
        #: Why the last pass could not know the cluster (an API outage), or None.
        self.unknown: str | None = None
        #: Seconds after finishing when a job's objects are removed, unless its spec says.
        self.ttl_after_finished = ttl_after_finished
        self._cleaned_at: float | None = None
        self._specs: dict[str, JobSpec] = {}
        # Pods the sweep is deleting (within their grace period), by (job id, pod name).
        self._stopping: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Jobs whose objects the clean-up is removing, by id.
        self._removing: dict[str, asyncio.Task[bool]] = {}
        # Pods of finished jobs that their clean_pod_policy keeps, with the phase they were
        # kept in: a finished job never changes, so the sweep reads such a pod's owner again
        # only when its phase changes or every KEPT_RECHECK_EVERY seconds (not every pass,
        # for a week of kept pods).
        self._kept: dict[tuple[str, str], ReplicaPhase] = {}
        self._kept_since = -math.inf

    def _spec(self, job: ActiveJob) -> JobSpec:
        """The job's spec, read once per job (a stored spec never changes)."""
        spec = self._specs.get(job.id)
        if spec is None:
            if job.spec is None:  # forgotten between the read and now: read it next pass
                raise LookupError(f"no spec for job {job.id}")
            spec = self._specs[job.id] = from_document(job.spec)
        return spec

    async def reconcile(self) -> None:
        # 1. Observe.
        observed = await self.runtime.observe()
        jobs = await store.active_jobs(self.engine, known=self._specs.keys())
        now = self.clock()
        wanted: set[tuple[str, str]] = set()
        # Specs of jobs no longer active are forgotten: the cache is as large as the live jobs.
        active = {job.id for job in jobs}
        for gone in [job_id for job_id in self._specs if job_id not in active]:
            del self._specs[gone]
        # 2. Decide, for every job.
        decided: list[tuple[ActiveJob, Gang, Decision]] = []
        for job in jobs:
            wanted.update((job.id, p.pod_name) for p in job.placements)
            try:
                spec = self._spec(job)
            except Exception:
                log.exception("job %s: its spec cannot be read; the other jobs go on", job.id)
                continue
            gang = Gang(
                job_id=job.id,
                spec=spec,
                namespace=job.namespace,
                attempt=job.attempt,
                placements=job.placements,
            )
            decision = decide(self._view(job, spec), self._observations(gang, observed), now)
            if decision != _NOTHING:
                decided.append((job, gang, decision))
        # 3. Write every decision in one transaction, then act on the runtime.
        if decided:
            applied = await store.apply_all(
                self.engine, [(job, decision) for job, _, decision in decided], now
            )
            if self.on_freed is not None and any(
                job.id in applied and decision.transition in _OFF_THE_CLUSTER
                for job, _, decision in decided
            ):
                self.on_freed()
            acts = []
            for job, gang, decision in decided:
                if job.id not in applied:
                    continue
                if decision.transition is not None:
                    log.info(
                        "job %s (%s): %s -> %s (%s)",
                        job.name,
                        job.id,
                        job.state.value,
                        decision.transition.value,
                        decision.reason,
                    )
                if decision.transition not in (None, JobState.RUNNING):
                    wanted.difference_update((job.id, p.pod_name) for p in gang.placements)
                acts.append(self._act(gang, decision))
            # One job's trouble (a replica that cannot be created or removed) must not stop
            # every other tenant's jobs: the next pass tries it again.
            for (job, _, _), failed in zip(
                [d for d in decided if d[0].id in applied],
                await asyncio.gather(*acts, return_exceptions=True),
                strict=True,
            ):
                if isinstance(failed, Exception):
                    log.error(
                        "acting on job %s failed; the other jobs go on", job.id, exc_info=failed
                    )
        # 4. Sweep what no live job wants.
        await self._sweep(observed, wanted)
        self.passes += 1
        self.passed.set()

    async def _act(self, gang: Gang, decision: Decision) -> None:
        """Delete, restart (delete, then create again) and create the decision's pods."""
        await asyncio.gather(
            *(
                self.runtime.delete(gang.job_id, name)
                for name in (*decision.delete, *decision.restart)
            )
        )
        if decision.transition in (None, JobState.RUNNING):
            creates = tuple(sorted({*decision.create, *decision.restart}))
            if creates:
                await self.runtime.create(gang, creates)

    @staticmethod
    def _view(job: ActiveJob, spec: JobSpec) -> JobView:
        return JobView(
            id=job.id,
            state=job.state,
            spec=spec,
            attempt=job.attempt,
            restarts=job.restarts,
            preemptions=job.preemptions,
            admitted_at=job.admitted_at.timestamp(),
            started_at=None if job.started_at is None else job.started_at.timestamp(),
        )

    @staticmethod
    def _observations(
        gang: Gang, observed: Mapping[tuple[str, str], PodStatus]
    ) -> list[ReplicaObservation]:
        result = []
        for placement in gang.placements:
            status = observed.get((gang.job_id, placement.pod_name))
            if status is not None and status.attempt != gang.attempt:
                status = None  # a pod of an earlier attempt is not this attempt's replica
            result.append(
                ReplicaObservation(
                    pod_name=placement.pod_name,
                    role=placement.role,
                    index=placement.index,
                    phase=ReplicaPhase.MISSING if status is None else status.phase,
                    exit_code=None if status is None else status.exit_code,
                    node_ready=True if status is None else status.node_ready,
                )
            )
        return result

    async def _sweep(
        self, observed: Mapping[tuple[str, str], PodStatus], wanted: set[tuple[str, str]]
    ) -> None:
        now = self.clock()
        if not 0 <= now - self._kept_since < KEPT_RECHECK_EVERY:
            # A finished job can still vanish (its tenant deleted with its finished jobs): then
            # this pass deletes its pods. (A clock set back looks again too.)
            self._kept.clear()
            self._kept_since = now
        for key in [key for key in self._kept if key not in observed]:
            del self._kept[key]  # removed after its TTL (or by hand)
        strays = [
            key
            for key, status in observed.items()
            if key not in wanted
            and key not in self._stopping
            and self._kept.get(key) != status.phase
        ]
        if not strays:
            return
        owners = await store.pod_owners(self.engine, sorted({job_id for job_id, _ in strays}))
        deletions = []
        for job_id, name in strays:
            owner = owners.get(job_id)
            # Every pod of a job that is gone; of others, what the domain's rule says.
            phase = observed[(job_id, name)].phase
            if owner is not None and not unwanted(owner.state, owner.clean_pod_policy, phase):
                if owner.state in _FINISHED:
                    self._kept[(job_id, name)] = phase
                continue
            log.info("deleting pod %s of job %s: no live job wants it", name, job_id)
            task = asyncio.create_task(self._stop(job_id, name))
            self._stopping[(job_id, name)] = task
            deletions.append(task)
        if deletions:
            await asyncio.wait(deletions, timeout=SWEEP_WAIT_SECONDS)

    async def clean_up(self, *, force: bool = False) -> list[str]:
        """Remove what finished jobs left on the cluster once their TTL passed, oldest first,
        at most ``CLEAN_UP_BATCH`` jobs a call: a round every ``CLEAN_UP_EVERY`` seconds (or
        when ``force``), and at the next pass after a full batch that all went (a backlog is
        worked off a batch a pass). The ids of the jobs cleaned up, recorded in one statement.

        Removals run beside the pass, which waits ``SWEEP_WAIT_SECONDS`` at most for them (a
        kept replica still running gets its grace period, which a tenant may set long); one
        still going is not started again, and its job, not recorded, is due at the next round,
        whose removal (idempotent) finds it gone. A job whose removal fails is tried again at
        the next round."""
        now = self.clock()
        if not force and self._cleaned_at is not None and now - self._cleaned_at < CLEAN_UP_EVERY:
            return []
        self._cleaned_at = now  # a failed round, too, waits its minute
        due = await store.due_for_clean_up(
            self.engine, now=now, default_ttl=self.ttl_after_finished, limit=CLEAN_UP_BATCH
        )
        started: dict[asyncio.Task[bool], str] = {}
        for job_id, name, namespace in due:
            if job_id not in self._removing:
                task = asyncio.create_task(self._remove(job_id, name, namespace))
                self._removing[job_id], started[task] = task, job_id
        if not started:
            return []
        ended, _ = await asyncio.wait(started, timeout=SWEEP_WAIT_SECONDS)
        done = sorted(started[task] for task in ended if task.result())
        if done:
            await store.mark_cleaned_up(self.engine, done)
        if len(due) == CLEAN_UP_BATCH and len(done) == len(started):
            self._cleaned_at = None  # more may be due: the next pass goes on
        return done

    async def _remove(self, job_id: str, name: str, namespace: str) -> bool:
        """Remove one finished job's objects; False (logged) if that failed."""
        try:
            await self.runtime.remove(job_id, name, namespace)
        except Exception as failed:
            log.warning("cleaning up job %s failed (tried again later): %s", job_id, failed)
            return False
        finally:
            self._removing.pop(job_id, None)
        return True

    async def _stop(self, job_id: str, name: str) -> None:
        """Delete one pod no live job wants; log a failure (the next pass tries again)."""
        try:
            await self.runtime.delete(job_id, name)
        except Exception as failed:
            log.error("deleting pod %s of job %s failed: %s", name, job_id, failed)
        finally:
            self._stopping.pop((job_id, name), None)

    async def run(self) -> None:
        try:
            while True:
                self.wake.clear()
                if self.is_leader():
                    try:
                        await self.reconcile()
                        await self.clean_up()
                    except KubernetesUnavailable as unknown:
                        # An outage of the API server is not a node failure: nothing is
                        # created or evicted until the runtime knows the cluster again.
                        if self.unknown is None:
                            log.warning("%s; creating and evicting nothing until it is", unknown)
                        self.unknown = str(unknown)
                    except Exception as exc:
                        loop_failed(log, "reconcile pass failed; retrying at the next tick", exc)
                    else:
                        if self.unknown is not None:
                            log.info("the cluster's state is known again; reconciling")
                        self.unknown = None
                await woken(self.wake, self.interval)
        finally:
            # A stop cut short is asked again by the next leader's pass (level-triggered), a
            # removal cut short at the next round (its job is not marked cleaned up).
            for task in [*self._stopping.values(), *self._removing.values()]:
                task.cancel()
