"""Who may use how much priority: the ceiling an admin grants each tenant.

A job's priority orders the whole queue, across tenants, before fair share (see
``gateway.domain.scheduling.admission``), so a tenant free to pick any priority could put its
jobs ahead of everyone else's. Priority is therefore the admins' to grant: each tenant has a
ceiling, ``max_priority`` (``DEFAULT_MAX_PRIORITY`` unless an admin sets another), and a job above
its tenant's ceiling is refused at submit. Both lie within the spec's ``PRIORITY_RANGE``; a job may
always go below its ceiling, down to the range's minimum.

Invariant: ``above_ceiling`` is the one definition of the rule. The group-commit submit has its
SQL form (``i.priority <= t.max_priority`` in ``gateway.db.submits``), which only skips a job; the
job then goes the careful way, which asks this function, so every refusal is worded here. The
integration tests check that the two forms admit the same jobs.
"""

from __future__ import annotations

from gateway.domain.problems import FieldProblem, pointer

#: The ceiling of a tenant no admin has given one: the spec's default priority, so a tenant's
#: jobs can never go ahead of another's unless an admin says so.
DEFAULT_MAX_PRIORITY = 0


def above_ceiling(priority: int, *, tenant: str, ceiling: int) -> FieldProblem | None:
    """The problem with a job of ``priority`` submitted to ``tenant``, or None if it may run."""
    if priority <= ceiling:
        return None
    return FieldProblem(
        pointer=pointer("priority"),
        detail=(
            f"priority {priority} is above tenant {tenant}'s maximum priority {ceiling} "
            "(an admin sets it)"
        ),
    )
