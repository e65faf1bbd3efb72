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
