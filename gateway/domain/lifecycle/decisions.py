"""Lifecycle: what an admitted job's reconciler does next, given what its replicas are doing now.

`decide(job, replicas, now)` is a pure function from a `JobView` (state, spec, attempt, restarts
spent, times), one `ReplicaObservation` per pod of the gang and the time, to a `Decision`: the
state transition with a reason, and the pods to create, restart and delete. The Kubernetes and the
local backend's reconcilers both call it and carry the decision out; neither decides anything
itself. The semantics follow the Kubeflow training operator.

Each call walks one numbered pipeline; the first step that has something to say wins:

1. cancel: delete every pod that exists, nothing else (the shell has written the state already);
2. success per the success policy (chief or master, else worker 0, else every replica; or
   `AllWorkers`), which beats any failure seen in the same round;
3. failure: the active deadline, a replica failed for good (`Never`, or an exit code of 1-127
   under `ExitCode`), or a restart that the backoff limit no longer allows;
4. eviction of the whole gang (a lost node, or the ready timeout), as a requeue with backoff or,
   past the requeue limit, a failure;
5. restarts of exited replicas and creation of missing ones;
6. the first time the whole gang runs, `admitted -> running`.

Invariants of every decision:

- A decision that ends or requeues the job (`succeeded`, `failed`, `queued`) creates and restarts
  nothing; a transition is always one that `can_transition` allows from the job's state.
- Every pod it names is an observed pod: `create` only missing ones, `restart` only exited ones
  (succeeded or failed), `delete` only existing ones (never a missing one).
- Every tuple of pod names is sorted and free of repeats; `restarts_used == len(restart)`, and a
  decision never takes the job's restarts past its backoff limit.
- `reason` and `message` are set exactly when there is a transition or a restart.
- A job that is neither admitted nor running decides nothing, unless it is cancelled.
- Deterministic: the same inputs, in any order of `replicas`, give an equal decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.domain.jobs.spec import CleanPodPolicy, JobSpec, RestartPolicy, SuccessPolicy
from gateway.domain.lifecycle.states import JobState

__all__ = [
    "DEFAULT_REQUEUE_LIMIT",
    "REQUEUE_BACKOFF_BASE_SECONDS",
    "REQUEUE_BACKOFF_CAP_SECONDS",
    "Decision",
    "JobView",
    "Reason",
    "ReplicaObservation",
    "ReplicaPhase",
    "decide",
    "requeue_backoff",
]

DEFAULT_REQUEUE_LIMIT = 5
REQUEUE_BACKOFF_BASE_SECONDS = 60.0
REQUEUE_BACKOFF_CAP_SECONDS = 3600.0
# Roles whose index 0 decides success under the default policy, in order of preference.
LEADER_ROLES = ("chief", "master")
WORKER_ROLE = "worker"
# Exit codes from 128 up are deaths by signal (128 + N: 137 is SIGKILL, often the OOM killer).
FIRST_SIGNAL_EXIT_CODE = 128


class ReplicaPhase(StrEnum):
    PENDING = "Pending"  # created, not running yet
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"  # exited 0
    FAILED = "Failed"  # exited non-zero
    MISSING = "Missing"  # no pod or process: never created, deleted, or lost


class Reason(StrEnum):
    ALL_REPLICAS_RUNNING = "AllReplicasRunning"
    CHIEF_SUCCEEDED = "ChiefSucceeded"
    MASTER_SUCCEEDED = "MasterSucceeded"
    WORKER0_SUCCEEDED = "Worker0Succeeded"
    ALL_WORKERS_SUCCEEDED = "AllWorkersSucceeded"
    ALL_REPLICAS_SUCCEEDED = "AllReplicasSucceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    PERMANENT_EXIT_CODE = "PermanentExitCode"
    REPLICA_FAILED = "ReplicaFailed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    READY_TIMEOUT = "ReadyTimeout"
    NODE_LOST = "NodeLost"
    REQUEUE_LIMIT_EXCEEDED = "RequeueLimitExceeded"
    REPLICA_RESTARTED = "ReplicaRestarted"


_LEADER_REASONS = {"chief": Reason.CHIEF_SUCCEEDED, "master": Reason.MASTER_SUCCEEDED}


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplicaObservation:
    """One pod of the gang as the backend sees it now."""

    pod_name: str
    role: str
    index: int
    phase: ReplicaPhase
    exit_code: int | None = None  # set once it has exited (succeeded or failed)
    node_ready: bool = True  # False when its node went NotReady or disappeared

    @property
    def exists(self) -> bool:
        return self.phase is not ReplicaPhase.MISSING


@dataclass(frozen=True, kw_only=True, slots=True)
class JobView:
    """What the reconciler knows of the job, read from its row."""

    id: str
    state: JobState
    spec: JobSpec
    attempt: int = 0  # evictions and preemptions so far
    restarts: int = 0  # pod restarts already spent in this attempt
    # Preemptions among the attempts: not the job's fault, so not counted against the limit.
    preemptions: int = 0
    admitted_at: float
    started_at: float | None = None
    cancelled: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """What the shell does next. Pod names are sorted; see the module docstring for invariants."""

    transition: JobState | None = None
    reason: Reason | None = None
    message: str | None = None
    create: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()  # delete, then create again; each spends one restart
    delete: tuple[str, ...] = ()
    requeue_not_before: float | None = None  # set with a transition to queued

    @property
    def restarts_used(self) -> int:
        return len(self.restart)


def requeue_backoff(attempt: int) -> float:
    """Seconds an evicted job waits before admission: 60 s doubling per attempt, capped at 1 h."""
    # min() on the exponent first keeps 2**attempt small for absurd attempt counts.
    doubled = REQUEUE_BACKOFF_BASE_SECONDS * 2.0 ** min(max(attempt, 0), 32)
    return min(doubled, REQUEUE_BACKOFF_CAP_SECONDS)


def decide(
    job: JobView,
    replicas: Sequence[ReplicaObservation],
    now: float,
    *,
    requeue_limit: int = DEFAULT_REQUEUE_LIMIT,
) -> Decision:
    """The next step for an admitted or running job; see the module docstring for the pipeline.

    ``replicas`` holds exactly one observation per pod of the spec's gang, missing pods included;
    anything else is a bug in the caller and raises ``ValueError``.
    """
    gang = _gang(job.spec, replicas)
    existing = _names(r for r in gang if r.exists)
    # 1. Cancel: the shell wrote the state, possibly already `cancelled`; only cleanup is left.
    if job.cancelled:
        return Decision(delete=existing)
    if not job.state.active:
        return Decision()
    # 2. Success.
    success = _success(job.spec, gang)
    if success is not None:
        reason, message = success
        delete = _cleanup(job.spec.run_policy.clean_pod_policy, gang)
        return Decision(
            transition=JobState.SUCCEEDED, reason=reason, message=message, delete=delete
        )
    # 3. Failure: the deadline, then replicas that failed for good or cannot restart.
    deadline = _deadline(job, now)
    if deadline is not None:
        return Decision(
            transition=JobState.FAILED,
            reason=Reason.DEADLINE_EXCEEDED,
            message=deadline,
            delete=existing,
        )
    failure = _permanent_failure(job.spec, gang)
    restart, notes, exhausted = _restarts(job, gang)
    failure = failure or exhausted
    if failure is not None:
        reason, message = failure
        delete = _cleanup(job.spec.run_policy.clean_pod_policy, gang)
        return Decision(transition=JobState.FAILED, reason=reason, message=message, delete=delete)
    # 4. Eviction of the whole gang.
    eviction = _eviction(job, gang, now)
    if eviction is not None:
        return _evict(job, eviction, existing, now, requeue_limit)
    # 5. Restarts and creates.
    create = _names(r for r in gang if r.phase is ReplicaPhase.MISSING)
    if restart:
        return Decision(
            reason=Reason.REPLICA_RESTARTED,
            message="; ".join(notes),
            create=create,
            restart=restart,
        )
    if create:
        return Decision(create=create)
    # 6. The whole gang runs for the first time.
    if job.state is JobState.ADMITTED and all(_started(r) for r in gang):
        return Decision(
            transition=JobState.RUNNING,
            reason=Reason.ALL_REPLICAS_RUNNING,
            message=f"all {_plural(len(gang), 'replica')} are running",
        )
    return Decision()


def _gang(spec: JobSpec, replicas: Sequence[ReplicaObservation]) -> tuple[ReplicaObservation, ...]:
    """The observations sorted by pod name, checked to be exactly the spec's pods."""
    expected = {(r.role, index) for r in spec.replicas for index in range(r.count)}
    seen = {(r.role, r.index) for r in replicas}
    names = {r.pod_name for r in replicas}
    if seen != expected or len(seen) != len(replicas) or len(names) != len(replicas):
        missing = ", ".join(f"{role} {i}" for role, i in sorted(expected - seen)) or "none"
        extra = ", ".join(f"{role} {i}" for role, i in sorted(seen - expected)) or "none"
        raise ValueError(
            f"job {spec.name}: observations must name each of its {len(expected)} pods exactly "
            f"once (got {len(replicas)}; missing: {missing}; unexpected: {extra})"
        )
    return tuple(sorted(replicas, key=lambda r: r.pod_name))


def _names(replicas: Iterable[ReplicaObservation]) -> tuple[str, ...]:
    return tuple(sorted(r.pod_name for r in replicas))


def _policy(spec: JobSpec, replica: ReplicaObservation) -> RestartPolicy:
    role = spec.replica(replica.role)
    assert role is not None  # _gang checked every role against the spec
    return role.restart_policy


def _started(replica: ReplicaObservation) -> bool:
    return replica.phase in (ReplicaPhase.RUNNING, ReplicaPhase.SUCCEEDED)


def _succeeded(replicas: Sequence[ReplicaObservation]) -> bool:
    return all(r.phase is ReplicaPhase.SUCCEEDED for r in replicas)


def _success(spec: JobSpec, gang: Sequence[ReplicaObservation]) -> tuple[Reason, str] | None:
    leader_role = next((role for role in LEADER_ROLES if spec.replica(role) is not None), None)
    leader = [r for r in gang if r.role == leader_role and r.index == 0]
    workers = [r for r in gang if r.role == WORKER_ROLE]
    if spec.run_policy.success_policy is SuccessPolicy.ALL_WORKERS and workers:
        if not _succeeded([*workers, *leader]):
            return None
        also = f", and so did the {leader_role}" if leader_role else ""
        return (
            Reason.ALL_WORKERS_SUCCEEDED,
            f"all {_plural(len(workers), 'worker')} succeeded{also}",
        )
    if leader_role is not None:
        deciding, reason = leader, _LEADER_REASONS[leader_role]
    elif workers:
        deciding, reason = [r for r in workers if r.index == 0], Reason.WORKER0_SUCCEEDED
    else:
        if not _succeeded(gang):
            return None
        return Reason.ALL_REPLICAS_SUCCEEDED, f"all {_plural(len(gang), 'replica')} succeeded"
    if not _succeeded(deciding):
        return None
    return reason, f"{_who(deciding[0])} {_ended(deciding[0])}"


def cleaned_up(policy: CleanPodPolicy, phase: ReplicaPhase) -> bool:
    """Whether a finished job's pod in ``phase`` goes, by the job's clean_pod_policy: All
    removes every pod, Running the pods still pending or running (so the logs of those that
    ended stay readable), None keeps every pod."""
    if policy is CleanPodPolicy.ALL:
        return True
    if policy is CleanPodPolicy.RUNNING:
        return phase in (ReplicaPhase.PENDING, ReplicaPhase.RUNNING)
    return False


def unwanted(state: JobState | None, policy: CleanPodPolicy, phase: ReplicaPhase) -> bool:
    """Whether a pod that no admitted or running job wants must go: every pod of an unknown
    (None), queued (an earlier attempt) or cancelled job, and what a finished job's
    clean_pod_policy does not keep."""
    if state not in (JobState.SUCCEEDED, JobState.FAILED):
        return True
    return cleaned_up(policy, phase)


def _cleanup(policy: CleanPodPolicy, gang: Sequence[ReplicaObservation]) -> tuple[str, ...]:
    return _names(r for r in gang if r.exists and cleaned_up(policy, r.phase))


def _deadline(job: JobView, now: float) -> str | None:
    seconds = job.spec.run_policy.active_deadline_seconds
    since, event = (
        (job.admitted_at, "admitted") if job.started_at is None else (job.started_at, "started")
    )
    if seconds is None or since + seconds > now:
        return None
    return f"the job was {event} {now - since:.0f} s ago, past its active deadline of {seconds} s"


def _retryable(exit_code: int | None) -> bool:
    """Whether ``ExitCode`` retries a failure: signals (>= 128) yes, the program's own codes no.

    No exit code (the pod vanished mid-run) counts as retryable, as in the training operator; a
    negative code is how Python reports a local process killed by a signal, so it is too.
    """
    return exit_code is None or exit_code < 0 or exit_code >= FIRST_SIGNAL_EXIT_CODE


def _permanent_failure(
    spec: JobSpec, gang: Sequence[ReplicaObservation]
) -> tuple[Reason, str] | None:
    for replica in gang:
        if replica.phase is not ReplicaPhase.FAILED:
            continue
        policy = _policy(spec, replica)
        if policy is RestartPolicy.NEVER:
            return (
                Reason.REPLICA_FAILED,
                f"{_who(replica)} {_ended(replica)}, and its restart policy is Never",
            )
        if policy is RestartPolicy.EXIT_CODE and not _retryable(replica.exit_code):
            return (
                Reason.PERMANENT_EXIT_CODE,
                f"{_who(replica)} {_ended(replica)}, which the ExitCode policy treats as "
                "permanent (1-127)",
            )
    return None


def _wants_restart(spec: JobSpec, replica: ReplicaObservation) -> bool:
    """A failed replica (its failure not permanent, checked before) or a succeeded `Always` one.

    Success of a replica that ends the job never gets here: step 2 returned first.
    """
    policy = _policy(spec, replica)
    if replica.phase is ReplicaPhase.FAILED:
        return policy is not RestartPolicy.NEVER
    return replica.phase is ReplicaPhase.SUCCEEDED and policy is RestartPolicy.ALWAYS


def _restarts(
    job: JobView, gang: Sequence[ReplicaObservation]
) -> tuple[tuple[str, ...], list[str], tuple[Reason, str] | None]:
    """The pods to restart, a note for each, or the failure when the backoff limit is reached."""
    limit = job.spec.run_policy.backoff_limit
    restart: list[str] = []
    notes: list[str] = []
    for replica in gang:  # in pod-name order, so the budget is spent deterministically
        if not _wants_restart(job.spec, replica):
            continue
        spent = job.restarts + len(restart)
        if spent >= limit:
            message = (
                f"{_who(replica)} {_ended(replica)}, and the job has spent {spent} of its "
                f"{_plural(limit, 'restart')} (backoff limit)"
            )
            return (), [], (Reason.BACKOFF_LIMIT_EXCEEDED, message)
        restart.append(replica.pod_name)
        notes.append(f"restart {spent + 1} of {limit}: {_who(replica)} {_ended(replica)}")
    return tuple(restart), notes, None


def _eviction(
    job: JobView, gang: Sequence[ReplicaObservation], now: float
) -> tuple[Reason, str] | None:
    # A replica that is done (succeeded, not to be restarted) no longer needs its node.
    lost = [
        r
        for r in gang
        if not r.node_ready
        and not (
            r.phase is ReplicaPhase.SUCCEEDED and _policy(job.spec, r) is not RestartPolicy.ALWAYS
        )
    ]
    if lost:
        if len(lost) == 1:
            return Reason.NODE_LOST, f"{_who(lost[0])} lost its node"
        return Reason.NODE_LOST, f"{len(lost)} replicas lost their nodes: {_listing(lost)}"
    timeout = job.spec.run_policy.ready_timeout_seconds
    waiting = [r for r in gang if not _started(r)]
    if job.state is JobState.ADMITTED and waiting and now >= job.admitted_at + timeout:
        return (
            Reason.READY_TIMEOUT,
            f"{len(waiting)} of {_plural(len(gang), 'replica')} were not running {timeout} s "
            f"after admission: {_listing(waiting)}",
        )
    return None


def _evict(
    job: JobView, eviction: tuple[Reason, str], existing: tuple[str, ...], now: float, limit: int
) -> Decision:
    reason, detail = eviction
    # Preemptions requeue a job too, but they are not its fault: they do not count.
    evictions = max(job.attempt - job.preemptions, 0)
    if evictions + 1 > limit:
        return Decision(
            transition=JobState.FAILED,
            reason=Reason.REQUEUE_LIMIT_EXCEEDED,
            message=f"{detail}; the job was requeued {_plural(evictions, 'time')} already, "
            f"and its limit is {limit}",
            delete=existing,
        )
    backoff = requeue_backoff(evictions)
    return Decision(
        transition=JobState.QUEUED,
        reason=reason,
        message=f"{detail}; the gang is evicted and requeued, to wait {backoff:.0f} s "
        f"(requeue {evictions + 1} of {limit})",
        delete=existing,
        requeue_not_before=now + backoff,
    )


def _who(replica: ReplicaObservation) -> str:
    return f"{replica.role} {replica.index} (pod {replica.pod_name})"


def _ended(replica: ReplicaObservation) -> str:
    if replica.exit_code is not None:
        return f"exited with code {replica.exit_code}"
    return "succeeded" if replica.phase is ReplicaPhase.SUCCEEDED else "failed without an exit code"


def _listing(replicas: Sequence[ReplicaObservation], most: int = 5) -> str:
    names = [r.pod_name for r in replicas]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
