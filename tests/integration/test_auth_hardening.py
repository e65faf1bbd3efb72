"""Authorization at the edges: long-lived responses that outlive a token or a grant, query
parameters that must never reach SQL unchecked, the unauthenticated JWKS, and a client that
never sends its token anywhere but the gateway it was pointed at (nor a token of its own to a
loopback server that does not prove it holds the issuer's key)."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli_token import own_token
from gateway.client import Client
from gateway.errors import ApiProblem, Unproven
from gateway.settings import ClientSettings, Settings
from tests import tokens
from tests.integration.helpers import create_tenant, job_spec, submit
from tests.openapi_check import CheckedClient


async def test_an_event_stream_ends_when_the_callers_grant_is_removed(
    api: CheckedClient, settings: Settings
) -> None:
    await create_tenant(api, "alpha")
    grant = {"users": {"eve@example.com": "viewer"}}
    assert (await api.put("/v1/admin/tenants/alpha/grants", json=grant)).status == 200
    await submit(api, job_spec("first", tenant="alpha"))
    eve = tokens.token(settings, user="eve@example.com")
    headers = {"Authorization": f"Bearer {eve}"}
    async with asyncio.timeout(20):
        response = await api.client.get("/v1/events", headers=headers)
        try:
            assert response.status == 200
            seen: list[str] = []
            while not any(line.startswith("data:") for line in seen):
                seen.append((await response.content.readline()).decode())
            # Revoke, then record another event of the tenant: the stream must end before it.
            revoke = await api.put("/v1/admin/tenants/alpha/grants", json={})
            assert revoke.status == 200
            await submit(api, job_spec("second", tenant="alpha"))
            rest = (await response.content.read()).decode()
        finally:
            response.close()
    assert "second" not in rest
    assert "data:" not in rest


async def test_a_caller_without_any_role_cannot_see_the_cluster(
    api: CheckedClient, settings: Settings
) -> None:
    nobody = api.as_(tokens.token(settings, user="nobody@example.com"))
    response = await nobody.get("/v1/cluster")
    assert response.status == 403
    viewer = api.as_(tokens.token(settings, user="v@example.com", roles={"alpha": "viewer"}))
    assert (await viewer.get("/v1/cluster")).status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs?tenant=%00",
        "/v1/jobs?tenant=Not_A_Tenant",
        "/v1/admin/audit?tenant=%00",
        "/v1/tenants/alpha/usage?from=0001-01-01T00:00:00%2B00:01",
        "/v1/tenants/alpha/usage?to=9999-12-31T23:59:59-00:01",
    ],
)
async def test_query_parameters_that_cannot_reach_the_database_are_400(
    api: CheckedClient, path: str
) -> None:
    await create_tenant(api, "alpha")
    response = await api.get(path)
    assert response.status == 400, response.text


async def test_the_jwks_is_empty_and_no_key_is_made_when_the_key_file_is_missing(
    api: CheckedClient, settings: Settings, tmp_path: Path
) -> None:
    # A gateway whose key was never created (only `muster serve` creates it at start).
    missing = tmp_path / "never" / "issuer-key.json"
    object.__setattr__(settings.auth, "issuer_key", missing)
    response = await api.as_(None).get("/.well-known/jwks.json")
    assert response.status == 200
    assert response.body == {"keys": []}
    assert not missing.exists()


class _Redirector(http.server.BaseHTTPRequestHandler):
    target = ""
    seen: list[str | None] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        if self.target:
            self.send_response(302)
            self.send_header("Location", self.target + self.path)
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"items": []}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[str, type[_Redirector], type[_Redirector]]]:
    """A gateway address that redirects to another host's, each recording what it received."""
    elsewhere = type("Elsewhere", (_Redirector,), {"target": "", "seen": []})
    started = []
    try:
        other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), elsewhere)
        started.append(other)
        redirecting = type(
            "Redirecting",
            (_Redirector,),
            {"target": f"http://127.0.0.1:{other.server_address[1]}", "seen": []},
        )
        first = http.server.ThreadingHTTPServer(("127.0.0.1", 0), redirecting)
        started.append(first)
        for server in started:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{first.server_address[1]}", redirecting, elsewhere
    finally:
        for server in started:
            server.shutdown()
            server.server_close()


def test_the_client_does_not_follow_a_redirect_with_its_token(
    servers: tuple[str, type[_Redirector], type[_Redirector]],
) -> None:
    url, redirecting, elsewhere = servers
    client = Client(ClientSettings(url=url, token="secret-token"))
    with pytest.raises(ApiProblem) as refused:
        client.list_jobs()
    assert refused.value.status == 302
    assert "not followed" in refused.value.detail
    assert redirecting.seen == ["Bearer secret-token"]
    assert elsewhere.seen == []


async def test_the_client_signs_its_own_token_only_for_a_gateway_on_this_machine(
    api: CheckedClient, issuer_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUSTER_ISSUER_KEY", str(issuer_key))
    monkeypatch.delenv("MUSTER_OIDC_ISSUER", raising=False)
    port = api.client.port
    # In a thread: the client blocks, and this loop serves the gateway's proof meanwhile.
    for host in ("127.0.0.1", "localhost"):
        assert await asyncio.to_thread(own_token, f"http://{host}:{port}") is not None
    assert own_token("https://muster.example.com") is None
    assert own_token("http://10.0.0.7:8080") is None


def test_the_client_signs_no_token_for_a_loopback_server_that_redirects_the_challenge(
    servers: tuple[str, type[_Redirector], type[_Redirector]],
    issuer_key: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MUSTER_ISSUER_KEY", str(issuer_key))
    monkeypatch.delenv("MUSTER_OIDC_ISSUER", raising=False)
    url, redirecting, elsewhere = servers
    with pytest.raises(Unproven, match="answered the challenge with HTTP 302"):
        own_token(url)
    assert redirecting.seen == [None]  # the challenge, without a token
    assert elsewhere.seen == []
