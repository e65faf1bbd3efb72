"""The leader's admission queue: every tenant's pending jobs, in the order admission takes them.

The admission loop keeps one ``AdmissionQueue`` in memory on the leader and changes it by what
changed since its last cycle (a job queued, requeued, admitted or cancelled), instead of reading
and sorting the whole queue every cycle; ``admission.plan`` then looks only at each tenant's head
and a bounded backfill window behind the heads. ``queue_places`` walks the whole queue, on its own
schedule, for the positions users see.

Invariants:

- A job is held once, by id, in its tenant's list; ``put`` of a held id replaces it (a requeued job
  comes back with new times).
- Each tenant's list is sorted by ``queue_key``: priority (higher first), then submit time, then
  id. A tenant's jobs are always taken in that order, so any two queues holding the same jobs
  are equal, whatever the order of the puts and removals that built them (``AdmissionQueue.of``
  builds one from scratch).
- Tenants without jobs are dropped, so the queue's size is that of its jobs.
- Pure: no I/O and no clock; a job in backoff is held like any other, and ``plan`` skips it until
  its ``not_before``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from heapq import heapify, heappop, heappush

from gateway.domain.scheduling.queueing import PendingJob

QueueKey = tuple[int, float, str]


def queue_key(job: PendingJob) -> QueueKey:
    """Where a job stands among its tenant's jobs: priority (higher first), submit time, id."""
    return (-job.priority, job.submitted_at, job.id)


class TenantQueue:
    """One tenant's pending jobs in ``queue_key`` order (two parallel lists: keys for bisect)."""

    __slots__ = ("jobs", "keys")

    def __init__(self) -> None:
        self.keys: list[QueueKey] = []
        self.jobs: list[PendingJob] = []

    def __len__(self) -> int:
        return len(self.jobs)

    def insert(self, job: PendingJob) -> None:
        key = queue_key(job)
        at = bisect_left(self.keys, key)
        self.keys.insert(at, key)
        self.jobs.insert(at, job)

    def remove(self, job: PendingJob) -> None:
        at = bisect_left(self.keys, queue_key(job))
        del self.keys[at], self.jobs[at]


class AdmissionQueue:
    """Pending jobs by tenant, each tenant's in ``queue_key`` order. See the module docstring."""

    __slots__ = ("_by_id", "_tenants")

    def __init__(self) -> None:
        self._by_id: dict[str, PendingJob] = {}
        self._tenants: dict[str, TenantQueue] = {}

    @classmethod
    def of(cls, jobs: Iterable[PendingJob]) -> AdmissionQueue:
        """A queue holding ``jobs`` (the last of a repeated id wins), built by one sort."""
        queue = cls()
        by_id = queue._by_id
        for job in jobs:
            by_id[job.id] = job
        grouped: dict[str, list[PendingJob]] = {}
        for job in by_id.values():
            grouped.setdefault(job.tenant, []).append(job)
        for name, members in grouped.items():
            members.sort(key=queue_key)
            tenant = queue._tenants[name] = TenantQueue()
            tenant.jobs = members
            tenant.keys = [queue_key(job) for job in members]
        return queue

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._by_id

    def __iter__(self) -> Iterator[PendingJob]:
        return iter(self._by_id.values())

    def get(self, job_id: str) -> PendingJob | None:
        return self._by_id.get(job_id)

    def put(self, job: PendingJob) -> None:
        """Hold ``job``, replacing the job held under its id."""
        self.remove(job.id)
        self._by_id[job.id] = job
        tenant = self._tenants.get(job.tenant)
        if tenant is None:
            tenant = self._tenants[job.tenant] = TenantQueue()
        tenant.insert(job)

    def remove(self, job_id: str) -> PendingJob | None:
        """Stop holding the job with this id; the job, or None if it was not held."""
        job = self._by_id.pop(job_id, None)
        if job is not None:
            tenant = self._tenants[job.tenant]
            tenant.remove(job)
            if not tenant:
                del self._tenants[job.tenant]
        return job

    def copy(self) -> AdmissionQueue:
        """A queue holding the same jobs, that later changes of this one leave as it is."""
        copied = AdmissionQueue()
        copied._by_id = dict(self._by_id)
        for name, tenant in self._tenants.items():
            kept = copied._tenants[name] = TenantQueue()
            kept.keys = list(tenant.keys)
            kept.jobs = list(tenant.jobs)
        return copied

    def tenants(self) -> Mapping[str, Sequence[PendingJob]]:
        """Each tenant's jobs in the order admission takes them (read-only views)."""
        return {name: tenant.jobs for name, tenant in self._tenants.items()}

    def same_as(self, other: AdmissionQueue) -> bool:
        """Whether both hold the same jobs in the same order."""
        return self._by_id == other._by_id and {
            name: tenant.jobs for name, tenant in self._tenants.items()
        } == {name: tenant.jobs for name, tenant in other._tenants.items()}


def merge_order(
    tenants: Mapping[str, Sequence[PendingJob]], shares: Mapping[str, float]
) -> Iterator[tuple[PendingJob, int]]:
    """Every job of ``tenants`` in the order a cycle would take them if it admitted none: the
    heads of the tenants merged on (priority, the tenant's weighted dominant share, submit time,
    id); with each job, its 1-based place among its tenant's jobs."""
    heap = [
        (-jobs[0].priority, shares.get(name, 0.0), jobs[0].submitted_at, jobs[0].id, 0, name)
        for name, jobs in tenants.items()
        if jobs
    ]
    heapify(heap)
    while heap:
        *_, position, name = heappop(heap)
        jobs = tenants[name]
        yield jobs[position], position + 1
        following = position + 1
        if following < len(jobs):
            job = jobs[following]
            heappush(
                heap,
                (-job.priority, shares.get(name, 0.0), job.submitted_at, job.id, following, name),
            )
