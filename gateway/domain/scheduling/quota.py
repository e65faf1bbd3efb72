"""Quotas: what a tenant may hold, what it holds, and the rules every layer asks of them.

A `Quota` is the whole of what an admin grants a tenant: CPU, memory and GPU shares its admitted
and running jobs may hold together, how many of its jobs may run at once, and how many may wait.
A `TenantUsage` is what its admitted and running jobs hold now. A job's demand is the sum over
its pods, a `Resources`.

The rules, each defined once, here:

- ``Quota.fits_now(usage, demand)``: admission may start the job now. Every resource the job asks
  for stays within the quota, counting what is held, and one more job may run. A resource the
  job does not ask for never stops it, even when the tenant already holds more than its quota
  (a quota lowered below usage stops new jobs that need it, and no others).
- ``Quota.short_of(usage, demand)``: the first resource that keeps it out now, GPU first (the one
  people run out of and ask about), for the words of a waiting reason.
- ``Quota.exceeded_by(demand, borrowing)``: the resources a job asks more of than the tenant
  could ever hold; with ``runs_no_jobs`` and ``queues_no_jobs``, what keeps a job out of this
  tenant forever, refused at submit. A tenant in no cohort (``borrowing`` None) holds at most its
  quota. A cohort member may hold its quota (nominal) plus its borrowing limit of a resource, and
  with no borrowing limit it is never refused on that resource at submit: what it could borrow
  depends on the other members' quotas and lending limits, which change without it, so such a
  job waits with its reason instead (``gateway.domain.scheduling.cohorts``).

Extended resources (any other name nodes advertise: ``rdma/hca``, ``hugepages-2Mi``...) are
limited only where the quota names them (``Quota.extended``, a limit per name; a name it does not
list is not limited, as in a Kubernetes ResourceQuota). They come after ``RESOURCES`` in reasons,
in name order, and are never borrowed in a cohort.

``RESOURCES`` lists the quota's resources in the order reasons name them. The SQL form of
"could ever fit" that the group-commit submit runs (``gateway.db.tenants.could_ever_hold_sql``) is
generated from it, and a test holds the two forms to the same answers on random cases.

Invariant: every value is frozen; ``TenantUsage.plus`` and ``minus`` return a new value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.domain.resources import Extended, Resources, amount_of, merged

#: The quota's resources, in the order reasons name them: GPU first.
RESOURCES = ("gpu_shares", "cpu_millis", "memory_bytes")
#: Each resource as the words of a problem name it (the API's quota keys).
RESOURCE_NAMES = {"gpu_shares": "gpu", "cpu_millis": "cpu", "memory_bytes": "memory"}


class BorrowingLimit(Protocol):
    """How far above its quota a cohort member may go, per resource (None: no limit); a
    ``gateway.domain.scheduling.cohorts.Limits``."""

    def of(self, resource: str) -> int | None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantUsage:
    """What the tenant's admitted and running jobs hold, and how many they are."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu_shares: int = 0
    running_jobs: int = 0
    extended: Extended = ()

    def plus(self, demand: Resources, jobs: int = 1) -> TenantUsage:
        """The usage once ``jobs`` more jobs (one by default), with ``demand`` in all, are
        admitted."""
        return TenantUsage(
            cpu_millis=self.cpu_millis + demand.cpu_millis,
            memory_bytes=self.memory_bytes + demand.memory_bytes,
            gpu_shares=self.gpu_shares + demand.gpu_shares,
            running_jobs=self.running_jobs + jobs,
            extended=merged(self.extended, demand.extended),
        )

    def minus(self, held: Resources, jobs: int = 1) -> TenantUsage:
        """The usage once ``jobs`` of its jobs (one by default), holding ``held`` in all, leave
        the cluster."""
        return TenantUsage(
            cpu_millis=self.cpu_millis - held.cpu_millis,
            memory_bytes=self.memory_bytes - held.memory_bytes,
            gpu_shares=self.gpu_shares - held.gpu_shares,
            running_jobs=self.running_jobs - jobs,
            extended=merged(self.extended, held.extended, -1),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Shortfall:
    """One resource the quota is short of: the job needs ``need``, ``left`` of ``limit`` remain."""

    resource: str  # one of RESOURCES, or an extended resource's name
    need: int
    left: int
    limit: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Quota:
    """What an admin grants a tenant. Amounts in Muster's units (millicores, bytes, shares)."""

    cpu_millis: int
    memory_bytes: int
    gpu_shares: int
    max_running_jobs: int
    max_queued_jobs: int
    #: A limit per extended resource, sorted by name (0: none of it); names absent: no limit.
    extended: tuple[tuple[str, int], ...] = ()

    def limit_of(self, name: str) -> int | None:
        """The quota's limit on the extended resource ``name``, None when it sets none."""
        for own, limit in self.extended:
            if own == name:
                return limit
        return None

    def extended_short(self, usage: TenantUsage, demand: Resources) -> Shortfall | None:
        """The first extended resource (in name order) whose limit keeps the job out now."""
        for name, need in demand.extended:
            limit = self.limit_of(name)
            if limit is None:
                continue
            held = amount_of(usage.extended, name)
            if held + need > limit:
                return Shortfall(resource=name, need=need, left=max(limit - held, 0), limit=limit)
        return None

    def fits_now(self, usage: TenantUsage, demand: Resources) -> bool:
        """Whether a job with ``demand`` may be admitted now, over ``usage``."""
        return (
            usage.running_jobs < self.max_running_jobs
            and not (demand.extended and self.extended_short(usage, demand) is not None)
            and not (demand.gpu_shares and usage.gpu_shares + demand.gpu_shares > self.gpu_shares)
            and not (demand.cpu_millis and usage.cpu_millis + demand.cpu_millis > self.cpu_millis)
            and not (
                demand.memory_bytes and usage.memory_bytes + demand.memory_bytes > self.memory_bytes
            )
        )

    def runs_another(self, usage: TenantUsage) -> bool:
        """Whether one more of the tenant's jobs may run."""
        return usage.running_jobs < self.max_running_jobs

    def short_of(self, usage: TenantUsage, demand: Resources) -> Shortfall | None:
        """The first resource (in ``RESOURCES`` order) that keeps the job out now, or None."""
        for resource in RESOURCES:
            need = getattr(demand, resource)
            held, limit = getattr(usage, resource), getattr(self, resource)
            if need and held + need > limit:
                left = max(limit - held, 0)
                return Shortfall(resource=resource, need=need, left=left, limit=limit)
        return self.extended_short(usage, demand) if demand.extended else None

    def exceeded_by(
        self, demand: Resources, borrowing: BorrowingLimit | None = None
    ) -> tuple[str, ...]:
        """The resources ``demand`` asks more of than the tenant could ever hold, in
        ``RESOURCES`` order, then extended resources by name: a job with any can never run in
        this tenant. ``borrowing``: the tenant's borrowing limit in its cohort, None when it is
        in no cohort (extended resources are never borrowed)."""
        exceeded = tuple(r for r in RESOURCES if getattr(demand, r) > self.ceiling(r, borrowing))
        if not demand.extended:
            return exceeded
        return exceeded + tuple(
            name
            for name, need in demand.extended
            if (limit := self.limit_of(name)) is not None and need > limit
        )

    def ceiling(self, resource: str, borrowing: BorrowingLimit | None = None) -> float:
        """The most of ``resource`` the tenant could ever hold: its quota, plus its borrowing
        limit in a cohort (infinite with none)."""
        nominal: int = getattr(self, resource)
        if borrowing is None:
            return nominal
        limit = borrowing.of(resource)
        return float("inf") if limit is None else nominal + limit

    @property
    def runs_no_jobs(self) -> bool:
        return self.max_running_jobs < 1

    @property
    def queues_no_jobs(self) -> bool:
        return self.max_queued_jobs < 1

    def could_ever_hold(self, demand: Resources, borrowing: BorrowingLimit | None = None) -> bool:
        """Whether a job with ``demand`` could ever be queued and run in this tenant: the
        negation of everything ``exceeded_by``, ``runs_no_jobs`` and ``queues_no_jobs`` say."""
        return not (self.exceeded_by(demand, borrowing) or self.runs_no_jobs or self.queues_no_jobs)
