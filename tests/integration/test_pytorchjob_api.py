"""Kubeflow PyTorchJob manifests submitted to POST /v1/jobs as they are, in YAML or JSON."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.domain.scheduling.nodes import GpuMode, Node
from tests.openapi_check import CheckedClient

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pytorchjob.yaml"
GIB = 2**30
QUOTA = {"cpu": "1000", "memory": "10Ti", "gpu": 24, "max_running_jobs": 10, "max_queued_jobs": 100}
YAML = {"Content-Type": "application/yaml"}


@pytest.fixture
def nodes() -> tuple[Node, ...]:
    """Three 8-GPU nodes: room for the example's gang."""
    return tuple(
        Node(
            name=f"gpu-{i}",
            cpu_millis=96_000,
            memory_bytes=1024 * GIB,
            gpu_mode=GpuMode.DEVICE_PLUGIN,
            gpu_devices=8,
        )
        for i in range(3)
    )


async def tenant(api: CheckedClient) -> None:
    body = {"namespace": "research", "quota": QUOTA}
    assert (await api.put("/v1/admin/tenants/nlp", json=body)).status == 201


async def test_the_example_goes_to_the_tenant_owning_its_namespace(api: CheckedClient) -> None:
    await tenant(api)
    response = await api.post("/v1/jobs", data=EXAMPLE.read_text(), headers=YAML)
    assert response.status == 201, response.text
    job = response.body
    assert (job["name"], job["tenant"], job["framework"]) == ("llama-finetune", "nlp", "pytorch")
    replicas = job["spec"]["replicas"]
    assert {role: r["count"] for role, r in replicas.items()} == {"master": 1, "worker": 2}
    assert {r["port"] for r in replicas.values()} == {23456}
    assert {r["resources"]["gpu"] for r in replicas.values()} == {8}
    assert {r["restart_policy"] for r in replicas.values()} == {"OnFailure"}


async def test_an_elastic_policy_is_refused_at_its_pointer_and_nothing_written(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await tenant(api)
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["elasticPolicy"] = {"minReplicas": 1, "maxReplicas": 4, "rdzvBackend": "c10d"}
    response = await api.post("/v1/jobs", json=document)
    assert response.status == 422
    errors = {e["pointer"]: e["detail"] for e in response.body["errors"]}
    assert "Muster runs fixed-size gangs" in errors["/spec/elasticPolicy"]
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM jobs")) == 0


async def test_a_problem_of_the_translated_spec_points_into_the_manifest(
    api: CheckedClient,
) -> None:
    await tenant(api)
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    response = await api.post("/v1/jobs", json=document)
    assert response.status == 422
    pointers = [e["pointer"] for e in response.body["errors"]]
    assert pointers == ["/spec/pytorchReplicaSpecs/Master/replicas"]


async def test_a_manifest_without_a_namespace_takes_the_tenant_from_the_query(
    api: CheckedClient,
) -> None:
    await tenant(api)
    document = yaml.safe_load(EXAMPLE.read_text())
    del document["metadata"]["namespace"]
    missing = await api.post("/v1/jobs", json=document)
    assert missing.status == 422
    assert missing.body["errors"][0]["pointer"] == "/metadata/namespace"
    assert "a PyTorchJob needs" in missing.body["errors"][0]["detail"]
    response = await api.post("/v1/jobs?tenant=nlp", json=document)
    assert response.status == 201, response.text
