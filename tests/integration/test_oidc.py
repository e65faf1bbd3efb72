"""An external OIDC issuer over real HTTP: discovery, the JWKS, key rotation, refetch limits, an
issuer that is down or names another issuer, and a Dex-shaped token mapped through a grant.

The issuer is a small aiohttp server on 127.0.0.1 that serves its discovery document and a JWKS
the test can change, and counts the requests it answers. Where a test needs time to pass for the
key cache (``CachedKeys`` refetches an unknown kid at most every 10 s), it builds the
authenticator itself with a clock it controls, keeping ``oidc_loader`` as the loader; elsewhere
the app builds its own with ``make_authenticator``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.auth.authenticator import Authenticator, make_authenticator
from gateway.auth.keys import public_jwks
from gateway.backends.nodes_file import StaticInventory
from gateway.domain.scheduling.nodes import Node
from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import create_tenant, job_spec, row_counts
from tests.openapi_check import CheckedClient

CLIENT_ID = "muster-client"
TENANT = "alpha"
ADMIN_GROUP = "muster-admins"


def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)


@pytest.fixture(scope="module")
def first_key() -> RSAKey:
    return rsa_key()


@pytest.fixture(scope="module")
def second_key() -> RSAKey:
    return rsa_key()


class FakeIssuer:
    """An OIDC provider's discovery document and JWKS over HTTP, with a request counter."""

    def __init__(self, key: RSAKey) -> None:
        self.keys = [key]
        self.requests: collections.Counter[str] = collections.Counter()
        self.named_issuer: str | None = None  # what discovery says the issuer is; None: itself
        self.down = False  # answer 503 to everything
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/keys", self._keys)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, request: web.Request) -> web.Response:
        self.requests["discovery"] += 1
        if self.down:
            return web.Response(status=503)
        return web.json_response(
            {
                "issuer": self.named_issuer or self.url,
                "jwks_uri": f"{self.url}/keys",
                "authorization_endpoint": f"{self.url}/auth",
                "token_endpoint": f"{self.url}/token",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def _keys(self, request: web.Request) -> web.Response:
        self.requests["keys"] += 1
        if self.down:
            return web.Response(status=503)
        return web.json_response(public_jwks(KeySet(self.keys)))

    def token(
        self,
        *,
        key: RSAKey | None = None,
        kid: str | None = None,
        groups: list[str] | None = None,
        email: str | None = "ada@example.com",
        **claims: Any,
    ) -> str:
        """A token as this issuer signs it: its first key unless ``key`` is given."""
        signer = key or self.keys[0]
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "sub": "ada",
            "iat": now,
            "exp": now + 600,
            "groups": groups or [],
            "jti": uuid.uuid4().hex,  # every token is new: none is answered from memory
            **claims,
        }
        if email is not None:
            body["email"] = email
            body.setdefault("email_verified", True)  # as Dex vouches for its LDAP users' mail
        header = {"alg": "RS256", "typ": "JWT", "kid": kid or signer.kid}
        return jwt.encode(header, body, signer)

    def admin_token(self) -> str:
        return self.token(groups=[ADMIN_GROUP], email="root@example.com", sub="root")


@pytest.fixture
async def issuer(first_key: RSAKey) -> AsyncIterator[FakeIssuer]:
    server = FakeIssuer(first_key)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def oidc_settings(settings: Settings, issuer_url: str) -> Settings:
    auth = dataclasses.replace(
        settings.auth, oidc_issuer=issuer_url, oidc_audience=CLIENT_ID, admin_groups=(ADMIN_GROUP,)
    )
    return dataclasses.replace(settings, auth=auth)


def clocked_authenticator(settings: Settings, engine: AsyncEngine, clock: Clock) -> Authenticator:
    """What make_authenticator builds for an external issuer, with the key cache on ``clock``."""
    assert settings.auth.oidc_issuer is not None
    return make_authenticator(settings, engine, clock=clock)


Gateway = Callable[..., contextlib.AbstractAsyncContextManager[CheckedClient]]


@pytest.fixture
def gateway(engine: AsyncEngine, nodes: tuple[Node, ...]) -> Gateway:
    """gateway(settings, authenticator=None, token=None): the API under those settings."""

    @contextlib.asynccontextmanager
    async def start(
        settings: Settings, authenticator: Authenticator | None = None, token: str | None = None
    ) -> AsyncIterator[CheckedClient]:
        app = make_app(settings, engine, StaticInventory(nodes), authenticator=authenticator)
        async with TestClient(TestServer(app)) as client:
            yield CheckedClient(client, token)

    return start


# --- tokens of the external issuer ------------------------------------------------------------


def test_make_authenticator_uses_the_external_issuer_when_one_is_set(
    settings: Settings, engine: AsyncEngine
) -> None:
    external = make_authenticator(oidc_settings(settings, "https://idp.example"), engine)
    assert external.verifier.issuer == "https://idp.example"
    assert external.verifier.audience == CLIENT_ID
    assert external.verifier.algorithms == settings.auth.oidc_algorithms

    local = make_authenticator(settings, engine)
    assert local.verifier.issuer == "urn:muster:local-issuer"
    assert local.verifier.algorithms == ("RS256",)


async def test_an_external_issuers_role_group_grants_nothing_unless_the_operator_allows_it(
    issuer: FakeIssuer, settings: Settings, gateway: Gateway
) -> None:
    async with gateway(oidc_settings(settings, issuer.url), token=issuer.admin_token()) as api:
        await create_tenant(api, TENANT)
        ada = api.as_(issuer.token(groups=[f"muster:{TENANT}:submitter"]))
        refused = await ada.post("/v1/jobs", json=job_spec("oidc", tenant=TENANT))
        assert refused.status == 403, refused.text


async def test_a_token_of_the_external_issuer_with_a_role_group_submits_to_its_tenant(
    issuer: FakeIssuer, settings: Settings, gateway: Gateway
) -> None:
    external = oidc_settings(settings, issuer.url)
    configured = dataclasses.replace(
        external, auth=dataclasses.replace(external.auth, oidc_role_groups=True)
    )
    async with gateway(configured, token=issuer.admin_token()) as api:
        await create_tenant(api, TENANT)
        ada = api.as_(issuer.token(groups=[f"muster:{TENANT}:submitter"]))

        submitted = await ada.post("/v1/jobs", json=job_spec("oidc", tenant=TENANT))

        assert submitted.status == 201, submitted.text
        assert submitted.body["submitted_by"] == "ada@example.com"
        assert (await ada.get("/v1/admin/tenants")).status == 403
        # discovery once, the keys once, for every token of the test
        assert issuer.requests == {"discovery": 1, "keys": 1}


async def test_local_issuer_tokens_are_refused_when_an_external_issuer_is_set(
    issuer: FakeIssuer, settings: Settings, gateway: Gateway
) -> None:
    async with gateway(oidc_settings(settings, issuer.url)) as api:
        local = api.as_(tokens.admin_token(settings))
        response = await local.get("/v1/admin/tenants")
        assert response.status == 401
        assert "WWW-Authenticate" in response.headers

        jwks = await api.as_(None).get("/.well-known/jwks.json")
        assert jwks.body == {"keys": []}


async def test_the_issuer_proof_is_a_404_problem_when_an_external_issuer_is_set(
    issuer: FakeIssuer, settings: Settings, gateway: Gateway
) -> None:
    async with gateway(oidc_settings(settings, issuer.url)) as api:
        response = await api.as_(None).get(f"/v1/issuer/proof?challenge={'c' * 43}")

        assert response.status == 404
        assert response.content_type == "application/problem+json"
        assert "external issuer" in response.body["detail"]


async def test_a_token_with_the_issuers_key_but_another_iss_is_401(
    issuer: FakeIssuer, settings: Settings, gateway: Gateway
) -> None:
    async with gateway(oidc_settings(settings, issuer.url)) as api:
        forged = issuer.token(groups=[ADMIN_GROUP], iss="https://other-issuer.example")

        response = await api.as_(forged).get("/v1/admin/tenants")

        assert response.status == 401
        assert f"not issued by {issuer.url}" in response.body["detail"]


async def test_a_token_for_another_client_is_401(
    issuer: FakeIssuer, settings: Settings, gateway: Gateway
) -> None:
    async with gateway(oidc_settings(settings, issuer.url)) as api:
        response = await api.as_(issuer.token(groups=[ADMIN_GROUP], aud="grafana")).get(
            "/v1/admin/tenants"
        )
        assert response.status == 401
        assert "audience" in response.body["detail"]


# --- key rotation and refetch limits ----------------------------------------------------------


async def test_a_rotated_key_is_accepted_after_exactly_one_jwks_refetch(
    issuer: FakeIssuer,
    settings: Settings,
    engine: AsyncEngine,
    gateway: Gateway,
    second_key: RSAKey,
) -> None:
    configured = oidc_settings(settings, issuer.url)
    clock = Clock()
    async with gateway(configured, clocked_authenticator(configured, engine, clock)) as api:
        assert (await api.as_(issuer.admin_token()).get("/v1/admin/tenants")).status == 200
        assert issuer.requests == {"discovery": 1, "keys": 1}

        issuer.keys = [second_key, *issuer.keys]  # the issuer rotates: a new kid signs
        clock.advance(10)
        rotated = issuer.token(groups=[ADMIN_GROUP], key=second_key)

        response = await api.as_(rotated).get("/v1/admin/tenants")

        assert response.status == 200, response.text
        assert issuer.requests == {"discovery": 1, "keys": 2}
        # both kids verify now, without another fetch
        assert (await api.as_(issuer.admin_token()).get("/v1/admin/tenants")).status == 200
        old = issuer.token(groups=[ADMIN_GROUP], key=issuer.keys[1], sub="old")
        assert (await api.as_(old).get("/v1/admin/tenants")).status == 200
        assert issuer.requests == {"discovery": 1, "keys": 2}


async def test_a_rotated_key_within_ten_seconds_of_the_last_fetch_waits_for_the_next(
    issuer: FakeIssuer,
    settings: Settings,
    engine: AsyncEngine,
    gateway: Gateway,
    second_key: RSAKey,
) -> None:
    configured = oidc_settings(settings, issuer.url)
    clock = Clock()
    async with gateway(configured, clocked_authenticator(configured, engine, clock)) as api:
        assert (await api.as_(issuer.admin_token()).get("/v1/admin/tenants")).status == 200
        issuer.keys = [second_key, *issuer.keys]
        rotated = issuer.token(groups=[ADMIN_GROUP], key=second_key)
        clock.advance(5)

        refused = await api.as_(rotated).get("/v1/admin/tenants")
        assert refused.status == 401
        assert issuer.requests["keys"] == 1

        clock.advance(5)
        assert (await api.as_(rotated).get("/v1/admin/tenants")).status == 200
        assert issuer.requests["keys"] == 2


async def test_an_unknown_kid_that_never_appears_is_401_with_at_most_one_refetch(
    issuer: FakeIssuer,
    settings: Settings,
    engine: AsyncEngine,
    gateway: Gateway,
    second_key: RSAKey,
) -> None:
    configured = oidc_settings(settings, issuer.url)
    clock = Clock()
    async with gateway(configured, clocked_authenticator(configured, engine, clock)) as api:
        assert (await api.as_(issuer.admin_token()).get("/v1/admin/tenants")).status == 200
        clock.advance(10)  # the next unknown kid may cause one fetch
        fetched = issuer.requests["keys"]

        for n in range(50):
            forged = issuer.token(groups=[ADMIN_GROUP], key=second_key, kid=f"forged-{n}")
            response = await api.as_(forged).get("/v1/admin/tenants")
            assert response.status == 401, response.text
            assert "publishes no key" in response.body["detail"]
            clock.advance(0.1)  # 50 requests within 5 seconds

        assert issuer.requests["keys"] - fetched <= 1
        assert issuer.requests["discovery"] == 1


# --- an issuer that is down or lies -----------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_issuer_down_at_first_use_answers_503_not_500(
    settings: Settings, gateway: Gateway, engine: AsyncEngine, first_key: RSAKey
) -> None:
    unreachable = f"http://127.0.0.1:{closed_port()}"
    nobody_home = FakeIssuer(first_key)
    nobody_home.port = int(unreachable.rsplit(":", 1)[1])
    admin = nobody_home.admin_token()
    before = await row_counts(engine)
    async with gateway(oidc_settings(settings, unreachable), token=admin) as api:
        # /metrics declares 503, so the answer is checked against the contract
        metrics = await api.get("/metrics")
        assert metrics.status == 503, metrics.text
        assert metrics.body["type"].endswith("/unavailable")
        assert "issuer" in metrics.body["detail"]
        assert metrics.headers["Retry-After"] == "10"

        # other operations do not declare 503 (see the report): read the raw answer
        async with api.client.post(
            "/v1/jobs",
            json=job_spec("down", tenant=TENANT),
            headers={"Authorization": f"Bearer {admin}"},
        ) as raw:
            assert raw.status == 503
            assert raw.content_type == "application/problem+json"
            assert "issuer" in (await raw.json())["detail"]

        assert (await api.as_(None).get("/healthz")).status == 200
    assert await row_counts(engine) == before


async def test_an_issuer_failing_then_recovering_answers_503_then_accepts_tokens(
    issuer: FakeIssuer, settings: Settings, engine: AsyncEngine, gateway: Gateway
) -> None:
    configured = oidc_settings(settings, issuer.url)
    clock = Clock()
    issuer.down = True
    async with gateway(configured, clocked_authenticator(configured, engine, clock)) as api:
        api = api.as_(issuer.admin_token())
        assert (await api.get("/metrics")).status == 503

        issuer.down = False
        clock.advance(10)
        assert (await api.get("/metrics")).status == 200

        issuer.down = True  # down again later: the keys it had keep working
        clock.advance(3600)  # the keys are due for a refresh, which fails
        fetched = issuer.requests["keys"]
        assert (await api.as_(issuer.admin_token()).get("/metrics")).status == 200
        assert issuer.requests["keys"] == fetched + 1


async def test_a_discovery_document_naming_another_issuer_is_503_and_no_token_is_accepted(
    issuer: FakeIssuer, settings: Settings, gateway: Gateway
) -> None:
    liar = "https://other-issuer.example"
    issuer.named_issuer = liar
    async with gateway(oidc_settings(settings, issuer.url)) as api:
        for token in [
            issuer.admin_token(),
            issuer.token(groups=[ADMIN_GROUP], iss=liar),
        ]:
            response = await api.as_(token).get("/metrics")
            assert response.status == 503, response.text
    assert issuer.requests["keys"] == 0  # the keys of a mismatched issuer are never read
    assert issuer.requests["discovery"] == 1  # and discovery is not retried at once


# --- a Dex-shaped token -----------------------------------------------------------------------


async def test_a_dex_token_gets_the_role_granted_to_its_group(
    issuer: FakeIssuer, settings: Settings, gateway: Gateway
) -> None:
    """Dex puts the connector's groups in ``groups``, the address in ``email``, the client id in
    ``aud``, and an opaque ``sub``; the grant for its group gives the role."""
    dex = issuer.token(
        sub="CgVhbGljZRIFbG9jYWw",  # Dex's base64 of (user id, connector id)
        email="alice@example.com",
        email_verified=True,
        name="Alice",
        groups=["ml-team", "staff"],
        nonce=uuid.uuid4().hex,
        at_hash="eNDSvTGtmAVF3Rj6z4mh7Q",
    )
    async with gateway(oidc_settings(settings, issuer.url), token=issuer.admin_token()) as api:
        await create_tenant(api, TENANT)
        alice = api.as_(dex)
        assert (await alice.get("/v1/jobs")).status == 403

        grants = await api.put(
            f"/v1/admin/tenants/{TENANT}/grants", json={"groups": {"ml-team": "submitter"}}
        )
        assert grants.status == 200, grants.text

        submitted = await alice.post("/v1/jobs", json=job_spec("dex", tenant=TENANT))
        assert submitted.status == 201, submitted.text
        assert submitted.body["submitted_by"] == "alice@example.com"
        assert (await alice.get(f"/v1/tenants/{TENANT}")).status == 200
        assert (await alice.post(f"/v1/tenants/{TENANT}/webhook-secret/rotate")).status == 403
