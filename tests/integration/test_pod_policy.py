"""A tenant's pod policy: admins set it, every submit is judged by it, and changes are audited.

A pod template is the easiest way past a tenant boundary (hostPath, privileged containers,
another team's service account, a toleration for someone else's nodes), so these tests submit as
a hostile tenant would, and check that a refusal writes nothing and names the rule.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.backends.nodes_file import StaticInventory
from gateway.domain.jobs.policy import kubernetes_only
from gateway.domain.jobs.spec import JobSpec
from gateway.domain.problems import FieldProblem
from gateway.domain.scheduling.nodes import Node
from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import create_tenant, job_spec, row_counts, submit
from tests.openapi_check import CheckedClient


@pytest.fixture
async def tenant(api: CheckedClient) -> dict[str, Any]:
    return await create_tenant(api)


@pytest.fixture
def submitter(api: CheckedClient, settings: Settings) -> CheckedClient:
    return api.as_(tokens.token(settings, user="eve@example.com", roles={"search": "submitter"}))


def _with(**worker: Any) -> dict[str, Any]:
    return job_spec(replicas={"worker": {"count": 1, "image": "reg/wd:1", **worker}})


def test_default_policy_shape(tenant: dict[str, Any]) -> None:
    assert tenant["pod_policy"] == {
        "volume_types": [
            "configMap",
            "csi",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "secret",
        ],
        "host_path_prefixes": [],
        "service_accounts": ["default"],
        "allow_privileged": False,
        "allowed_capabilities": [],
        "allow_host_namespaces": False,
        "tolerations": [],
    }


@pytest.mark.parametrize(
    ("worker", "pointer", "rule", "allowed"),
    [
        (
            {"service_account_name": "trainer"},
            "/replicas/worker/service_account_name",
            "service-account",
            {"service_accounts": ["default", "trainer"]},
        ),
        (
            {"tolerations": [{"operator": "Exists"}]},
            "/replicas/worker/tolerations/0",
            "tolerations",
            {"tolerations": [{"operator": "Exists"}]},
        ),
        (
            {"volumes": [{"name": "h", "hostPath": {"path": "/srv/data"}}]},
            "/replicas/worker/volumes/0/hostPath",
            "volume-types",
            {"volume_types": ["hostPath", "emptyDir"], "host_path_prefixes": ["/srv"]},
        ),
        (
            {"security_context": {"privileged": True}},
            "/replicas/worker/security_context/privileged",
            "privileged",
            {"allow_privileged": True},
        ),
        (
            {"security_context": {"capabilities": {"add": ["IPC_LOCK"]}}},
            "/replicas/worker/security_context/capabilities/add/0",
            "capabilities",
            {"allowed_capabilities": ["IPC_LOCK"]},
        ),
        (
            {"host_network": True},
            "/replicas/worker/host_network",
            "host-namespaces",
            {"allow_host_namespaces": True},
        ),
    ],
)
@pytest.mark.usefixtures("tenant")
async def test_a_breach_is_refused_naming_the_rule_until_an_admin_allows_it_and_is_audited(
    api: CheckedClient,
    submitter: CheckedClient,
    engine: AsyncEngine,
    worker: dict[str, Any],
    pointer: str,
    rule: str,
    allowed: dict[str, Any],
) -> None:
    before = await row_counts(engine)
    response = await submitter.post("/v1/jobs", json=_with(**worker))
    assert response.status == 422, response.text
    errors = [(e["pointer"], e["detail"]) for e in response.body["errors"]]
    assert [p for p, _ in errors] == [pointer]
    assert f"pod policy rule {rule!r}" in errors[0][1]
    assert await row_counts(engine) == before

    # A submitter cannot allow it itself.
    refused = await submitter.patch("/v1/admin/tenants/search", json={"pod_policy": allowed})
    assert refused.status == 403

    patched = await api.patch("/v1/admin/tenants/search", json={"pod_policy": allowed})
    assert patched.status == 200, patched.text
    for key, value in allowed.items():
        shown = patched.body["pod_policy"][key]
        assert shown == (
            sorted(value) if key != "tolerations" and isinstance(value, list) else value
        )
    await submit(submitter, _with(**worker))

    audit = (await api.get("/v1/admin/audit?tenant=search")).body["items"]
    change = next(e for e in audit if e["action"] == "update")
    assert change["before"]["pod_policy"]["service_accounts"] == ["default"]
    assert change["after"]["pod_policy"] == patched.body["pod_policy"]


@pytest.mark.usefixtures("tenant")
async def test_a_put_replaces_the_policy_whole_and_without_one_restores_the_default(
    api: CheckedClient,
) -> None:
    await api.patch("/v1/admin/tenants/search", json={"pod_policy": {"allow_privileged": True}})
    tenant = await create_tenant_again(api)
    assert tenant["pod_policy"]["allow_privileged"] is False


async def create_tenant_again(api: CheckedClient) -> dict[str, Any]:
    response = await api.put(
        "/v1/admin/tenants/search",
        json={
            "quota": {
                "cpu": "100",
                "memory": "1Ti",
                "gpu": 8,
                "max_running_jobs": 10,
                "max_queued_jobs": 100,
            }
        },
    )
    assert response.status == 200, response.text
    body: dict[str, Any] = response.body
    return body


@pytest.mark.parametrize(
    "policy",
    [
        {"volume_types": ["nfs"]},
        {"allow_privileged": "yes"},
        {"host_path_prefixes": ["relative"]},
        {"tolerations": [{"key": "k", "surprise": 1}]},
        {"unknown": True},
        ["not", "an", "object"],
    ],
)
@pytest.mark.usefixtures("tenant")
async def test_a_malformed_pod_policy_is_refused_and_writes_nothing(
    api: CheckedClient, engine: AsyncEngine, policy: Any
) -> None:
    before = await row_counts(engine)
    response = await api.patch("/v1/admin/tenants/search", json={"pod_policy": policy})
    assert 400 <= response.status < 500, response.text
    assert await row_counts(engine) == before


@pytest.mark.parametrize(
    "worker",
    [
        {"volumes": [{"name": "x", "hostPath": {"path": "/"}, "emptyDir": {}}]},
        {"volumes": [{"name": "x", "nfs": {"server": "evil", "path": "/"}}]},
        {"volume_mounts": [{"name": "ghost", "mountPath": "/etc"}]},
        {"env_value_from": {"TF_CONFIG": {"secretKeyRef": {"name": "s", "key": "k"}}}},
        {"init_containers": [{"name": "tensorflow", "image": "evil:1"}]},
        {"security_context": {"capabilities": {"add": ["SYS_ADMIN; rm -rf /"]}}},
        {"host_pid": True},
        {"pod_security_context": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "0"}]}},
    ],
)
@pytest.mark.usefixtures("tenant")
async def test_hostile_pod_fields_are_refused_and_write_nothing(
    submitter: CheckedClient, engine: AsyncEngine, worker: dict[str, Any]
) -> None:
    before = await row_counts(engine)
    response = await submitter.post("/v1/jobs", json=_with(**worker))
    assert response.status == 422, response.text
    assert all(e["pointer"].startswith("/replicas/worker/") for e in response.body["errors"])
    assert await row_counts(engine) == before


class _ProcessRuntime:
    """What a submit asks of the local backend's runtime, which runs replicas as processes."""

    def refusal(self, tenant: str) -> str | None:
        return None

    def unsupported(self, spec: JobSpec) -> list[FieldProblem]:
        return kubernetes_only(spec)

    def on_change(self, callback: Any) -> None:
        pass


async def test_a_backend_of_processes_refuses_pod_fields_saying_they_need_kubernetes(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> None:
    app = make_app(settings, engine, StaticInventory(nodes), runtime=_ProcessRuntime())  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        api = CheckedClient(client, tokens.admin_token(settings))
        await create_tenant(api)
        before = await row_counts(engine)
        response = await api.post("/v1/jobs", json=_with(working_dir="/app"))
        assert response.status == 422, response.text
        [error] = response.body["errors"]
        assert error["pointer"] == "/replicas/worker/working_dir"
        assert "needs the Kubernetes backend" in error["detail"]
        assert await row_counts(engine) == before
        await submit(api, _with(env={"PLAIN": "honoured"}))
