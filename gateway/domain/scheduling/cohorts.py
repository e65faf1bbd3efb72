"""Cohorts: tenants that lend each other the quota they leave idle.

A tenant's quota (``Quota``) is its *nominal* quota. A tenant in a cohort may hold more than its
nominal quota of a resource while other members leave theirs idle, within two limits per
resource (``CohortTerms``):

- the *lending limit*: how much of its nominal quota it lends out (None: all of it). What it
  never lends, ``nominal - lendable``, is *guaranteed*: no one else ever holds it;
- the *borrowing limit*: how far above nominal it may go (None: as far as the cohort lets it).

Per resource, with ``lendable = min(lending limit, nominal)`` and ``guaranteed = nominal -
lendable``, a cohort's *pool* is the sum of its members' lendable quota, and a member *draws*
``max(0, usage - guaranteed)`` on it. The rules, defined once, here (``CohortBook``):

- a job fits when, for every resource it asks for, its tenant stays within nominal plus its
  borrowing limit and the cohort's draws stay within its pool (the tenant's running-job cap is
  the tenant's own and never borrowed);
- a tenant *borrows* ``max(0, usage - nominal)`` (outside a cohort, nothing: it lends and
  borrows nothing, even holding more than a quota lowered below its usage);
- what the borrowers hold is lent by the members that leave lendable quota idle: each member
  lends a share of the borrowed total in proportion to its idle lendable quota, so no member
  ever lends more than its lending limit (the pool is never overdrawn: the borrowed total is at
  most the idle lendable total).

A tenant in no cohort holds at most its nominal quota, as before cohorts: ``CohortBook`` then
asks ``Quota.fits_now``. Extended resources (``rdma/hca``, ``hugepages-2Mi``...) are never lent
or borrowed: a member holds at most its own quota of them, in a cohort or not.

Invariants: values are frozen except ``CohortBook``, which a cycle owns and changes only through
``take`` and ``release`` (a preempted gang); every amount is in Muster's units (millicores,
bytes, GPU shares).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.domain.resources import Resources
from gateway.domain.scheduling.quota import RESOURCES, Quota, TenantUsage


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """A limit per resource; None: no limit of this kind."""

    cpu_millis: int | None = None
    memory_bytes: int | None = None
    gpu_shares: int | None = None

    def of(self, resource: str) -> int | None:
        value: int | None = getattr(self, resource)
        return value


@dataclass(frozen=True, kw_only=True, slots=True)
class CohortTerms:
    """A tenant's membership: its cohort and its two limits."""

    cohort: str
    borrowing_limit: Limits = field(default_factory=Limits)
    lending_limit: Limits = field(default_factory=Limits)


@dataclass(frozen=True, kw_only=True, slots=True)
class Member:
    """What the book needs of a tenant: its nominal quota, usage and cohort terms (None: in no
    cohort)."""

    quota: Quota
    usage: TenantUsage
    terms: CohortTerms | None = None


def _resources(amounts: Mapping[str, int]) -> Resources:
    """A ``Resources`` of the cohort rules' resources (``RESOURCES``); extended resources are
    neither lent nor borrowed."""
    return Resources(
        cpu_millis=amounts["cpu_millis"],
        memory_bytes=amounts["memory_bytes"],
        gpu_shares=amounts["gpu_shares"],
    )


def _amount(value: Resources | TenantUsage | Quota, resource: str) -> int:
    amount: int = getattr(value, resource)
    return amount


def lendable(member: Member, resource: str) -> int:
    """How much of its nominal ``resource`` the member lends to its cohort."""
    nominal = _amount(member.quota, resource)
    if member.terms is None:
        return 0
    limit = member.terms.lending_limit.of(resource)
    return max(0, nominal if limit is None else min(limit, nominal))


def _draw(member: Member, resource: str, usage: int) -> int:
    """What the member draws on its cohort's pool when it holds ``usage``."""
    guaranteed = _amount(member.quota, resource) - lendable(member, resource)
    return max(0, usage - guaranteed)


@dataclass(frozen=True, kw_only=True, slots=True)
class CohortShortfall:
    """Why a cohort member's job does not fit: ``resource`` needs ``need`` over ``held``, and
    either its borrowing ``limit`` above ``nominal`` is reached, or the cohort has only
    ``idle`` left to lend (``lent_out``: the job would fit the tenant's own nominal quota,
    which other members hold now)."""

    resource: str
    need: int
    held: int
    nominal: int
    limit: int | None = None
    idle: int | None = None
    lent_out: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Standing:
    """A member's quota as people read it: nominal, what it borrows and what it lends now."""

    nominal: Resources
    borrowed: Resources
    lent: Resources


class CohortBook:
    """The tenants' usage during one admission cycle, and what the cohort rules allow.

    Built from every tenant (``members``); ``fits`` answers whether a job may be admitted now,
    ``take`` records an admission. Tenants of no cohort are held to their nominal quota.
    """

    def __init__(self, members: Mapping[str, Member]) -> None:
        self._members = dict(members)
        self._usage = {name: member.usage for name, member in members.items()}
        # cohort -> resource -> (pool, drawn)
        self._pools: dict[str, dict[str, list[int]]] = {}
        for member in members.values():
            if member.terms is None:
                continue
            pools = self._pools.setdefault(member.terms.cohort, {r: [0, 0] for r in RESOURCES})
            for resource in RESOURCES:
                pools[resource][0] += lendable(member, resource)
                pools[resource][1] += _draw(member, resource, _amount(member.usage, resource))

    def usage(self, tenant: str) -> TenantUsage:
        return self._usage[tenant]

    def fits(self, tenant: str, demand: Resources) -> bool:
        """Whether a job of ``tenant`` with ``demand`` may be admitted now."""
        member = self._members[tenant]
        usage = self._usage[tenant]
        if member.terms is None:
            return member.quota.fits_now(usage, demand)
        if not member.quota.runs_another(usage):
            return False
        if demand.extended and member.quota.extended_short(usage, demand) is not None:
            return False  # extended resources are never lent: the tenant's own quota only
        pools = self._pools[member.terms.cohort]
        for resource in RESOURCES:
            need = _amount(demand, resource)
            if not need:
                continue  # a resource the job does not ask for never stops it
            held = _amount(usage, resource)
            limit = member.terms.borrowing_limit.of(resource)
            if limit is not None and held + need > _amount(member.quota, resource) + limit:
                return False
            pool, drawn = pools[resource]
            more = _draw(member, resource, held + need) - _draw(member, resource, held)
            if more and drawn + more > pool:
                return False
        return True

    def short_of(self, tenant: str, demand: Resources) -> CohortShortfall | None:
        """For a cohort member's job that does not fit: the first resource (in ``RESOURCES``
        order) that keeps it out, and which limit; None when it fits on resources."""
        member, usage = self._members[tenant], self._usage[tenant]
        if member.terms is None:
            return None
        pools = self._pools[member.terms.cohort]
        for resource in RESOURCES:
            need, held = _amount(demand, resource), _amount(usage, resource)
            if not need:
                continue
            nominal = _amount(member.quota, resource)
            limit = member.terms.borrowing_limit.of(resource)
            if limit is not None and held + need > nominal + limit:
                return CohortShortfall(
                    resource=resource, need=need, held=held, nominal=nominal, limit=limit
                )
            pool, drawn = pools[resource]
            more = _draw(member, resource, held + need) - _draw(member, resource, held)
            if more and drawn + more > pool:
                return CohortShortfall(
                    resource=resource,
                    need=need,
                    held=held,
                    nominal=nominal,
                    idle=max(0, pool - drawn),
                    lent_out=held + need <= nominal,
                )
        return None

    def borrows_for(self, tenant: str, demand: Resources) -> Resources:
        """How much of ``demand`` would be held above the tenant's nominal quota."""
        member, usage = self._members[tenant], self._usage[tenant]
        above = {}
        for resource in RESOURCES:
            nominal, held = _amount(member.quota, resource), _amount(usage, resource)
            need = _amount(demand, resource)
            above[resource] = max(0, held + need - max(nominal, held))
        return _resources(above)

    def take(self, tenant: str, demand: Resources, jobs: int = 1) -> None:
        """Record the admission of ``jobs`` jobs of ``tenant`` (one by default) with ``demand``
        in all."""
        member = self._members[tenant]
        usage = self._usage[tenant]
        if member.terms is not None:
            pools = self._pools[member.terms.cohort]
            for resource in RESOURCES:
                held = _amount(usage, resource)
                need = _amount(demand, resource)
                pools[resource][1] += _draw(member, resource, held + need) - _draw(
                    member, resource, held
                )
        self._usage[tenant] = usage.plus(demand, jobs)

    def release(self, tenant: str, held: Resources, jobs: int = 1) -> None:
        """Record that ``jobs`` jobs of ``tenant`` holding ``held`` in all leave the cluster
        (preempted): ``take`` of the same amount and jobs undoes it exactly."""
        member = self._members[tenant]
        usage = self._usage[tenant]
        after = usage.minus(held, jobs)
        if member.terms is not None:
            pools = self._pools[member.terms.cohort]
            for resource in RESOURCES:
                pools[resource][1] += _draw(member, resource, _amount(after, resource)) - _draw(
                    member, resource, _amount(usage, resource)
                )
        self._usage[tenant] = after

    def standing(self, tenant: str) -> Standing:
        """The tenant's nominal, borrowed and lent quota now."""
        return standings(self._current())[tenant]

    def _current(self) -> dict[str, Member]:
        return {
            name: Member(quota=m.quota, usage=self._usage[name], terms=m.terms)
            for name, m in self._members.items()
        }


def standings(members: Mapping[str, Member]) -> dict[str, Standing]:
    """Every tenant's nominal, borrowed and lent quota (see the module docstring)."""
    by_cohort: dict[str, list[str]] = {}
    for name, member in members.items():
        if member.terms is not None:
            by_cohort.setdefault(member.terms.cohort, []).append(name)
    lent: dict[str, dict[str, int]] = {name: dict.fromkeys(RESOURCES, 0) for name in members}
    for names in by_cohort.values():
        for resource in RESOURCES:
            borrowed = sum(_borrowed(members[n], resource) for n in names)
            idle = {n: _idle_lendable(members[n], resource) for n in names}
            total_idle = sum(idle.values())
            if not borrowed or not total_idle:
                continue
            shares = _shares(borrowed, idle, total_idle)
            for name, share in shares.items():
                lent[name][resource] = share
    return {
        name: Standing(
            nominal=_resources({r: _amount(m.quota, r) for r in RESOURCES}),
            borrowed=_resources({r: _borrowed(m, r) for r in RESOURCES}),
            lent=_resources(lent[name]),
        )
        for name, m in members.items()
    }


def _borrowed(member: Member, resource: str) -> int:
    """What the member holds above its nominal quota, on lent quota: nothing outside a cohort
    (a tenant there may hold more than a quota lowered below its usage, and borrows none)."""
    if member.terms is None:
        return 0
    return max(0, _amount(member.usage, resource) - _amount(member.quota, resource))


def _idle_lendable(member: Member, resource: str) -> int:
    """The part of the member's lendable quota it does not hold itself."""
    nominal, held = _amount(member.quota, resource), _amount(member.usage, resource)
    return max(0, min(lendable(member, resource), nominal - held))


def _shares(total: int, weights: Mapping[str, int], weight_sum: int) -> dict[str, int]:
    """``total`` (at most ``weight_sum`` of it) split in proportion to ``weights`` by largest
    remainders, in integers: no share is above its weight."""
    total = min(total, weight_sum)
    shares = {name: total * weight // weight_sum for name, weight in weights.items()}
    remainders = {name: total * weight % weight_sum for name, weight in weights.items()}
    left = total - sum(shares.values())
    for name in sorted(remainders, key=lambda n: (-remainders[n], n))[:left]:
        shares[name] += 1
    return shares


def idle_quota(members: Iterable[Member]) -> Resources:
    """A cohort's idle lendable quota: what its members could still lend."""
    members = list(members)
    amounts = {}
    for resource in RESOURCES:
        borrowed = sum(_borrowed(m, resource) for m in members)
        amounts[resource] = max(0, sum(_idle_lendable(m, resource) for m in members) - borrowed)
    return _resources(amounts)
