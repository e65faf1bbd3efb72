"""The client's typed models: a JobRequest is a JobSpec the API takes as it is, and a Job read
back keeps every field of the API's answer."""

from __future__ import annotations

from gateway.api.schema import check as schema_check
from gateway.client_models import Job, JobRequest, Replica
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.spec import JobSpec


def test_a_job_request_is_a_valid_job_spec() -> None:
    request = JobRequest(
        name="resnet",
        tenant="search",
        framework="pytorch",
        priority=0,
        labels={"team": "vision"},
        replicas={
            "master": Replica(image="reg/r:1", command=("torchrun", "train.py")),
            "worker": Replica(
                image="reg/r:1",
                count=3,
                env={"NCCL_DEBUG": "WARN"},
                resources={"cpu": "8", "memory": "32Gi", "gpu": 1},
                extra={"node_selector": {"pool": "a100"}},
            ),
        },
        extra={"run_policy": {"backoff_limit": 2}},
    )
    document = request.to_json()
    assert schema_check("JobSpec", document) == []
    spec = check_job_spec(document)
    assert isinstance(spec, JobSpec)
    assert spec.run_policy.backoff_limit == 2
    assert spec.replica("worker") is not None


def test_a_job_keeps_every_field_of_the_answer() -> None:
    answer = {
        "id": "0b6f3a8e-4c1d-4f0e-9a57-2d8c1e6b7f90",
        "name": "resnet",
        "tenant": "search",
        "state": "running",
        "attempt": 1,
        "priority": 5,
        "queue": None,
        "labels": {"team": "vision"},
        "spec": {"name": "resnet"},
    }
    job = Job.from_json(answer)
    assert (job.state, job.attempt, job.finished) == ("running", 1, False)
    assert job.raw == answer


def test_only_a_broken_or_busy_submit_is_retried_backing_off() -> None:
    from gateway.client import retry_delay
    from gateway.errors import ApiProblem, Unreachable

    broken = Unreachable("http://x", "reset")
    assert [retry_delay(broken, n, 3) for n in range(4)] == [0.5, 1.0, 2.0, None]
    assert retry_delay(ApiProblem(503, "Unavailable", "busy"), 0, 3) == 0.5
    assert retry_delay(ApiProblem(429, "Too many", "later"), 0, 3) == 0.5
    assert retry_delay(ApiProblem(422, "Invalid", "no"), 0, 3) is None
    assert retry_delay(ApiProblem(409, "Conflict", "taken"), 0, 3) is None
