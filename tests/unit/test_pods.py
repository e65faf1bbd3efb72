"""Pod names and the pods of a gang, from a checked spec or from its stored document."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.pods import pod_name, pod_requests
from gateway.domain.jobs.spec import JobSpec, from_document, to_document
from gateway.domain.names import DNS_1035_LABEL

SPECS: dict[str, dict[str, Any]] = {
    "tensorflow with ps": {
        "name": "wide-deep",
        "tenant": "search",
        "framework": "tensorflow",
        "replicas": {
            "chief": {"image": "i", "resources": {"cpu": "4", "memory": "8Gi", "gpu": 0.5}},
            "worker": {
                "count": 3,
                "image": "i",
                "resources": {"gpu": 2},
                "node_selector": {"zone": "a"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
            "ps": {"count": 2, "image": "i", "resources": {"cpu": "500m", "memory": "512Mi"}},
        },
    },
    "generic with defaults": {"name": "g", "tenant": "t", "replicas": {"w": {"image": "i"}}},
}


def _spec(raw: dict[str, Any]) -> JobSpec:
    spec = check_job_spec(raw)
    assert isinstance(spec, JobSpec), spec
    return spec


@pytest.mark.parametrize("raw", SPECS.values(), ids=SPECS.keys())
def test_stored_document_yields_the_same_pods_as_the_checked_spec(raw: dict[str, Any]) -> None:
    spec = _spec(raw)
    assert pod_requests(from_document(to_document(spec))) == pod_requests(spec)


def test_only_parameter_servers_are_spread() -> None:
    pods = pod_requests(_spec(SPECS["tensorflow with ps"]))
    assert {pod.role for pod in pods if pod.spread} == {"ps"}
    assert [pod.name for pod in pods][:2] == ["wide-deep-chief-0", "wide-deep-ps-0"]


def test_long_pod_names_are_shortened_to_distinct_dns_labels() -> None:
    job = "a" * 63
    names = {pod_name(job, "worker", index) for index in range(100)}
    assert len(names) == 100
    assert all(len(name) <= 63 and DNS_1035_LABEL.fullmatch(name) for name in names)
    assert pod_name("short", "ps", 3) == "short-ps-3"
