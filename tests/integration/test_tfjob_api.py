"""Kubeflow TFJob manifests submitted to POST /v1/jobs as they are, in YAML or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.helpers import grant_priority
from tests.openapi_check import CheckedClient

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "examples"
QUOTA = {"cpu": "1000", "memory": "10Ti", "gpu": 0, "max_running_jobs": 10, "max_queued_jobs": 100}

pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="../shared/examples is not here")


async def tenant(api: CheckedClient, name: str, namespace: str | None = None) -> None:
    body: dict[str, Any] = {"quota": QUOTA}
    if namespace:
        body["namespace"] = namespace
    assert (await api.put(f"/v1/admin/tenants/{name}", json=body)).status == 201


def manifest(name: str) -> str:
    return (EXAMPLES / name).read_text()


async def test_v1_tfjob_yaml_goes_to_the_tenant_owning_its_namespace(api: CheckedClient) -> None:
    await tenant(api, "ranking", namespace="search")
    response = await api.post(
        "/v1/jobs", data=manifest("tfjob-v1.yaml"), headers={"Content-Type": "application/yaml"}
    )
    assert response.status == 201, response.text
    job = response.body
    assert (job["name"], job["tenant"], job["framework"]) == ("wide-deep", "ranking", "tensorflow")
    replicas = job["spec"]["replicas"]
    assert {role: r["count"] for role, r in replicas.items()} == {"chief": 1, "worker": 10, "ps": 4}
    assert replicas["worker"]["exclusive_cpus"] is True
    assert replicas["worker"]["resources"]["cpu"] == "8"
    assert replicas["ps"]["resources"]["memory"] == "32Gi"
    assert job["spec"]["run_policy"]["active_deadline_seconds"] == 86400


async def test_v1alpha1_tfjob_needs_a_tenant_and_takes_it_from_the_query(
    api: CheckedClient,
) -> None:
    await tenant(api, "search")
    data = manifest("tfjob-v1alpha1.yaml")
    headers = {"Content-Type": "application/yaml"}
    missing = await api.post("/v1/jobs", data=data, headers=headers)
    assert missing.status == 422
    assert missing.body["errors"][0]["pointer"] == "/metadata/namespace"
    response = await api.post("/v1/jobs?tenant=search", data=data, headers=headers)
    assert response.status == 201, response.text
    assert sum(r["count"] for r in response.body["spec"]["replicas"].values()) == 15


async def test_unsupported_tfjob_field_is_refused_by_name_and_nothing_written(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await tenant(api, "search")
    document = yaml.safe_load(manifest("tfjob-v1.yaml"))
    worker = document["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    worker["ephemeralContainers"] = [{"name": "debug", "image": "busybox"}]
    response = await api.post("/v1/jobs", json=document)
    assert response.status == 422
    pointers = [e["pointer"] for e in response.body["errors"]]
    assert "/spec/tfReplicaSpecs/Worker/template/spec/ephemeralContainers" in pointers
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM jobs")) == 0


async def test_a_tfjob_breaking_the_pod_policy_is_refused_in_the_manifest_naming_the_rule(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await tenant(api, "search")
    document = yaml.safe_load(manifest("tfjob-v1.yaml"))
    worker = document["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    worker["volumes"] = [{"name": "host", "hostPath": {"path": "/etc"}}]
    response = await api.post("/v1/jobs", json=document)
    assert response.status == 422, response.text
    [error] = response.body["errors"]
    assert error["pointer"] == "/spec/tfReplicaSpecs/Worker/template/spec/volumes/0/hostPath"
    assert "pod policy rule 'volume-types'" in error["detail"]
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM jobs")) == 0


async def test_tfjob_problem_in_a_value_points_into_the_manifest(api: CheckedClient) -> None:
    await tenant(api, "search")
    document = yaml.safe_load(manifest("tfjob-v1.yaml"))
    container = document["spec"]["tfReplicaSpecs"]["PS"]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["memory"] = "32Gx"
    response = await api.post("/v1/jobs", json=document)
    assert response.status == 422
    assert response.body["errors"][0]["pointer"].startswith("/spec/tfReplicaSpecs/PS/"), (
        response.body
    )


async def test_a_tfjob_meets_its_tenants_priority_ceiling_and_nothing_is_written(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    # A TFJob has no priority of its own: its job gets the spec's default, 0, and that is
    # what the ceiling is held against. The refusal points at the whole manifest.
    await tenant(api, "ranking", namespace="search")
    await grant_priority(api, -1, name="ranking")
    data, headers = manifest("tfjob-v1.yaml"), {"Content-Type": "application/yaml"}

    refused = await api.post("/v1/jobs", data=data, headers=headers)

    assert refused.status == 422, refused.text
    assert refused.content_type == "application/problem+json"
    assert [(e["pointer"], e["detail"]) for e in refused.body["errors"]] == [
        ("", "priority 0 is above tenant ranking's maximum priority -1 (an admin sets it)")
    ]
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM jobs")) == 0
    await grant_priority(api, 0, name="ranking")
    admitted = await api.post("/v1/jobs", data=data, headers=headers)
    assert admitted.status == 201, admitted.text
    assert admitted.body["priority"] == 0


async def test_a_tfjob_that_can_never_fit_its_quota_points_at_its_replica_specs(
    api: CheckedClient,
) -> None:
    await tenant(api, "ranking", namespace="search")
    small = {**QUOTA, "cpu": "4"}
    assert (await api.patch("/v1/admin/tenants/ranking", json={"quota": small})).status == 200

    response = await api.post(
        "/v1/jobs", data=manifest("tfjob-v1.yaml"), headers={"Content-Type": "application/yaml"}
    )

    assert response.status == 422, response.text
    assert [e["pointer"] for e in response.body["errors"]] == ["/spec/tfReplicaSpecs"]


async def test_yaml_alias_bomb_is_refused(api: CheckedClient) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level in "bcdefghij":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [{', '.join(['*' + previous] * 9)}]")
    response = await api.post(
        "/v1/jobs", data="\n".join(lines), headers={"Content-Type": "application/yaml"}
    )
    assert response.status == 400
    assert "aliases" in response.body["detail"]
