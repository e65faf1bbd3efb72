"""Authentication and tenancy through the API: who may call what, and what a caller can learn
about tenants where it has no role (nothing: their objects answer exactly as missing ones).

Tokens come from the local issuer (``tests.tokens``); roles come from role groups
(``muster:<tenant>:<role>``) or from grants an admin writes. Every response is checked against
the OpenAPI document by the ``api`` client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from joserfc import jws, jwt
from joserfc.jwk import KeySet
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.api.auth import PUBLIC_PATHS
from gateway.api.schema import SERVER_OWNED, openapi_document
from gateway.auth.authenticator import Authenticator, make_authenticator
from gateway.auth.keys import local_key_set
from gateway.auth.proof import check_proof, proof_key
from gateway.auth.tokens import mint
from gateway.backends.nodes_file import StaticInventory
from gateway.domain.scheduling.nodes import Node
from gateway.errors import ProofRefused
from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import create_tenant, job_spec, row_counts, submit, tenant_body
from tests.openapi_check import CheckedClient, Response

A, B = "alpha", "beta"
CALLBACK = {"url": "https://hooks.example.com/muster", "events": ["job.cancelled"]}


# --- helpers ----------------------------------------------------------------------------------


def problem(response: Response, *ids: str) -> dict[str, Any]:
    """The problem document with the given ids (job, delivery, tenant) replaced by "<id>", to
    compare the answer about one object with the answer about another."""
    assert response.content_type == "application/problem+json", response.text

    def anonymous(value: str) -> str:
        for ident in ids:
            value = value.replace(ident, "<id>")
        return value

    body = dict(response.body)
    for key in ("detail", "instance"):
        body[key] = anonymous(body[key])
    if "errors" in body:
        body["errors"] = [{**e, "detail": anonymous(e["detail"])} for e in body["errors"]]
    return body


def challenge(response: Response) -> dict[str, str]:
    """The parameters of the response's ``WWW-Authenticate: Bearer`` challenge."""
    header = response.headers["WWW-Authenticate"]
    scheme, _, params = header.partition(" ")
    assert scheme == "Bearer", header
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def as_user(api: CheckedClient, settings: Settings, user: str, **roles: str) -> CheckedClient:
    return api.as_(tokens.token(settings, user=user, roles=dict(roles)))


@dataclasses.dataclass
class World:
    """Tenants alpha and beta. Beta has a queued job and a cancelled one with a delivery."""

    a_job: dict[str, Any]
    b_job: dict[str, Any]
    b_cancelled: dict[str, Any]
    b_delivery: str


@pytest.fixture
async def world(api: CheckedClient) -> World:
    await create_tenant(api, A)
    await create_tenant(api, B)
    a_job = await submit(api, job_spec("a-job", tenant=A))
    b_job = await submit(api, job_spec("b-job", tenant=B, callback=CALLBACK))
    b_cancelled = await submit(api, job_spec("b-done", tenant=B, callback=CALLBACK))
    cancelled = await api.post(f"/v1/jobs/{b_cancelled['id']}/cancel")
    assert cancelled.status == 200, cancelled.text
    deliveries = await api.get(f"/v1/jobs/{b_cancelled['id']}/deliveries")
    assert deliveries.status == 200, deliveries.text
    [delivery] = deliveries.body["items"]
    return World(a_job=a_job, b_job=b_job, b_cancelled=cancelled.body, b_delivery=delivery["id"])


async def job_row(engine: AsyncEngine, job_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id})
        return dict(result.mappings().one())


# --- 401: who has no valid token --------------------------------------------------------------

PROTECTED = [
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", f"/v1/jobs/{uuid.uuid4()}"),
    ("POST", f"/v1/jobs/{uuid.uuid4()}/cancel"),
    ("GET", "/v1/events"),
    ("GET", "/v1/cluster"),
    ("GET", f"/v1/tenants/{A}"),
    ("GET", "/v1/admin/tenants"),
    ("PUT", f"/v1/admin/tenants/{A}/grants"),
    ("GET", "/metrics"),
    ("GET", "/v1/no-such-route"),  # unknown routes cannot be probed without a token
]


async def send(api: CheckedClient, method: str, path: str, **kwargs: Any) -> Response:
    if method in ("POST", "PUT"):
        kwargs.setdefault("json", {})
    return await api.request(method, path, **kwargs)


async def test_a_request_without_a_token_gets_401_with_a_bare_bearer_challenge(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    before = await row_counts(engine)
    for method, path in PROTECTED:
        response = await send(api.as_(None), method, path)

        assert response.status == 401, (method, path, response.text)
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="muster"', (method, path)
        assert response.body["type"].endswith("/unauthorized")
        assert "bearer token" in response.body["detail"]
    assert await row_counts(engine) == before


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        ("Basic YWRtaW46YWRtaW4=", None),
        ("Digest username=admin", None),
        ("Token abc", None),
        ("Bearer", "invalid_request"),
        ("Bearer   ", "invalid_request"),
    ],
    ids=["basic", "digest", "token", "bearer-without-token", "bearer-blank"],
)
async def test_an_authorization_header_that_is_not_a_bearer_token_gets_401(
    api: CheckedClient, authorization: str, error: str | None
) -> None:
    """RFC 6750, 3.1: another scheme carries no bearer credentials, so the challenge has no
    error code; a Bearer header without a token is a malformed request."""
    for method, path in PROTECTED:
        response = await send(api.as_(None), method, path, headers={"Authorization": authorization})

        assert response.status == 401, (method, path, response.text)
        params = challenge(response)
        assert params["realm"] == "muster"
        assert params.get("error") == error
        assert "Bearer <token>" in response.body["detail"]


@pytest.mark.parametrize(
    "bad_token",
    ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 4000],
    ids=["word", "three-parts", "alg-none", "long"],
)
async def test_a_garbage_token_gets_401_invalid_token_with_a_description(
    api: CheckedClient, bad_token: str
) -> None:
    for method, path in PROTECTED:
        response = await send(api.as_(bad_token), method, path)

        assert response.status == 401, (method, path, response.text)
        params = challenge(response)
        assert params["realm"] == "muster"
        assert params["error"] == "invalid_token"
        assert params["error_description"] == response.body["detail"]
        assert params["error_description"]


async def test_an_expired_token_gets_401_invalid_token_saying_it_expired(
    api: CheckedClient, settings: Settings
) -> None:
    expired = tokens.token(settings, admin=True, ttl_seconds=600, now=time.time() - 3600)
    for method, path in PROTECTED:
        response = await send(api.as_(expired), method, path)

        assert response.status == 401, (method, path, response.text)
        params = challenge(response)
        assert params["error"] == "invalid_token"
        assert params["error_description"] == "the token has expired"


async def test_tokens_for_another_audience_or_issuer_or_with_garbage_groups_get_401(
    api: CheckedClient, settings: Settings
) -> None:
    keys = local_key_set(settings.issuer_key_file)
    common: dict[str, Any] = {"subject": "ada", "ttl_seconds": 600}
    admin_groups = [settings.auth.admin_groups[0]]
    refused = {
        "audience": mint(keys, audience="someone-else", groups=admin_groups, **common),
        "issuer": mint(
            keys, audience="muster", issuer="https://evil.example", groups=admin_groups, **common
        ),
        "groups": mint(
            keys, audience="muster", groups=[], extra={"groups": {"muster-admins": 1}}, **common
        ),
    }
    for why, bad in refused.items():
        response = await api.as_(bad).get("/v1/admin/tenants")
        assert response.status == 401, (why, response.text)
        assert challenge(response)["error"] == "invalid_token"


async def test_a_token_signed_by_another_key_with_the_local_kid_gets_401(
    api: CheckedClient, settings: Settings, tmp_path: Path
) -> None:
    kid = local_key_set(settings.issuer_key_file).keys[0].kid
    other = local_key_set(tmp_path / "other-key.json").keys[0]
    claims = {
        "iss": "urn:muster:local-issuer",
        "aud": settings.auth.oidc_audience,
        "sub": "mallory",
        "exp": int(time.time()) + 600,
        "groups": [settings.auth.admin_groups[0]],
    }
    forged = jwt.encode({"alg": "RS256", "kid": kid}, claims, other)

    response = await api.as_(forged).get("/v1/admin/tenants")

    assert response.status == 401
    assert challenge(response)["error_description"] == "the token's signature does not verify"


# --- public endpoints -------------------------------------------------------------------------


CHALLENGE = "c" * 43


def public_query(path: str) -> str:
    """``path`` with the query its operation needs (the issuer's proof needs a challenge)."""
    return f"{path}?challenge={CHALLENGE}" if path == "/v1/issuer/proof" else path


@pytest.mark.parametrize("path", sorted(PUBLIC_PATHS))
async def test_public_endpoints_answer_without_a_token(api: CheckedClient, path: str) -> None:
    response = await api.as_(None).get(public_query(path))
    assert response.status == 200, response.text


async def test_public_endpoints_ignore_a_bad_token(api: CheckedClient) -> None:
    for path in sorted(PUBLIC_PATHS):
        response = await api.as_("garbage").get(public_query(path))
        assert response.status == 200, (path, response.text)


async def test_the_issuer_proof_verifies_with_the_key_file_for_the_port_it_was_asked_on(
    api: CheckedClient, settings: Settings
) -> None:
    key = proof_key(local_key_set(settings.issuer_key_file))
    port = api.client.port
    assert port is not None

    response = await api.as_(None).get(f"/v1/issuer/proof?challenge={CHALLENGE}")

    assert response.status == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    check_proof(key, response.body, challenge=CHALLENGE, port=port)
    with pytest.raises(ProofRefused):  # bound to its challenge
        check_proof(key, response.body, challenge="d" * 43, port=port)


@pytest.mark.parametrize(
    "query",
    ["", "?challenge=", "?challenge=short", f"?challenge={'c' * 129}", f"?challenge={'c' * 42}."],
)
async def test_a_missing_or_malformed_challenge_gets_a_400_problem_and_no_proof(
    api: CheckedClient, query: str
) -> None:
    response = await api.as_(None).get(f"/v1/issuer/proof{query}")

    assert response.status == 400
    assert "challenge must be 32 to 128 URL-safe characters" in response.body["detail"]


async def test_metrics_need_a_platform_admin_by_default(
    api: CheckedClient, settings: Settings
) -> None:
    assert (await api.as_(None).get("/metrics")).status == 401
    viewer = as_user(api, settings, "val@example.com", **{A: "tenant-admin"})
    assert (await viewer.get("/metrics")).status == 403
    assert (await api.get("/metrics")).status == 200


@pytest.fixture
async def public_metrics_api(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> AsyncIterator[CheckedClient]:
    app = make_app(
        dataclasses.replace(settings, auth=dataclasses.replace(settings.auth, public_metrics=True)),
        engine,
        StaticInventory(nodes),
    )
    async with TestClient(TestServer(app)) as client:
        yield CheckedClient(client, None)


async def test_metrics_answer_without_a_token_when_public_and_nothing_else_does(
    public_metrics_api: CheckedClient,
) -> None:
    response = await public_metrics_api.get("/metrics")
    assert response.status == 200
    assert "muster_cluster_capacity" in response.text

    assert (await public_metrics_api.get("/v1/jobs")).status == 401
    assert (await public_metrics_api.get("/v1/admin/tenants")).status == 401
    assert (await public_metrics_api.get("/metrics/")).status == 401


async def test_the_jwks_verifies_a_token_minted_by_muster_token(
    api: CheckedClient, settings: Settings, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "gateway", "token", "--user", "cli@example.com", "--admin"]
    command += ["--issuer-key", str(settings.issuer_key_file)]
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    minted = out.decode().strip()

    jwks = await api.as_(None).get("/.well-known/jwks.json")
    published = KeySet.import_key_set(jwks.body)

    kid = jws.extract_compact(minted.encode()).headers()["kid"]
    assert kid in [key.kid for key in published.keys]
    assert all(not key.is_private for key in published.keys)
    claims = jwt.decode(minted, published, algorithms=["RS256"]).claims
    assert claims["sub"] == "cli@example.com"
    assert settings.auth.admin_groups[0] in claims["groups"]
    # and the gateway accepts it
    assert (await api.as_(minted).get("/v1/admin/tenants")).status == 200


# --- 403: a user with no role anywhere --------------------------------------------------------


async def test_a_user_with_no_role_gets_403_on_tenant_endpoints(
    api: CheckedClient, settings: Settings, world: World, engine: AsyncEngine
) -> None:
    nobody = api.as_(tokens.token(settings, user="nobody@example.com", groups=("staff",)))
    before = await row_counts(engine)

    for method, path in [
        ("GET", "/v1/jobs"),
        ("GET", f"/v1/jobs/{world.a_job['id']}"),
        ("GET", f"/v1/jobs/{world.a_job['id']}/events"),
        ("GET", f"/v1/tenants/{A}"),
        ("GET", f"/v1/tenants/{A}/usage"),
        ("GET", "/v1/events"),
        ("POST", f"/v1/jobs/{world.a_job['id']}/cancel"),
        ("GET", "/v1/admin/tenants"),
    ]:
        response = await nobody.request(method, path)
        assert response.status == 403, (method, path, response.text)
    response = await nobody.post("/v1/jobs", json=job_spec("n", tenant=A))
    assert response.status == 403, response.text
    assert "nobody@example.com has no role in any tenant" in response.body["detail"]

    assert await row_counts(engine) == before


# --- cross-tenant: another tenant's objects are missing ones ---------------------------------


async def test_another_tenants_job_answers_404_exactly_as_a_missing_job(
    api: CheckedClient, settings: Settings, world: World, engine: AsyncEngine
) -> None:
    alice = as_user(api, settings, "alice@example.com", **{A: "submitter"})
    b_id, b_done, delivery = world.b_job["id"], world.b_cancelled["id"], world.b_delivery
    missing, missing_delivery = str(uuid.uuid4()), str(uuid.uuid4())
    b_before = await job_row(engine, b_id)
    counts = await row_counts(engine)

    for method, template, job_of_b, body in [
        ("GET", "/v1/jobs/{}", b_id, None),
        ("GET", "/v1/jobs/{}/events", b_id, None),
        ("GET", "/v1/jobs/{}/logs", b_id, None),
        ("GET", "/v1/jobs/{}/deliveries", b_done, None),
        ("POST", "/v1/jobs/{}/deliveries/" + delivery + "/redeliver", b_done, None),
        ("POST", "/v1/jobs/{}/cancel", b_id, None),
        ("POST", "/v1/jobs/{}/cancel", b_id, {"reason": "mine now"}),
    ]:
        kwargs = {} if body is None else {"json": body}
        theirs = await alice.request(method, template.format(job_of_b), **kwargs)
        if "redeliver" in template:
            template = template.replace(delivery, missing_delivery)
        absent = await alice.request(method, template.format(missing), **kwargs)

        assert theirs.status == absent.status == 404, (template, theirs.text, absent.text)
        assert problem(theirs, job_of_b, delivery) == problem(absent, missing, missing_delivery)
        assert theirs.body["detail"] == f"job {job_of_b} does not exist"

    # the logs 404 above is the job's, not the backend's: alice's own job gets the backend's
    own = await alice.get(f"/v1/jobs/{world.a_job['id']}/logs")
    assert own.status == 404
    assert "keeps no logs" in own.body["detail"]

    assert await job_row(engine, b_id) == b_before
    assert (await api.get(f"/v1/jobs/{b_id}")).body["state"] == "queued"
    assert await row_counts(engine) == counts


async def test_another_tenants_jobs_never_appear_in_a_list(
    api: CheckedClient, settings: Settings, world: World
) -> None:
    alice = as_user(api, settings, "alice@example.com", **{A: "submitter"})
    for query in ["", f"?tenant={B}", "?state=queued", "?state=cancelled", f"?tenant={A}"]:
        response = await alice.get(f"/v1/jobs{query}")
        assert response.status == 200, response.text
        assert {job["tenant"] for job in response.body["items"]} <= {A}, query
    listed = await alice.get("/v1/jobs")
    assert [job["id"] for job in listed.body["items"]] == [world.a_job["id"]]
    assert (await alice.get(f"/v1/jobs?tenant={B}")).body["items"] == []


async def test_another_tenant_answers_404_exactly_as_a_missing_tenant(
    api: CheckedClient, settings: Settings, world: World
) -> None:
    alice = as_user(api, settings, "alice@example.com", **{A: "tenant-admin"})
    for template in [
        "/v1/tenants/{}",
        "/v1/tenants/{}/usage",
        "/v1/tenants/{}/webhook-secret/rotate",
    ]:
        method = "POST" if template.endswith("rotate") else "GET"
        theirs = await alice.request(method, template.format(B))
        absent = await alice.request(method, template.format("no-such-tenant"))

        assert theirs.status == absent.status == 404, (template, theirs.text)
        assert problem(theirs, B) == problem(absent, "no-such-tenant")
    assert (await alice.get(f"/v1/tenants/{A}")).status == 200


async def test_submitting_to_another_tenant_is_422_exactly_as_to_a_missing_tenant(
    api: CheckedClient, settings: Settings, world: World, engine: AsyncEngine
) -> None:
    alice = as_user(api, settings, "alice@example.com", **{A: "submitter"})
    before = await row_counts(engine)

    theirs = await alice.post("/v1/jobs", json=job_spec("sneak", tenant=B))
    absent = await alice.post("/v1/jobs", json=job_spec("sneak", tenant="no-such-tenant"))

    assert theirs.status == absent.status == 422, theirs.text
    assert theirs.body["errors"] == [
        {"pointer": "/tenant", "detail": f"tenant {B!r} does not exist"}
    ]
    assert problem(theirs, repr(B)) == problem(absent, repr("no-such-tenant"))
    assert await row_counts(engine) == before


def tfjob(namespace: str) -> dict[str, Any]:
    container = {"name": "tensorflow", "image": "reg/wd:1"}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": "tf", "namespace": namespace},
        "spec": {
            "tfReplicaSpecs": {
                "Worker": {"replicas": 1, "template": {"spec": {"containers": [container]}}}
            }
        },
    }


async def test_a_tfjob_in_another_tenants_namespace_is_422_exactly_as_in_a_missing_one(
    api: CheckedClient, settings: Settings, world: World, engine: AsyncEngine
) -> None:
    alice = as_user(api, settings, "alice@example.com", **{A: "submitter"})
    before = await row_counts(engine)

    theirs = await alice.post("/v1/jobs", json=tfjob(B))
    absent = await alice.post("/v1/jobs", json=tfjob("nowhere"))
    by_query = await alice.post(f"/v1/jobs?tenant={B}", json=tfjob(A))

    assert theirs.status == absent.status == by_query.status == 422, theirs.text
    assert problem(theirs, repr(B)) == problem(absent, repr("nowhere"))
    assert by_query.body["errors"][0]["detail"] == f"tenant {B!r} does not exist"
    assert await row_counts(engine) == before
    assert (await alice.post("/v1/jobs", json=tfjob(A))).status == 201


# --- roles ------------------------------------------------------------------------------------


async def test_a_viewer_reads_but_cannot_submit_cancel_redeliver_or_rotate(
    api: CheckedClient, settings: Settings, world: World, engine: AsyncEngine
) -> None:
    vera = as_user(api, settings, "vera@example.com", **{B: "viewer"})
    b_id, b_done = world.b_job["id"], world.b_cancelled["id"]
    b_before = await job_row(engine, b_id)
    counts = await row_counts(engine)

    for path in [
        "/v1/jobs",
        f"/v1/jobs/{b_id}",
        f"/v1/jobs/{b_id}/events",
        f"/v1/jobs/{b_done}/deliveries",
        f"/v1/tenants/{B}",
        f"/v1/tenants/{B}/usage",
    ]:
        response = await vera.get(path)
        assert response.status == 200, (path, response.text)

    for method, path, body in [
        ("POST", "/v1/jobs", job_spec("v", tenant=B)),
        ("POST", f"/v1/jobs/{b_id}/cancel", None),
        ("POST", f"/v1/jobs/{b_id}/cancel", {"reason": "please"}),
        ("POST", f"/v1/jobs/{b_done}/deliveries/{world.b_delivery}/redeliver", None),
        ("POST", f"/v1/tenants/{B}/webhook-secret/rotate", None),
    ]:
        kwargs = {} if body is None else {"json": body}
        response = await vera.request(method, path, **kwargs)
        assert response.status == 403, (method, path, response.text)
        assert f"your role in tenant {B!r} is viewer" in response.body["detail"]

    assert await job_row(engine, b_id) == b_before
    assert await row_counts(engine) == counts


ADMIN_REQUESTS = [
    ("GET", "/v1/admin/tenants", None),
    ("GET", f"/v1/admin/tenants/{A}", None),
    ("PUT", f"/v1/admin/tenants/{A}", {"quota": {"cpu": "1000"}}),
    ("PATCH", f"/v1/admin/tenants/{A}", {"quota": {"cpu": "1000"}}),
    ("DELETE", f"/v1/admin/tenants/{A}", None),
    ("PUT", "/v1/admin/tenants/brand-new", {"quota": {"cpu": "1"}}),
    ("GET", f"/v1/admin/tenants/{A}/grants", None),
    ("PUT", f"/v1/admin/tenants/{A}/grants", {"users": {"sam@example.com": "tenant-admin"}}),
    ("GET", "/v1/admin/audit", None),
]


@pytest.mark.parametrize("role", ["submitter", "tenant-admin"])
async def test_tenant_roles_cannot_use_admin_endpoints(
    api: CheckedClient, settings: Settings, world: World, engine: AsyncEngine, role: str
) -> None:
    sam = as_user(api, settings, "sam@example.com", **{A: role})
    counts = await row_counts(engine)
    tenant_before = (await api.get(f"/v1/admin/tenants/{A}")).body

    for method, path, body in ADMIN_REQUESTS:
        kwargs = {} if body is None else {"json": body}
        response = await sam.request(method, path, **kwargs)
        assert response.status == 403, (method, path, response.text)
        assert "only platform admins" in response.body["detail"]

    assert await row_counts(engine) == counts
    assert (await api.get(f"/v1/admin/tenants/{A}")).body == tenant_before
    assert (await api.get(f"/v1/admin/tenants/{A}/grants")).body == {"groups": {}, "users": {}}


async def test_only_a_tenant_admin_may_rotate_the_webhook_secret(
    api: CheckedClient, settings: Settings, world: World, engine: AsyncEngine
) -> None:
    submitter = as_user(api, settings, "sue@example.com", **{A: "submitter"})
    refused = await submitter.post(f"/v1/tenants/{A}/webhook-secret/rotate")
    assert refused.status == 403
    assert "you need tenant-admin" in refused.body["detail"]

    tenant_admin = as_user(api, settings, "tam@example.com", **{A: "tenant-admin"})
    rotated = await tenant_admin.post(f"/v1/tenants/{A}/webhook-secret/rotate")
    assert rotated.status == 200, rotated.text
    assert rotated.body["tenant"] == A
    assert rotated.body["webhook_secret"].startswith("whsec_")

    async with engine.connect() as conn:
        actor = await conn.scalar(
            text(
                "SELECT actor FROM audit_log WHERE action = 'rotate-webhook-secret' AND tenant = :t"
            ),
            {"t": A},
        )
    assert actor == "tam@example.com"


async def test_a_platform_admin_changes_quotas(api: CheckedClient, world: World) -> None:
    patched = await api.patch(f"/v1/admin/tenants/{A}", json={"quota": {"cpu": "50", "gpu": 2}})

    assert patched.status == 200, patched.text
    assert patched.body["quota"]["cpu"] == "50"
    assert patched.body["quota"]["gpu"] == 2
    assert (await api.get(f"/v1/admin/tenants/{A}")).body["quota"]["cpu"] == "50"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def frozen(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> AsyncIterator[tuple[CheckedClient, Clock]]:
    """The API with its grants cache on a clock that moves only when the test moves it, so a
    grant seen at once can only have come from the cache being forgotten."""
    clock = Clock()
    authenticator = Authenticator(
        make_authenticator(settings, engine).verifier,
        engine,
        admin_groups=settings.auth.admin_groups,
        user_claim=settings.auth.oidc_user_claim,
        groups_claim=settings.auth.oidc_groups_claim,
        clock=clock,
    )
    app = make_app(settings, engine, StaticInventory(nodes), authenticator=authenticator)
    async with TestClient(TestServer(app)) as client:
        yield CheckedClient(client, tokens.admin_token(settings)), clock


async def test_grants_take_effect_on_the_next_request_and_removing_them_revokes(
    frozen: tuple[CheckedClient, Clock], settings: Settings, engine: AsyncEngine
) -> None:
    api, _ = frozen
    await create_tenant(api, A)
    a_job = await submit(api, job_spec("a-job", tenant=A))
    carol = api.as_(tokens.token(settings, user="carol@example.com", groups=("ml-team",)))
    grants = f"/v1/admin/tenants/{A}/grants"
    assert (await carol.get("/v1/jobs")).status == 403  # loads (and caches) the grants

    # a group grant
    put = await api.put(grants, json={"groups": {"ml-team": "viewer"}})
    assert put.status == 200, put.text
    assert put.body == {"groups": {"ml-team": "viewer"}, "users": {}}
    listed = await carol.get("/v1/jobs")
    assert listed.status == 200
    assert [job["id"] for job in listed.body["items"]] == [a_job["id"]]
    assert (await carol.post("/v1/jobs", json=job_spec("c", tenant=A))).status == 403

    # a user grant, matched on the token's user claim (email); the group grant is replaced
    put = await api.put(grants, json={"users": {"carol@example.com": "submitter"}})
    assert put.status == 200, put.text
    submitted = await carol.post("/v1/jobs", json=job_spec("c", tenant=A))
    assert submitted.status == 201, submitted.text
    assert submitted.body["submitted_by"] == "carol@example.com"
    assert (await api.get(grants)).body == {
        "groups": {},
        "users": {"carol@example.com": "submitter"},
    }

    # revoked
    assert (await api.put(grants, json={})).status == 200
    assert (await carol.get("/v1/jobs")).status == 403
    assert (await carol.get(f"/v1/jobs/{submitted.body['id']}")).status == 403

    # every change is in the audit log, with the admin as the actor
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT actor, before, after FROM audit_log "
                    "WHERE action = 'grants' AND tenant = :t ORDER BY id"
                ),
                {"t": A},
            )
        ).all()
    assert [row.actor for row in rows] == ["admin@example.com"] * 3
    assert [row.after for row in rows] == [
        {"groups": {"ml-team": "viewer"}, "users": {}},
        {"groups": {}, "users": {"carol@example.com": "submitter"}},
        {"groups": {}, "users": {}},
    ]
    assert rows[1].before == rows[0].after


async def test_a_grant_written_by_another_replica_is_seen_within_two_seconds(
    frozen: tuple[CheckedClient, Clock], settings: Settings, engine: AsyncEngine
) -> None:
    api, clock = frozen
    await create_tenant(api, A)
    carol = api.as_(tokens.token(settings, user="carol@example.com", groups=("ml-team",)))
    assert (await carol.get("/v1/jobs")).status == 403  # loads (and caches) the grants
    async with engine.begin() as conn:  # another replica's PUT of the grants
        await conn.execute(
            text(
                "INSERT INTO tenant_grants (tenant, kind, name, role) "
                "VALUES (:t, 'group', 'ml-team', 'viewer')"
            ),
            {"t": A},
        )

    clock.now += 1.9
    assert (await carol.get("/v1/jobs")).status == 403  # this replica's cache is still good
    clock.now += 0.1
    assert (await carol.get("/v1/jobs")).status == 200


async def test_a_user_grant_matches_the_subject_when_the_token_has_no_user_claim(
    api: CheckedClient, settings: Settings, world: World
) -> None:
    robot = mint(
        local_key_set(settings.issuer_key_file),
        audience=settings.auth.oidc_audience,
        subject="ci-robot",
        groups=[],
        ttl_seconds=600,
    )
    assert (await api.as_(robot).get("/v1/jobs")).status == 403
    assert (
        await api.put(f"/v1/admin/tenants/{A}/grants", json={"users": {"ci-robot": "submitter"}})
    ).status == 200

    submitted = await api.as_(robot).post("/v1/jobs", json=job_spec("ci", tenant=A))

    assert submitted.status == 201, submitted.text
    assert submitted.body["submitted_by"] == "ci-robot"


async def test_a_grants_change_is_listed_in_the_audit_api_with_the_admin_as_actor(
    api: CheckedClient, world: World
) -> None:
    put = await api.put(f"/v1/admin/tenants/{A}/grants", json={"groups": {"ml": "viewer"}})
    assert put.status == 200

    audit = await api.get(f"/v1/admin/audit?tenant={A}")

    assert audit.status == 200, audit.text
    latest = audit.body["items"][0]
    assert latest["action"] == "grants"
    assert latest["actor"] == "admin@example.com"
    assert latest["after"] == {"groups": {"ml": "viewer"}, "users": {}}


# --- submitting without a tenant --------------------------------------------------------------


def without_tenant(name: str) -> dict[str, Any]:
    spec = job_spec(name)
    del spec["tenant"]
    return spec


async def test_a_job_without_a_tenant_goes_to_the_callers_only_submittable_tenant(
    api: CheckedClient, settings: Settings, world: World
) -> None:
    # viewer in beta does not count: alpha is the only tenant alice may submit to
    alice = as_user(api, settings, "alice@example.com", **{A: "submitter", B: "viewer"})

    submitted = await alice.post("/v1/jobs", json=without_tenant("implicit"))

    assert submitted.status == 201, submitted.text
    assert submitted.body["tenant"] == A
    assert submitted.body["spec"]["tenant"] == A


@pytest.mark.parametrize(
    ("roles", "choices"),
    [
        ({A: "submitter", B: "submitter"}, "several tenants"),
        ({A: "viewer"}, "no tenant"),
    ],
)
async def test_a_job_without_a_tenant_is_422_unless_the_caller_has_exactly_one(
    api: CheckedClient,
    settings: Settings,
    world: World,
    engine: AsyncEngine,
    roles: dict[str, str],
    choices: str,
) -> None:
    caller = as_user(api, settings, "multi@example.com", **roles)
    before = await row_counts(engine)

    response = await caller.post("/v1/jobs", json=without_tenant("implicit"))

    assert response.status == 422, response.text
    assert response.body["errors"] == [
        {"pointer": "/tenant", "detail": f"is required: you may submit to {choices}"}
    ]
    assert await row_counts(engine) == before


async def test_an_admins_job_without_a_tenant_is_422(
    api: CheckedClient, world: World, engine: AsyncEngine
) -> None:
    before = await row_counts(engine)
    response = await api.post("/v1/jobs", json=without_tenant("implicit"))

    assert response.status == 422, response.text
    assert [e["pointer"] for e in response.body["errors"]] == ["/tenant"]
    assert await row_counts(engine) == before


# --- mass assignment --------------------------------------------------------------------------


async def test_server_owned_fields_in_a_submit_are_422_each_named(
    api: CheckedClient, world: World, engine: AsyncEngine
) -> None:
    before = await row_counts(engine)
    owned = {
        "state": "running",
        "admitted_at": "2026-01-01T00:00:00Z",
        "placements": [{"node": "gpu-0", "role": "worker", "index": 0}],
        "id": str(uuid.uuid4()),
        "submitted_by": "someone-else@example.com",
        "queue_position": 0,
        "attempt": 7,
    }

    response = await api.post("/v1/jobs", json=job_spec("mass", tenant=A, **owned))

    assert response.status == 422, response.text
    assert sorted(response.body["errors"], key=lambda e: e["pointer"]) == [
        {"pointer": f"/{field}", "detail": SERVER_OWNED} for field in sorted(owned)
    ]
    assert await row_counts(engine) == before


@pytest.mark.parametrize(
    "body",
    [{"tenant": B}, {"state": "queued"}, {"reason": "fine", "state": "queued"}, {"reason": ""}],
    ids=["tenant", "state", "reason-and-state", "empty-reason"],
)
async def test_a_cancel_body_with_anything_but_a_reason_is_422_and_changes_nothing(
    api: CheckedClient, world: World, engine: AsyncEngine, body: dict[str, Any]
) -> None:
    job_id = world.a_job["id"]
    before, counts = await job_row(engine, job_id), await row_counts(engine)

    response = await api.post(f"/v1/jobs/{job_id}/cancel", json=body)

    assert response.status == 422, response.text
    assert await job_row(engine, job_id) == before
    assert await row_counts(engine) == counts


async def test_a_cancel_body_naming_state_says_it_is_server_owned(
    api: CheckedClient, world: World
) -> None:
    response = await api.post(f"/v1/jobs/{world.a_job['id']}/cancel", json={"state": "queued"})
    assert response.body["errors"] == [{"pointer": "/state", "detail": SERVER_OWNED}]


@pytest.mark.parametrize("field", ["created_at", "updated_at", "webhook_secret"])
async def test_server_owned_fields_in_a_tenant_put_are_422(
    api: CheckedClient, engine: AsyncEngine, field: str
) -> None:
    before = await row_counts(engine)
    response = await api.put(
        "/v1/admin/tenants/x", json={**tenant_body(), field: "2020-01-01T00:00:00Z"}
    )

    assert response.status == 422, response.text
    assert response.body["errors"] == [{"pointer": f"/{field}", "detail": SERVER_OWNED}]
    assert await row_counts(engine) == before
    assert (await api.get("/v1/admin/tenants/x")).status == 404


async def test_reusing_an_idempotency_key_with_another_tenant_does_not_move_the_job(
    api: CheckedClient, settings: Settings, world: World, engine: AsyncEngine
) -> None:
    key = {"Idempotency-Key": "submit-once"}
    first = await api.post("/v1/jobs", json=job_spec("once", tenant=A), headers=key)
    assert first.status == 201, first.text
    before = await job_row(engine, first.body["id"])

    # a platform admin may submit to beta: that is a new job there, not the alpha job moved
    again = await api.post("/v1/jobs", json=job_spec("once", tenant=B), headers=key)
    assert again.status == 201, again.text
    assert again.body["id"] != first.body["id"]
    assert again.body["tenant"] == B

    # alpha's submitter cannot even name beta
    alice = as_user(api, settings, "alice@example.com", **{A: "submitter"})
    sneak = await alice.post("/v1/jobs", json=job_spec("once", tenant=B), headers=key)
    assert sneak.status == 422, sneak.text

    assert await job_row(engine, first.body["id"]) == before


# --- the principal is recorded ----------------------------------------------------------------


async def test_the_callers_user_is_recorded_on_the_job_and_its_events(
    api: CheckedClient, settings: Settings, world: World
) -> None:
    dora = as_user(api, settings, "dora@example.com", **{A: "submitter"})
    job = await submit(dora, job_spec("recorded", tenant=A))
    assert job["submitted_by"] == "dora@example.com"

    cancelled = await dora.post(f"/v1/jobs/{job['id']}/cancel", json={"reason": "wrong image"})
    assert cancelled.status == 200, cancelled.text
    assert cancelled.body["state"] == "cancelled"
    assert cancelled.body["message"] == "cancelled by dora@example.com: wrong image"
    assert cancelled.body["submitted_by"] == "dora@example.com"

    events = (await api.get(f"/v1/jobs/{job['id']}/events")).body["items"]
    assert [(e["type"], e["actor"]) for e in events] == [
        ("submitted", "dora@example.com"),
        ("cancelled", "dora@example.com"),
    ]
    assert "wrong image" in events[-1]["message"]


async def test_a_cancel_by_an_admin_records_the_admin_not_the_submitter(
    api: CheckedClient, world: World
) -> None:
    cancelled = await api.post(f"/v1/jobs/{world.a_job['id']}/cancel")

    assert cancelled.body["message"] == "cancelled by admin@example.com"
    assert cancelled.body["submitted_by"] == "admin@example.com"
    events = (await api.get(f"/v1/jobs/{world.a_job['id']}/events")).body["items"]
    assert events[-1]["actor"] == "admin@example.com"


# --- the OpenAPI document ---------------------------------------------------------------------

METHODS = ("get", "put", "post", "patch", "delete")


def operations() -> list[tuple[str, str, Mapping[str, Any], list[Mapping[str, Any]]]]:
    """(path, method, operation, its parameters and the path's) for every operation."""
    found = []
    for path, item in openapi_document()["paths"].items():
        for method in METHODS:
            if method in item:
                operation = item[method]
                parameters = [*item.get("parameters", []), *operation.get("parameters", [])]
                found.append((path, method, operation, parameters))
    return found


def _public(operation: Mapping[str, Any]) -> bool:
    return operation.get("security") == []


def test_the_document_declares_bearer_auth_for_every_operation_by_default() -> None:
    document = openapi_document()
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearerAuth": []}]


def test_exactly_the_public_paths_declare_no_security() -> None:
    public = {path for path, _, operation, _ in operations() if _public(operation)}
    assert public == set(PUBLIC_PATHS)


def test_every_non_public_operation_declares_401() -> None:
    missing = [
        f"{method.upper()} {path}"
        for path, method, operation, _ in operations()
        if not _public(operation) and "401" not in operation["responses"]
    ]
    assert missing == []


def test_every_admin_and_tenant_scoped_operation_declares_403() -> None:
    scoped = ("/v1/admin/", "/v1/jobs", "/v1/tenants/", "/v1/events")
    missing = [
        f"{method.upper()} {path}"
        for path, method, operation, _ in operations()
        if path.startswith(scoped) and "403" not in operation["responses"]
    ]
    assert missing == []


def test_every_operation_on_an_id_or_tenant_declares_404() -> None:
    missing = [
        f"{method.upper()} {path}"
        for path, method, operation, _ in operations()
        if ("{id}" in path or "{tenant}" in path) and "404" not in operation["responses"]
    ]
    assert missing == []


def test_every_operation_with_a_json_body_declares_422() -> None:
    with_body = [
        (path, method, operation)
        for path, method, operation, _ in operations()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]
    assert len(with_body) >= 5
    missing = [
        f"{method.upper()} {path}"
        for path, method, operation in with_body
        if "422" not in operation["responses"]
    ]
    assert missing == []
