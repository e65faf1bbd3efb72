"""The lifecycle core: what `decide()` does with a job and its replicas, one behaviour per test.

Gangs are written as tables: every pod of the spec is running unless the case says otherwise, as
``{"worker-1": "failed 137", "ps-0": "pending"}``, and the job is named ``j``, so pods are
``j-<role>-<index>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.pods import pod_name
from gateway.domain.jobs.spec import JobSpec
from gateway.domain.lifecycle.decisions import (
    Decision,
    JobView,
    Reason,
    ReplicaObservation,
    ReplicaPhase,
    decide,
    requeue_backoff,
)
from gateway.domain.lifecycle.states import JobState, can_transition

NOW = 1000.0
ADMITTED_AT = 900.0
STARTED_AT = 950.0


# -- builders -------------------------------------------------------------------------------------


def spec(
    *roles: str,
    framework: str = "tensorflow",
    restart: str | Mapping[str, str] = "Never",
    **run_policy: Any,
) -> JobSpec:
    """A checked spec from roles written ``"chief"`` or ``"worker=3"``."""
    replicas: dict[str, dict[str, Any]] = {}
    for written in roles:
        role, _, count = written.partition("=")
        policy = restart if isinstance(restart, str) else restart.get(role, "Never")
        replicas[role] = {"count": int(count or 1), "image": "img", "restart_policy": policy}
    raw = {
        "name": "j",
        "tenant": "t",
        "framework": framework,
        "replicas": replicas,
        "run_policy": run_policy,
    }
    checked = check_job_spec(raw)
    assert isinstance(checked, JobSpec), checked
    return checked


def observe(
    job_spec: JobSpec,
    phases: Mapping[str, str] | None = None,
    *,
    default: str = "running",
    lost: tuple[str, ...] = (),
) -> list[ReplicaObservation]:
    """Every pod of the spec; ``phases`` maps ``"worker-1"`` to ``"failed 137"``, ``"pending"``."""
    phases = dict(phases or {})
    observations = []
    for replica in job_spec.replicas:
        for index in range(replica.count):
            short = f"{replica.role}-{index}"
            word, _, code = phases.pop(short, default).partition(" ")
            phase = ReplicaPhase[word.upper()]
            exit_code = int(code) if code else (0 if phase is ReplicaPhase.SUCCEEDED else None)
            observations.append(
                ReplicaObservation(
                    pod_name=pod_name(job_spec.name, replica.role, index),
                    role=replica.role,
                    index=index,
                    phase=phase,
                    exit_code=exit_code,
                    node_ready=short not in lost,
                )
            )
    assert not phases, f"no such pods: {sorted(phases)}"
    return observations


def view(
    job_spec: JobSpec,
    state: JobState = JobState.RUNNING,
    *,
    attempt: int = 0,
    restarts: int = 0,
    cancelled: bool = False,
    started_at: float | None = None,
) -> JobView:
    if started_at is None and state is not JobState.ADMITTED:
        started_at = STARTED_AT
    return JobView(
        id="job-1",
        state=state,
        spec=job_spec,
        attempt=attempt,
        restarts=restarts,
        admitted_at=ADMITTED_AT,
        started_at=started_at,
        cancelled=cancelled,
    )


def pods(*short: str) -> tuple[str, ...]:
    return tuple(sorted(f"j-{name}" for name in short))


TF = spec("chief", "worker=2", "ps")
TF_NO_CHIEF = spec("worker=3", "ps")
PYTORCH = spec("master", "worker=2", framework="pytorch")
GENERIC = spec("trainer", "sidecar", framework="generic")


# -- success --------------------------------------------------------------------------------------

SUCCESSES = {
    "chief succeeds": (TF, {"chief-0": "succeeded"}, Reason.CHIEF_SUCCEEDED),
    "master succeeds (pytorch)": (PYTORCH, {"master-0": "succeeded"}, Reason.MASTER_SUCCEEDED),
    "worker 0 succeeds without a chief": (
        TF_NO_CHIEF,
        {"worker-0": "succeeded"},
        Reason.WORKER0_SUCCEEDED,
    ),
    "every worker and the chief succeed under AllWorkers": (
        spec("chief", "worker=2", "ps", success_policy="AllWorkers"),
        {"chief-0": "succeeded", "worker-0": "succeeded", "worker-1": "succeeded"},
        Reason.ALL_WORKERS_SUCCEEDED,
    ),
    "every replica of a generic job succeeds": (
        GENERIC,
        {"trainer-0": "succeeded", "sidecar-0": "succeeded"},
        Reason.ALL_REPLICAS_SUCCEEDED,
    ),
    "the chief's success beats a worker failing in the same round": (
        TF,
        {"chief-0": "succeeded", "worker-1": "failed 1"},
        Reason.CHIEF_SUCCEEDED,
    ),
    "the chief's success ends the job even under Always": (
        spec("chief", "worker=2", restart="Always"),
        {"chief-0": "succeeded"},
        Reason.CHIEF_SUCCEEDED,
    ),
}


@pytest.mark.parametrize(("job_spec", "phases", "reason"), SUCCESSES.values(), ids=SUCCESSES)
def test_success_ends_the_job(job_spec: JobSpec, phases: dict[str, str], reason: Reason) -> None:
    decision = decide(view(job_spec), observe(job_spec, phases), NOW)
    assert decision.transition is JobState.SUCCEEDED
    assert decision.reason == reason
    assert decision.create == decision.restart == ()


def test_success_message_names_the_replica_and_its_exit_code() -> None:
    decision = decide(view(TF), observe(TF, {"chief-0": "succeeded"}), NOW)
    assert decision.message == "chief 0 (pod j-chief-0) exited with code 0"


NOT_YET = {
    "worker 1 succeeds without a chief": (TF_NO_CHIEF, {"worker-1": "succeeded"}),
    "worker 0 succeeds while a chief runs": (TF, {"worker-0": "succeeded"}),
    "an evaluator finishes": (spec("chief", "evaluator"), {"evaluator-0": "succeeded"}),
    "one worker is still running under AllWorkers": (
        spec("worker=2", success_policy="AllWorkers"),
        {"worker-0": "succeeded"},
    ),
    "workers succeed but the chief runs under AllWorkers": (
        spec("chief", "worker=2", success_policy="AllWorkers"),
        {"worker-0": "succeeded", "worker-1": "succeeded"},
    ),
    "one replica of a generic job succeeds": (GENERIC, {"trainer-0": "succeeded"}),
}


@pytest.mark.parametrize(("job_spec", "phases"), NOT_YET.values(), ids=NOT_YET)
def test_replicas_that_do_not_decide_success_are_simply_done(
    job_spec: JobSpec, phases: dict[str, str]
) -> None:
    assert decide(view(job_spec), observe(job_spec, phases), NOW) == Decision()


CLEANUPS = {
    "Running deletes the pods still running or pending": (
        "Running",
        pods("ps-0", "worker-1"),
    ),
    "All deletes every pod that exists": ("All", pods("chief-0", "ps-0", "worker-0", "worker-1")),
    "None deletes nothing": ("None", ()),
}


@pytest.mark.parametrize(("policy", "deleted"), CLEANUPS.values(), ids=CLEANUPS)
def test_clean_pod_policy_picks_the_pods_deleted_after_success(
    policy: str, deleted: tuple[str, ...]
) -> None:
    job_spec = spec("chief", "worker=2", "ps", "evaluator", clean_pod_policy=policy)
    phases = {
        "chief-0": "succeeded",
        "worker-0": "succeeded",
        "worker-1": "pending",
        "evaluator-0": "missing",
    }
    decision = decide(view(job_spec), observe(job_spec, phases), NOW)
    assert decision.transition is JobState.SUCCEEDED
    assert decision.delete == deleted


# -- failures and restarts ------------------------------------------------------------------------


@pytest.mark.parametrize("spent", [0, 1, 2])
def test_on_failure_restarts_a_failed_worker_within_the_backoff_limit(spent: int) -> None:
    job_spec = spec("chief", "worker=2", restart="OnFailure", backoff_limit=3)
    decision = decide(
        view(job_spec, restarts=spent), observe(job_spec, {"worker-1": "failed 1"}), NOW
    )
    assert decision == Decision(
        reason=Reason.REPLICA_RESTARTED,
        message=f"restart {spent + 1} of 3: worker 1 (pod j-worker-1) exited with code 1",
        restart=pods("worker-1"),
    )
    assert decision.restarts_used == 1


def test_on_failure_fails_the_job_once_the_backoff_limit_is_spent() -> None:
    job_spec = spec(
        "chief", "worker=2", restart="OnFailure", backoff_limit=3, clean_pod_policy="All"
    )
    decision = decide(view(job_spec, restarts=3), observe(job_spec, {"worker-1": "failed 1"}), NOW)
    assert decision.transition is JobState.FAILED
    assert decision.reason == Reason.BACKOFF_LIMIT_EXCEEDED
    assert decision.message == (
        "worker 1 (pod j-worker-1) exited with code 1, and the job has spent 3 of its 3 restarts "
        "(backoff limit)"
    )
    assert decision.restart == decision.create == ()
    assert decision.delete == pods("chief-0", "worker-0", "worker-1")


def test_two_failures_with_one_restart_left_fail_the_job() -> None:
    job_spec = spec("worker=3", restart="OnFailure", backoff_limit=2)
    phases = {"worker-1": "failed 2", "worker-2": "failed 2"}
    decision = decide(view(job_spec, restarts=1), observe(job_spec, phases), NOW)
    assert decision.transition is JobState.FAILED
    assert decision.reason == Reason.BACKOFF_LIMIT_EXCEEDED
    assert decision.restart == ()


EXIT_CODES = {
    "137 (SIGKILL, OOM) is retried": (137, None, pods("worker-1")),
    "143 (SIGTERM) is retried": (143, None, pods("worker-1")),
    "128 is retried": (128, None, pods("worker-1")),
    "-9 (a local process killed by a signal) is retried": (-9, None, pods("worker-1")),
    "1 is permanent": (1, Reason.PERMANENT_EXIT_CODE, ()),
    "127 is permanent": (127, Reason.PERMANENT_EXIT_CODE, ()),
}


@pytest.mark.parametrize(("code", "reason", "restarted"), EXIT_CODES.values(), ids=EXIT_CODES)
def test_exit_code_policy_retries_signals_and_fails_on_program_errors(
    code: int, reason: Reason | None, restarted: tuple[str, ...]
) -> None:
    job_spec = spec("chief", "worker=2", restart="ExitCode")
    decision = decide(view(job_spec), observe(job_spec, {"worker-1": f"failed {code}"}), NOW)
    assert decision.restart == restarted
    assert decision.transition is (None if reason is None else JobState.FAILED)
    if reason is not None:
        assert decision.reason == reason
        assert decision.message is not None
        assert f"exited with code {code}" in decision.message


def test_never_fails_the_job_at_the_first_failure() -> None:
    decision = decide(view(TF), observe(TF, {"worker-0": "failed 3"}), NOW)
    assert decision == Decision(
        transition=JobState.FAILED,
        reason=Reason.REPLICA_FAILED,
        message="worker 0 (pod j-worker-0) exited with code 3, and its restart policy is Never",
        delete=pods("chief-0", "ps-0", "worker-1"),
    )


def test_a_permanent_failure_is_reported_before_a_spent_backoff_limit() -> None:
    job_spec = spec("worker=2", "ps", restart={"worker": "OnFailure", "ps": "Never"})
    phases = {"worker-0": "failed 137", "ps-0": "failed 1"}
    decision = decide(view(job_spec, restarts=3), observe(job_spec, phases), NOW)
    assert decision.reason == Reason.REPLICA_FAILED


def test_always_restarts_a_succeeded_worker_that_does_not_end_the_job() -> None:
    job_spec = spec("chief", "worker=2", restart="Always")
    decision = decide(view(job_spec), observe(job_spec, {"worker-1": "succeeded"}), NOW)
    assert decision.restart == pods("worker-1")
    assert decision.transition is None


def test_on_failure_leaves_a_succeeded_worker_done() -> None:
    job_spec = spec("chief", "worker=2", restart="OnFailure")
    decision = decide(view(job_spec), observe(job_spec, {"worker-1": "succeeded"}), NOW)
    assert decision == Decision()


def test_restarts_and_creates_go_together_and_spend_only_the_restarts() -> None:
    job_spec = spec("chief", "worker=2", restart="OnFailure")
    phases = {"worker-0": "failed 137", "worker-1": "missing"}
    decision = decide(view(job_spec), observe(job_spec, phases), NOW)
    assert decision.restart == pods("worker-0")
    assert decision.create == pods("worker-1")
    assert decision.restarts_used == 1


# -- deadline and eviction ------------------------------------------------------------------------


DEADLINES = {
    "running past its deadline": (JobState.RUNNING, STARTED_AT, 50, True),
    "running before its deadline": (JobState.RUNNING, STARTED_AT, 51, False),
    "admitted, counted from admission": (JobState.ADMITTED, None, 100, True),
    "admitted before its deadline": (JobState.ADMITTED, None, 101, False),
}


@pytest.mark.parametrize(
    ("state", "started", "deadline", "exceeded"), DEADLINES.values(), ids=DEADLINES
)
def test_active_deadline_fails_the_job_and_deletes_every_pod(
    state: JobState, started: float | None, deadline: int, exceeded: bool
) -> None:
    job_spec = spec(
        "chief", "worker=2", "ps", active_deadline_seconds=deadline, clean_pod_policy="None"
    )
    phases = {"worker-1": "succeeded", "ps-0": "missing"}
    decision = decide(view(job_spec, state, started_at=started), observe(job_spec, phases), NOW)
    if exceeded:
        assert decision.transition is JobState.FAILED
        assert decision.reason == Reason.DEADLINE_EXCEEDED
        assert decision.delete == pods("chief-0", "worker-0", "worker-1")
    else:
        assert decision.transition is not JobState.FAILED


@pytest.mark.parametrize(
    ("attempt", "backoff"),
    [(0, 60), (1, 120), (2, 240), (3, 480), (4, 960), (5, 1920), (6, 3600), (7, 3600), (40, 3600)],
)
def test_ready_timeout_evicts_the_whole_gang_with_doubling_backoff(
    attempt: int, backoff: float
) -> None:
    job_spec = spec("chief", "worker=2", "ps", ready_timeout_seconds=100)
    phases = {"worker-1": "pending", "ps-0": "missing"}
    job = view(job_spec, JobState.ADMITTED, attempt=attempt)
    decision = decide(job, observe(job_spec, phases), NOW, requeue_limit=100)
    assert decision == Decision(
        transition=JobState.QUEUED,
        reason=Reason.READY_TIMEOUT,
        message="2 of 4 replicas were not running 100 s after admission: j-ps-0, j-worker-1; "
        f"the gang is evicted and requeued, to wait {backoff} s (requeue {attempt + 1} of 100)",
        delete=pods("chief-0", "worker-0", "worker-1"),
        requeue_not_before=NOW + backoff,
    )
    assert requeue_backoff(attempt) == backoff


def test_ready_timeout_waits_until_the_timeout() -> None:
    job_spec = spec("chief", "worker=2", ready_timeout_seconds=101)
    decision = decide(
        view(job_spec, JobState.ADMITTED), observe(job_spec, {"worker-1": "pending"}), NOW
    )
    assert decision == Decision()


@pytest.mark.parametrize(("attempt", "transition"), [(4, JobState.QUEUED), (5, JobState.FAILED)])
def test_eviction_past_the_requeue_limit_fails_the_job(attempt: int, transition: JobState) -> None:
    job_spec = spec("chief", "worker=2", ready_timeout_seconds=100)
    job = view(job_spec, JobState.ADMITTED, attempt=attempt)
    decision = decide(job, observe(job_spec, {"worker-1": "pending"}), NOW, requeue_limit=5)
    assert decision.transition is transition
    assert decision.delete == pods("chief-0", "worker-0", "worker-1")
    if transition is JobState.FAILED:
        assert decision.reason == Reason.REQUEUE_LIMIT_EXCEEDED
        assert decision.requeue_not_before is None


@pytest.mark.parametrize("state", [JobState.ADMITTED, JobState.RUNNING])
def test_a_lost_node_evicts_and_requeues_the_gang(state: JobState) -> None:
    phases = {"worker-0": "pending", "ps-0": "missing"}
    decision = decide(view(TF, state, attempt=1), observe(TF, phases, lost=("worker-1",)), NOW)
    assert decision == Decision(
        transition=JobState.QUEUED,
        reason=Reason.NODE_LOST,
        message="worker 1 (pod j-worker-1) lost its node; the gang is evicted and requeued, "
        "to wait 120 s (requeue 2 of 5)",
        delete=pods("chief-0", "worker-0", "worker-1"),
        requeue_not_before=NOW + 120,
    )


def test_a_finished_evaluator_on_a_lost_node_evicts_nothing() -> None:
    job_spec = spec("chief", "evaluator")
    observed = observe(job_spec, {"evaluator-0": "succeeded"}, lost=("evaluator-0",))
    assert decide(view(job_spec), observed, NOW) == Decision()


PRECEDENCE = {
    "success beats the deadline": (
        spec("chief", "worker", active_deadline_seconds=1),
        {"chief-0": "succeeded"},
        (),
        Reason.CHIEF_SUCCEEDED,
    ),
    "the deadline beats a lost node": (
        spec("chief", "worker", active_deadline_seconds=1),
        {},
        ("worker-0",),
        Reason.DEADLINE_EXCEEDED,
    ),
    "a failure beats a lost node": (TF, {"worker-0": "failed 1"}, ("ps-0",), Reason.REPLICA_FAILED),
    "a lost node beats a restart": (
        spec("chief", "worker=2", restart="OnFailure"),
        {"worker-0": "failed 1"},
        ("worker-0",),
        Reason.NODE_LOST,
    ),
}


@pytest.mark.parametrize(
    ("job_spec", "phases", "lost", "reason"), PRECEDENCE.values(), ids=PRECEDENCE
)
def test_precedence_success_then_failure_then_eviction_then_restarts(
    job_spec: JobSpec, phases: dict[str, str], lost: tuple[str, ...], reason: Reason
) -> None:
    decision = decide(view(job_spec), observe(job_spec, phases, lost=lost), NOW)
    assert decision.reason == reason
    assert decision.create == decision.restart == ()


# -- creating and starting ------------------------------------------------------------------------


def test_first_observation_after_admission_creates_every_pod() -> None:
    decision = decide(view(TF, JobState.ADMITTED), observe(TF, default="missing"), NOW)
    assert decision == Decision(create=pods("chief-0", "ps-0", "worker-0", "worker-1"))


def test_a_vanished_pod_of_a_running_job_is_created_again() -> None:
    decision = decide(view(TF), observe(TF, {"ps-0": "missing"}), NOW)
    assert decision == Decision(create=pods("ps-0"))


STARTS = {
    "every replica running from admitted": (JobState.ADMITTED, {}, JobState.RUNNING),
    "an evaluator already done counts as started": (
        JobState.ADMITTED,
        {"evaluator-0": "succeeded"},
        JobState.RUNNING,
    ),
    "one replica still pending": (JobState.ADMITTED, {"worker-0": "pending"}, None),
    "already running": (JobState.RUNNING, {}, None),
}


@pytest.mark.parametrize(("state", "phases", "transition"), STARTS.values(), ids=STARTS)
def test_the_gang_running_for_the_first_time_moves_the_job_to_running(
    state: JobState, phases: dict[str, str], transition: JobState | None
) -> None:
    job_spec = spec("chief", "worker=2", "evaluator")
    decision = decide(view(job_spec, state), observe(job_spec, phases), NOW)
    assert decision.transition is transition
    if transition is JobState.RUNNING:
        assert decision.reason == Reason.ALL_REPLICAS_RUNNING
        assert decision.message == "all 4 replicas are running"


# -- cancel and inactive jobs ---------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.ADMITTED, JobState.RUNNING, JobState.CANCELLED])
def test_cancel_deletes_only_the_pods_that_exist(state: JobState) -> None:
    phases = {"chief-0": "succeeded", "worker-0": "failed 1", "worker-1": "missing"}
    decision = decide(view(TF, state, cancelled=True), observe(TF, phases), NOW)
    assert decision == Decision(delete=pods("chief-0", "ps-0", "worker-0"))


@pytest.mark.parametrize(
    "state", [JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]
)
def test_a_job_neither_admitted_nor_running_decides_nothing(state: JobState) -> None:
    phases = {"chief-0": "failed 1", "worker-0": "missing"}
    observed = observe(TF, phases, lost=("ps-0",))
    assert decide(view(TF, state), observed, NOW) == Decision()


BAD_GANGS = {
    "a pod left out": lambda obs: obs[1:],
    "a pod twice": lambda obs: [*obs, obs[0]],
    "a role the spec lacks": lambda obs: [*obs[1:], replace(obs[0], role="evaluator")],
    "an index past the count": lambda obs: [*obs[1:], replace(obs[0], index=9)],
    "two pods with one name": lambda obs: [*obs[1:], replace(obs[0], pod_name=obs[1].pod_name)],
}


@pytest.mark.parametrize("corrupt", BAD_GANGS.values(), ids=BAD_GANGS)
def test_observations_must_be_exactly_the_gang(corrupt: Any) -> None:
    with pytest.raises(ValueError, match="exactly once"):
        decide(view(TF), corrupt(observe(TF)), NOW)


# -- properties -----------------------------------------------------------------------------------

SHAPES = [
    ("tensorflow", ("chief", "worker=2", "ps=2", "evaluator")),
    ("tensorflow", ("worker=3", "ps")),
    ("pytorch", ("master", "worker=3")),
    ("generic", ("trainer=2", "sidecar")),
]
POLICIES = ["Never", "OnFailure", "Always", "ExitCode"]
EXIT_CODES_DRAWN = [None, -9, 0, 1, 2, 127, 128, 137, 143, 255]
MOSTLY_FALSE = st.sampled_from([False, False, False, True])
# Weighted towards active jobs and running pods, where most of the decisions are.
STATES = st.sampled_from([JobState.ADMITTED, JobState.RUNNING] * 4 + list(JobState))
PHASES = st.sampled_from([ReplicaPhase.RUNNING] * 3 + list(ReplicaPhase))


@st.composite
def cases(draw: st.DrawFn) -> tuple[JobView, list[ReplicaObservation], float, int]:
    framework, roles = draw(st.sampled_from(SHAPES))
    role_names = [r.partition("=")[0] for r in roles]
    restart = {role: draw(st.sampled_from(POLICIES)) for role in role_names}
    job_spec = spec(
        *roles,
        framework=framework,
        restart=restart,
        backoff_limit=draw(st.integers(0, 4)),
        active_deadline_seconds=draw(st.sampled_from([None, None, 50, 200])),
        ready_timeout_seconds=draw(st.sampled_from([50, 200])),
        clean_pod_policy=draw(st.sampled_from(["Running", "All", "None"])),
        success_policy=draw(st.sampled_from(["Default", "AllWorkers"])),
    )
    observed = []
    for replica in observe(job_spec):
        phase = draw(PHASES)
        exited = phase in (ReplicaPhase.SUCCEEDED, ReplicaPhase.FAILED)
        code = 0 if phase is ReplicaPhase.SUCCEEDED else draw(st.sampled_from(EXIT_CODES_DRAWN))
        observed.append(
            replace(
                replica,
                phase=phase,
                exit_code=code if exited else None,
                node_ready=not draw(MOSTLY_FALSE),
            )
        )
    state = draw(STATES)
    job = replace(
        view(job_spec, state),
        attempt=draw(st.integers(0, 8)),
        restarts=draw(st.integers(0, 5)),
        cancelled=draw(MOSTLY_FALSE),
    )
    if state is JobState.ADMITTED and draw(st.booleans()):
        job = replace(job, started_at=None)
    return (
        job,
        draw(st.permutations(observed)),
        draw(st.sampled_from([950.0, 1000.0, 1200.0])),
        draw(st.integers(0, 6)),
    )


def violations(
    job: JobView, replicas: list[ReplicaObservation], now: float, d: Decision
) -> list[str]:
    """Every way the decision breaks an invariant of `decide()`; empty when it keeps them all."""
    found = []
    by_name = {r.pod_name: r for r in replicas}
    existing = tuple(sorted(name for name, r in by_name.items() if r.exists))
    for field in ("create", "restart", "delete"):
        names = getattr(d, field)
        if list(names) != sorted(set(names)):
            found.append(f"{field} not sorted or repeats: {names}")
        if not set(names) <= set(by_name):
            found.append(f"{field} names unobserved pods: {names}")
    if any(by_name[n].phase is not ReplicaPhase.MISSING for n in d.create if n in by_name):
        found.append(f"create names an existing pod: {d.create}")
    exited = (ReplicaPhase.SUCCEEDED, ReplicaPhase.FAILED)
    if any(by_name[n].phase not in exited for n in d.restart if n in by_name):
        found.append(f"restart names a pod that has not exited: {d.restart}")
    if any(not by_name[n].exists for n in d.delete if n in by_name):
        found.append(f"delete names a missing pod: {d.delete}")
    ending = (JobState.SUCCEEDED, JobState.FAILED, JobState.QUEUED)
    if d.transition in ending and (d.create or d.restart):
        found.append(f"{d.transition} with creates or restarts")
    if d.transition is not None and not can_transition(job.state, d.transition):
        found.append(f"{job.state} -> {d.transition} is not a transition")
    if (d.reason is None) != (d.message is None):
        found.append("reason and message not set together")
    if (d.reason is not None) != (d.transition is not None or bool(d.restart)):
        found.append(f"reason {d.reason} without a transition or restart")
    if d.restarts_used != len(d.restart):
        found.append("restarts_used differs from the restarts")
    if d.restart and job.restarts + d.restarts_used > job.spec.run_policy.backoff_limit:
        found.append("restarts past the backoff limit")
    if (d.transition is JobState.QUEUED) != (d.requeue_not_before is not None):
        found.append("requeue time without a requeue, or the other way round")
    if d.requeue_not_before is not None and not now + 60 <= d.requeue_not_before <= now + 3600:
        found.append(f"backoff out of range: {d.requeue_not_before - now}")
    if job.cancelled and d != Decision(delete=existing):
        found.append(f"a cancelled job decides more than deleting its pods: {d}")
    if not job.cancelled and not job.state.active and d != Decision():
        found.append(f"an inactive job decides something: {d}")
    return found


@settings(max_examples=400, deadline=None)
@given(cases())
def test_every_decision_keeps_the_invariants(
    case: tuple[JobView, list[ReplicaObservation], float, int],
) -> None:
    job, replicas, now, limit = case
    decision = decide(job, replicas, now, requeue_limit=limit)
    assert violations(job, replicas, now, decision) == []
    # Pure and deterministic: the same inputs in another order give an equal decision.
    assert decide(job, list(reversed(replicas)), now, requeue_limit=limit) == decision
    assert decide(job, sorted(replicas, key=lambda r: r.pod_name), now, requeue_limit=limit) == (
        decision
    )
