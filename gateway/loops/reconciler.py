"""The reconciler: desired pods (the database) against observed pods (the runtime), on the leader.

Level-triggered: every pass compares the whole desired state with the whole observed state, so a
missed event, a crash between two steps or a gateway restart changes nothing but the timing.

One pass, in order:
1. observe every pod the runtime has;
2. for each admitted or running job, ask ``domain.lifecycle.decide`` what its pods mean;
3. write the decision's transition (guarded by state and attempt), then act on the runtime:
   delete, restart (delete and create again), create;
4. delete pods no live job wants: pods of unknown, cancelled and requeued jobs, and pods of
   finished jobs that their clean_pod_policy does not keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.backends.base import Gang, PodPlacement, PodStatus, Runtime
from gateway.db import lifecycle as rows
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.spec import JobSpec, SpecLimits
from gateway.domain.lifecycle.decisions import JobView, ReplicaObservation, ReplicaPhase, decide
from gateway.domain.lifecycle.states import JobState

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        engine: AsyncEngine,
        runtime: Runtime,
        *,
        is_leader: Callable[[], bool],
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.runtime = runtime
        self.is_leader = is_leader
        self.interval = interval
        self.clock = clock
        self.wake = asyncio.Event()
        self.passes = 0
        self._specs: dict[str, JobSpec] = {}

    def _spec(self, job_id: str, document: Mapping[str, object]) -> JobSpec:
        spec = self._specs.get(job_id)
        if spec is None:
            checked = check_job_spec(document, SpecLimits(max_replicas=10**6))
            if isinstance(checked, list):
                raise ValueError(f"job {job_id} has a stored spec that no longer checks: {checked}")
            spec = self._specs[job_id] = checked
        return spec

    async def reconcile(self) -> None:
        # 1. Observe.
        observed = await self.runtime.observe()
        jobs = await rows.active_jobs(self.engine)
        now = self.clock()
        wanted: set[tuple[str, str]] = set()
        for job in jobs:
            job_id = str(job.row["id"])
            spec = self._spec(job_id, job.row["spec"])
            gang = Gang(
                job_id=job_id,
                spec=spec,
                namespace=job.namespace,
                attempt=job.row["attempt"],
                placements=tuple(
                    PodPlacement(
                        name=p["pod_name"],
                        role=p["role"],
                        index=p["replica_index"],
                        node=p["node"],
                        cpu_millis=p["cpu_millis"],
                        memory_bytes=p["memory_bytes"],
                        gpu=rows.gpu_slices(p["gpu"]),
                    )
                    for p in job.placements
                ),
            )
            wanted.update((job_id, p.name) for p in gang.placements)
            # 2. Decide.
            decision = decide(self._view(job, spec), self._observations(gang, observed), now)
            # 3. Write, then act.
            if not await rows.apply(self.engine, job, decision, now):
                continue
            if decision.transition is not None:
                log.info(
                    "job %s (%s): %s -> %s (%s)",
                    job.row["name"],
                    job_id,
                    job.row["state"],
                    decision.transition.value,
                    decision.reason,
                )
            await asyncio.gather(
                *(
                    self.runtime.delete(job_id, name)
                    for name in (*decision.delete, *decision.restart)
                )
            )
            if decision.transition in (None, JobState.RUNNING):
                creates = tuple(sorted({*decision.create, *decision.restart}))
                if creates:
                    await self.runtime.create(gang, creates)
            else:
                wanted.difference_update((job_id, p.name) for p in gang.placements)
        # 4. Sweep what no live job wants.
        await self._sweep(observed, wanted)
        self.passes += 1

    @staticmethod
    def _view(job: rows.ActiveJob, spec: JobSpec) -> JobView:
        row = job.row
        return JobView(
            id=str(row["id"]),
            state=JobState(row["state"]),
            spec=spec,
            attempt=row["attempt"],
            restarts=row["restarts"],
            admitted_at=row["admitted_at"].timestamp(),
            started_at=None if row["started_at"] is None else row["started_at"].timestamp(),
        )

    @staticmethod
    def _observations(
        gang: Gang, observed: Mapping[tuple[str, str], PodStatus]
    ) -> list[ReplicaObservation]:
        result = []
        for placement in gang.placements:
            status = observed.get((gang.job_id, placement.name))
            if status is not None and status.attempt != gang.attempt:
                status = None  # a pod of an earlier attempt is not this attempt's replica
            result.append(
                ReplicaObservation(
                    pod_name=placement.name,
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
        strays = [key for key in observed if key not in wanted]
        if not strays:
            return
        states = await rows.job_states(self.engine, sorted({job_id for job_id, _ in strays}))
        deletions = []
        for job_id, name in strays:
            if not self._unwanted(states.get(job_id), observed[(job_id, name)]):
                continue
            log.info("deleting pod %s of job %s: no live job wants it", name, job_id)
            deletions.append(self.runtime.delete(job_id, name))
        await asyncio.gather(*deletions)

    @staticmethod
    def _unwanted(job: Mapping[Any, Any] | None, pod: PodStatus) -> bool:
        """Whether a pod that no admitted or running job wants must go.

        Pods of unknown, queued (an earlier attempt) and cancelled jobs go. A finished job keeps
        what its clean_pod_policy keeps: None keeps every pod, Running keeps the pods that have
        ended (their logs stay readable), All keeps none.
        """
        if job is None or job["state"] not in (JobState.SUCCEEDED.value, JobState.FAILED.value):
            return True
        policy = job["clean_pod_policy"]
        if policy == "None":
            return False
        if policy == "All":
            return True
        return pod.phase in (ReplicaPhase.PENDING, ReplicaPhase.RUNNING)

    async def run(self) -> None:
        while True:
            self.wake.clear()
            if self.is_leader():
                try:
                    await self.reconcile()
                except Exception:
                    log.exception("reconcile pass failed; retrying at the next tick")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval)
