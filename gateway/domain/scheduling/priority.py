"""Who may use how much priority: priority classes an admin grants, and the bare ceiling before
them.

A job's priority orders the whole queue, across tenants, before fair share (see
``gateway.domain.scheduling.admission``), so a tenant free to pick any priority could put its
jobs ahead of everyone else's. Priority is therefore the admins' to grant, in two ways:

- Priority classes. An admin defines classes (a name, a value within the spec's
  ``PRIORITY_RANGE``, and whether jobs of the class may be preempted) and grants each tenant the
  classes it may use. A job that names a class gets the class's value as its priority, which may
  lie above its tenant's ceiling: the grant is the permission. Its explicit ``priority``, if any,
  must equal that value. A class the tenant was not granted is refused exactly as one that does
  not exist, so a tenant cannot probe for other tenants' classes.
- The ceiling, for a job without a class (every job of a client older than the classes): each
  tenant has ``max_priority`` (``DEFAULT_MAX_PRIORITY`` unless an admin sets another), and a job
  above it is refused. A job may always go below its ceiling, down to the range's minimum. A job
  without a class is preemptible.

A job's class is resolved once, when it is submitted, as Kubernetes resolves a pod's
priorityClassName at admission: the job keeps the value and preemptibility it got, and a later
change to the class (or to the grant) changes only the jobs submitted after it.

Invariant: ``resolve`` is the one definition of the rule, and ``above_ceiling`` its part for a
job without a class. The group-commit submit has the SQL form of the ceiling
(``i.priority <= t.max_priority`` in ``gateway.db.transitions.SUBMIT_BATCH``), which only skips a
job; a job that names a class never goes that way. A skipped job goes the careful way
(``gateway.db.careful_submit``), which asks ``resolve``, so every refusal is worded here. The
integration tests check that the two ways admit the same jobs.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain.problems import FieldProblem, pointer

#: The ceiling of a tenant no admin has given one: the spec's default priority, so a tenant's
#: jobs can never go ahead of another's unless an admin says so.
DEFAULT_MAX_PRIORITY = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class PriorityClass:
    """A class of priority an admin defines: jobs that name it get ``value`` as their priority,
    and may be preempted only when ``preemptible``."""

    name: str
    value: int
    preemptible: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class Resolved:
    """What a job runs with: its priority, the class it named (None: none), and whether it may
    be preempted."""

    priority: int
    priority_class: str | None = None
    preemptible: bool = True


def resolve(
    *,
    tenant: str,
    ceiling: int,
    priority: int | None,
    priority_class: str | None,
    granted: PriorityClass | None,
) -> Resolved | FieldProblem:
    """The priority a job submitted to ``tenant`` runs with, or the problem with it.

    ``priority`` is the job's explicit priority (None: left to its class; a job without a class
    always has one); ``priority_class`` the class it names; ``granted`` that class as the tenant
    was granted it, None when the tenant was not granted it or no such class exists (the answer
    is the same for both).
    """
    if priority_class is None:
        if priority is None:  # a spec without a class always has a priority (0 by default)
            priority = 0
        too_high = above_ceiling(priority, tenant=tenant, ceiling=ceiling)
        return too_high if too_high is not None else Resolved(priority=priority)
    if granted is None or granted.name != priority_class:
        return FieldProblem(
            pointer=pointer("priority_class"),
            detail=(
                f"tenant {tenant} may not use priority class {priority_class!r} "
                "(an admin grants classes to tenants)"
            ),
        )
    if priority is not None and priority != granted.value:
        return FieldProblem(
            pointer=pointer("priority"),
            detail=(
                f"priority {priority} differs from the value of priority class "
                f"{priority_class!r}, {granted.value}: leave priority out, the class sets it"
            ),
        )
    return Resolved(
        priority=granted.value, priority_class=granted.name, preemptible=granted.preemptible
    )


def above_ceiling(priority: int, *, tenant: str, ceiling: int) -> FieldProblem | None:
    """The problem with a job of ``priority`` and no class submitted to ``tenant``, or None if
    it may run."""
    if priority <= ceiling:
        return None
    return FieldProblem(
        pointer=pointer("priority"),
        detail=(
            f"priority {priority} is above tenant {tenant}'s maximum priority {ceiling} "
            "(an admin sets it)"
        ),
    )
