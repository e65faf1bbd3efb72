"""The job state machine.

``queued -> admitted -> running -> succeeded | failed | cancelled``; an eviction (ready timeout,
node loss, preemption) returns an admitted or running job to ``queued``. Terminal states never
change.

Invariant: ``can_transition(a, b)`` is the single source of which transitions exist, and
``INITIAL_STATE`` of where a job starts; ``gateway.db.transitions``, the one writer of job states,
asks them before every write. The database keeps the same set of states in a check constraint.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    ADMITTED = "admitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def active(self) -> bool:
        """Admitted or running: the job holds cluster resources."""
        return self in (JobState.ADMITTED, JobState.RUNNING)


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
#: The state a job is created in (its 'submitted' event).
INITIAL_STATE = JobState.QUEUED

_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.ADMITTED, JobState.FAILED, JobState.CANCELLED}),
    JobState.ADMITTED: frozenset(
        {JobState.RUNNING, JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def can_transition(current: JobState, target: JobState) -> bool:
    return target in _TRANSITIONS[current]


class EventType(StrEnum):
    """What a row of job_events records."""

    SUBMITTED = "submitted"
    ADMITTED = "admitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"
    RESTARTED = "restarted"
