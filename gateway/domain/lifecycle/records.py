"""Jobs as recorded: the job, its events, and an admitted or running job as the reconciler
drives it.

These are what the database layer hands the API and the loops (``gateway.db`` maps its rows to
them, and only it does), so no layer above it reads a row.

Invariants:
- Every value is frozen and keyword-only; ids are the text of the job's UUID.
- A stored spec is kept as the document Muster stored (``to_document``'s output, what the API
  returns); ``gateway.domain.jobs.spec.from_document`` is the one reader of it.
- Timestamps are timezone-aware datetimes in UTC.
- A ``Job`` has a ``queue`` place only while it is queued, and only once an admission cycle has
  placed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.domain.jobs.spec import CleanPodPolicy, Framework
from gateway.domain.lifecycle.states import EventType, JobState
from gateway.domain.scheduling.queueing import Placement

__all__ = ["ActiveJob", "Job", "JobEvent", "PodOwner", "QueuePlace"]


@dataclass(frozen=True, kw_only=True, slots=True)
class QueuePlace:
    """Where a queued job stood in the last admission cycle: 1 is next, overall and among its
    tenant's waiting jobs."""

    position: int
    tenant_position: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """A job as stored: what GET /v1/jobs/{id} shows, and what a webhook event carries.

    ``reason`` and ``message`` say why it is in its state (a waiting reason while queued, the
    lifecycle's or a client's words after a change); ``spec`` is the stored document, and
    ``labels`` its labels. ``priority_class`` is the class it was submitted with (None: none),
    and ``preemptible`` whether it may be preempted: both, like ``priority``, fixed at submit.
    """

    id: str
    tenant: str
    name: str
    framework: Framework
    state: JobState
    reason: str | None
    message: str | None
    priority: int
    priority_class: str | None
    preemptible: bool
    attempt: int
    labels: Mapping[str, str]
    spec: Mapping[str, Any]
    submitted_by: str | None
    created_at: datetime
    updated_at: datetime
    admitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    queue: QueuePlace | None


@dataclass(frozen=True, kw_only=True, slots=True)
class JobEvent:
    """One entry of a job's history (job_events): a change of state (``from_state`` ->
    ``to_state``; a submit has no ``from_state``) or a restart, which changes none. ``data``
    is the event's details as stored (placements, restarted pods, the attempt)."""

    id: int
    job_id: str
    tenant: str
    type: EventType
    from_state: JobState | None
    to_state: JobState | None
    reason: str | None
    message: str | None
    actor: str | None
    data: Mapping[str, Any]
    created_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class ActiveJob:
    """An admitted or running job as the reconciler drives it: its attempt and the restarts it
    spent, its stored spec (None when the reader said it has it already: a stored spec never
    changes), its tenant's namespace and the live placements of this attempt (in pod-name
    order)."""

    id: str
    name: str
    tenant: str
    state: JobState
    attempt: int
    restarts: int
    spec: Mapping[str, Any] | None
    admitted_at: datetime
    started_at: datetime | None
    namespace: str
    placements: tuple[Placement, ...]
    preemptions: int = 0  # of its attempts, those that ended in a preemption


@dataclass(frozen=True, kw_only=True, slots=True)
class PodOwner:
    """The job a pod belongs to, as the sweep of pods no live gang wants reads it: its state,
    attempt, and the clean-pod policy of its spec (which pods a finished job keeps)."""

    id: str
    state: JobState
    attempt: int
    clean_pod_policy: CleanPodPolicy
