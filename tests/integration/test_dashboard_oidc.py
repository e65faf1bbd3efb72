"""The dashboard signs in through an external issuer with the authorization code flow and PKCE,
over real HTTP: the issuer here is a small aiohttp server that checks the client id, the
redirect URI and the S256 code verifier as a provider such as Dex does."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from joserfc.jwk import RSAKey
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.auth.sessions import FLOW_COOKIE, SESSION_COOKIE
from gateway.backends.nodes_file import StaticInventory
from gateway.domain.scheduling.nodes import Node
from gateway.settings import Settings, UiSettings
from tests.integration.test_oidc import ADMIN_GROUP, FakeIssuer, oidc_settings, rsa_key

DASHBOARD_CLIENT = "muster-dashboard"


class Provider(FakeIssuer):
    """A FakeIssuer that also signs users in: /auth approves at once (as a provider whose user
    already has a session), /token exchanges a code once, for its PKCE verifier."""

    def __init__(self, key: RSAKey) -> None:
        super().__init__(key)
        self.codes: dict[str, dict[str, str]] = {}
        self.groups = [ADMIN_GROUP]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/keys", self._keys)
        app.router.add_get("/auth", self._authorize)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def _authorize(self, request: web.Request) -> web.Response:
        query = request.query
        assert query["response_type"] == "code"
        assert query["code_challenge_method"] == "S256"
        code = f"code-{len(self.codes)}"
        self.codes[code] = dict(query)
        location = f"{query['redirect_uri']}?code={code}&state={query['state']}"
        return web.Response(status=302, headers={"Location": location})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        asked = self.codes.pop(str(form.get("code")), None)
        if asked is None:
            return web.json_response({"error": "invalid_grant"}, status=400)
        verifier = str(form.get("code_verifier", "")).encode()
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
        if (
            form.get("grant_type") != "authorization_code"
            or form.get("client_id") != asked["client_id"]
            or form.get("redirect_uri") != asked["redirect_uri"]
            or challenge.decode() != asked["code_challenge"]
        ):
            return web.json_response(
                {"error": "invalid_grant", "error_description": "PKCE verification failed"},
                status=400,
            )
        token = self.token(groups=self.groups, nonce=asked["nonce"])
        return web.json_response(
            {"access_token": token, "id_token": token, "token_type": "bearer", "expires_in": 600}
        )


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    server = Provider(rsa_key())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def dashboard(
    provider: Provider, settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...]
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    configured = dataclasses.replace(
        oidc_settings(settings, provider.url), ui=UiSettings(client_id=DASHBOARD_CLIENT)
    )
    app = make_app(configured, engine, StaticInventory(nodes))
    async with TestClient(TestServer(app)) as client:
        yield client


async def start_sign_in(client: TestClient[Any, Any], path: str) -> tuple[str, str]:
    """The provider's authorization URL the dashboard sends the browser to, and its flow cookie."""
    async with client.get(path, allow_redirects=False) as response:
        assert response.status == 303, await response.text()
        return response.headers["Location"], response.cookies[FLOW_COOKIE].value


async def approve(location: str) -> str:
    """The provider's redirect back to the dashboard (its /ui/callback?code&state)."""
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(location, allow_redirects=False) as answer,
    ):
        assert answer.status == 302
        return answer.headers["Location"]


async def test_the_dashboard_signs_in_with_the_code_flow_and_pkce(
    provider: Provider, dashboard: TestClient[Any, Any]
) -> None:
    location, flow = await start_sign_in(dashboard, "/ui/login?next=/ui/jobs")
    asked = parse_qs(urlsplit(location).query)
    assert location.startswith(f"{provider.url}/auth?")
    assert asked["client_id"] == [DASHBOARD_CLIENT]
    assert asked["redirect_uri"] == [f"http://127.0.0.1:{dashboard.port}/ui/callback"]
    assert asked["code_challenge_method"] == ["S256"]
    assert len(asked["code_challenge"][0]) == 43
    assert "groups" in asked["scope"][0].split()
    assert "verifier" not in location
    assert flow not in location

    callback = urlsplit(await approve(location))
    async with dashboard.get(
        f"{callback.path}?{callback.query}",
        headers={"Cookie": f"{FLOW_COOKIE}={flow}"},
        allow_redirects=False,
    ) as response:
        assert response.status == 303, await response.text()
        assert response.headers["Location"] == "/ui/jobs"
        session = response.cookies[SESSION_COOKIE]
        assert session["httponly"] is True
    dashboard.session.cookie_jar.clear()
    async with dashboard.get(
        "/ui/jobs", headers={"Cookie": f"{SESSION_COOKIE}={session.value}", "Accept": "text/html"}
    ) as page:
        assert page.status == 200
        assert "ada@example.com" in await page.text()


async def test_a_callback_that_does_not_match_its_sign_in_is_refused(
    provider: Provider, dashboard: TestClient[Any, Any]
) -> None:
    location, flow = await start_sign_in(dashboard, "/ui/login")
    callback = urlsplit(await approve(location))
    code = parse_qs(callback.query)["code"][0]
    _, other_flow = await start_sign_in(dashboard, "/ui/login")
    dashboard.session.cookie_jar.clear()
    for query, cookie, status, words in (
        (f"code={code}&state=forged", flow, 400, "does not match"),
        (callback.query, None, 400, "has expired"),
        (callback.query, other_flow, 400, "does not match"),
        ("error=access_denied&error_description=call+0800-PHISH", flow, 400, "access_denied."),
        ("error=<b>x</b>", flow, 400, "refused: an error."),
    ):
        headers = {"Cookie": f"{FLOW_COOKIE}={cookie}"} if cookie else {}
        async with dashboard.get(
            f"/ui/callback?{query}", headers=headers, allow_redirects=False
        ) as response:
            assert response.status == status, query
            text = await response.text()
            assert words in text
            assert "PHISH" not in text  # the sender's free text is not shown on this origin
            assert SESSION_COOKIE not in response.cookies


async def test_a_code_without_its_verifier_gets_no_session(
    provider: Provider, dashboard: TestClient[Any, Any]
) -> None:
    """An attacker who catches the code but not the flow cookie (the PKCE verifier) cannot
    redeem it: a flow cookie of its own holds another verifier, and the provider refuses."""
    victim_location, _ = await start_sign_in(dashboard, "/ui/login")
    victim_callback = urlsplit(await approve(victim_location))
    code = parse_qs(victim_callback.query)["code"][0]
    attacker_location, attacker_flow = await start_sign_in(dashboard, "/ui/login")
    attacker_state = parse_qs(urlsplit(attacker_location).query)["state"][0]
    dashboard.session.cookie_jar.clear()
    async with dashboard.get(
        f"/ui/callback?code={code}&state={attacker_state}",
        headers={"Cookie": f"{FLOW_COOKIE}={attacker_flow}"},
        allow_redirects=False,
    ) as response:
        assert response.status == 502
        assert "PKCE verification failed" in await response.text()
        assert SESSION_COOKIE not in response.cookies


async def test_a_sign_in_link_is_refused_when_an_external_issuer_signs_users_in(
    dashboard: TestClient[Any, Any], settings: Settings
) -> None:
    from gateway.auth.keys import local_key_set
    from gateway.auth.sessions import mint_sign_in_code

    code = mint_sign_in_code(local_key_set(settings.issuer_key_file), subject="x", groups=[])
    async with dashboard.get(f"/ui/login?code={code}", allow_redirects=False) as response:
        assert response.status == 400
        assert "for the local issuer" in await response.text()


async def test_signing_out_does_not_start_a_new_sign_in(
    provider: Provider, dashboard: TestClient[Any, Any]
) -> None:
    async with dashboard.post(
        "/ui/logout", headers={"Sec-Fetch-Site": "same-origin"}, data={}, allow_redirects=False
    ) as response:
        assert response.status == 200
        assert "Signed out." in await response.text()
    async with dashboard.get("/ui/login?signed_out=1", allow_redirects=False) as again:
        assert again.status == 200
        assert FLOW_COOKIE not in again.cookies
