"""The dashboard's sign-in, session cookie, CSRF defence and headers, over the real app and
database: one-time `muster ui` codes, cookies that are bearer tokens, cross-site requests
refused, roles and tenants held to the API's answers, and every page's strict headers."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth.keys import local_key_set
from gateway.auth.sessions import (
    CSRF_HEADER,
    SESSION_COOKIE,
    SIGN_IN_AUDIENCE,
    csrf_token,
    mint_sign_in_code,
)
from gateway.auth.tokens import mint
from gateway.domain.access import Role, role_group
from gateway.settings import Settings
from tests import tokens
from tests.integration.helpers import create_tenant, job_spec, row_counts, submit
from tests.openapi_check import CheckedClient

HTML = {"Accept": "text/html"}
PAGES = ("/ui/queue", "/ui/jobs", "/ui/cluster", "/ui/tenants")


def code_for(settings: Settings, *, groups: list[str], user: str = "ann") -> str:
    return mint_sign_in_code(
        local_key_set(settings.issuer_key_file), subject=user, groups=groups, extra={"email": user}
    )


def cookie(session: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={session}"}


def with_csrf(session: str, **extra: str) -> dict[str, str]:
    return {**cookie(session), CSRF_HEADER: csrf_token(session), **extra}


async def sign_in(api: CheckedClient, code: str, next_page: str = "") -> str:
    """The session cookie a sign-in link sets: its page, then that page's button."""
    query = {"code": code, **({"next": next_page} if next_page else {})}
    async with api.client.get("/ui/login", params=query, headers=HTML) as page:
        assert page.status == 200, await page.text()
        html = await page.text()
        assert SESSION_COOKIE not in page.cookies  # opening the link signs no one in
    fields = dict(re.findall(r'<input type="hidden" name="(code|next)" value="([^"]*)">', html))
    assert fields["code"] == code
    async with api.client.post(
        "/ui/login", data=fields, headers=HTML, allow_redirects=False
    ) as response:
        assert response.status == 303, await response.text()
        morsel = response.cookies[SESSION_COOKIE]
        assert morsel["httponly"] is True
        assert morsel["samesite"] == "Lax"
        assert morsel["path"] == "/"
        location = response.headers["Location"]
    assert location == (next_page or "/ui/queue")
    # Each test names the session it sends: the client's own jar keeps none.
    api.client.session.cookie_jar.clear()
    return morsel.value


async def redeem(api: CheckedClient, code: str, **headers: str) -> tuple[int, str, Any]:
    """POST a sign-in code as the confirmation page's form does."""
    async with api.client.post(
        "/ui/login", data={"code": code}, headers={**HTML, **headers}, allow_redirects=False
    ) as response:
        text = await response.text()
        api.client.session.cookie_jar.clear()
        return response.status, text, response.headers


async def session_of(api: CheckedClient, settings: Settings, **roles: Role) -> str:
    groups = [role_group(tenant, role) for tenant, role in roles.items()]
    return await sign_in(api.as_(None), code_for(settings, groups=groups))


async def page(api: CheckedClient, path: str, session: str, **headers: str) -> tuple[int, str, Any]:
    async with api.client.get(
        path, headers={**HTML, **cookie(session), **headers}, allow_redirects=False
    ) as response:
        return response.status, await response.text(), response.headers


@pytest.fixture
async def tenants(api: CheckedClient) -> None:
    await create_tenant(api, "alpha")
    await create_tenant(api, "beta")


async def test_a_sign_in_link_signs_in_once(api: CheckedClient, settings: Settings) -> None:
    code = code_for(settings, groups=[], user="ann")
    for _ in range(3):  # a link preview, a mail scanner, the user: opening it spends nothing
        async with api.client.get(f"/ui/login?code={code}", headers=HTML) as opened:
            assert opened.status == 200
            assert 'id="signing-in-as">ann<' in await opened.text()
    session = await sign_in(api.as_(None), code)
    status, body, _ = await page(api.as_(None), "/ui/jobs", session)
    assert status == 403  # a user with no role: signed in, but nothing to see
    assert "ann has no role in any tenant" in body

    status, body, headers = await redeem(api, code)
    assert status == 400
    assert "has been used already" in body
    assert SESSION_COOKIE not in headers.get("Set-Cookie", "")


async def test_a_sign_in_form_from_another_site_signs_no_one_in(
    api: CheckedClient, settings: Settings, engine: AsyncEngine
) -> None:
    code = code_for(settings, groups=[settings.auth.admin_groups[0]])
    before = await row_counts(engine)
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        status, _, response_headers = await redeem(api, code, **headers)
        assert status == 403
        assert SESSION_COOKIE not in response_headers.get("Set-Cookie", "")
    assert await row_counts(engine) == before
    await sign_in(api.as_(None), code)  # the code is still good for its own page


async def test_the_session_is_a_token_of_the_same_user_and_groups(
    api: CheckedClient, settings: Settings, tenants: None
) -> None:
    session = await session_of(api, settings, alpha=Role.VIEWER)
    answer = await api.as_(session).get("/v1/jobs?tenant=beta")
    assert answer.status == 200
    assert answer.body["items"] == []
    refused = await api.as_(session).post("/v1/jobs", json=job_spec(tenant="alpha"))
    assert refused.status == 403  # a viewer, by bearer header as by cookie


async def test_a_bearer_token_is_not_a_sign_in_code_nor_a_code_a_token(
    api: CheckedClient, settings: Settings
) -> None:
    bearer = tokens.admin_token(settings)
    async with api.client.get(f"/ui/login?code={bearer}", headers=HTML) as response:
        assert response.status == 400
        assert "not meant for audience" in await response.text()
    code = code_for(settings, groups=[settings.auth.admin_groups[0]])
    assert (await api.as_(code).get("/v1/jobs")).status == 401


async def test_an_expired_or_forged_sign_in_code_is_refused(
    api: CheckedClient, settings: Settings, engine: AsyncEngine
) -> None:
    stale = mint(
        local_key_set(settings.issuer_key_file),
        audience=SIGN_IN_AUDIENCE,
        subject="ann",
        groups=[],
        ttl_seconds=60,
        now=time.time() - 600,
    )
    before = await row_counts(engine)
    for code in (stale, stale[:-4] + "AAAA", "x" * 9000, "not-a-token"):
        async with api.client.get(f"/ui/login?code={code}", headers=HTML) as response:
            assert response.status == 400, code[:20]
            assert SESSION_COOKIE not in response.cookies
    assert await row_counts(engine) == before


async def test_next_returns_only_to_a_dashboard_page(
    api: CheckedClient, settings: Settings
) -> None:
    for wanted, landed in (
        ("/ui/jobs?state=running", "/ui/jobs?state=running"),
        ("//evil.example/ui", "/ui/queue"),
        ("https://evil.example/ui/jobs", "/ui/queue"),
        ("/ui\\@evil.example", "/ui/queue"),
        ("/v1/jobs", "/ui/queue"),
    ):
        code = code_for(settings, groups=[])
        async with api.client.post(
            "/ui/login", data={"code": code, "next": wanted}, allow_redirects=False
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == landed, wanted
        api.client.session.cookie_jar.clear()


async def test_a_page_without_a_session_goes_to_sign_in(api: CheckedClient) -> None:
    anonymous = api.as_(None)
    for path in (*PAGES, "/ui/admin", "/ui/jobs/00000000-0000-0000-0000-000000000000"):
        async with anonymous.client.get(path, headers=HTML, allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"].startswith("/ui/login?next=")
    async with anonymous.client.get("/ui/login", headers=HTML) as response:
        assert response.status == 401
        assert "muster ui" in await response.text()
    # The API itself still answers 401, cookie or not.
    assert (await anonymous.get("/v1/jobs", headers=cookie("garbage"))).status == 401


async def test_a_cookie_request_that_changes_something_needs_the_csrf_token(
    api: CheckedClient, settings: Settings, tenants: None, engine: AsyncEngine
) -> None:
    job = await submit(api, job_spec(tenant="alpha"))
    session = await session_of(api, settings, alpha=Role.SUBMITTER)
    cancel = f"/v1/jobs/{job['id']}/cancel"
    for headers in (
        cookie(session),
        {**cookie(session), CSRF_HEADER: "wrong"},
        {**cookie(session), CSRF_HEADER: csrf_token("another session")},
        with_csrf(session, Origin="https://evil.example"),
        with_csrf(session, **{"Sec-Fetch-Site": "cross-site"}),
        with_csrf(session, **{"Sec-Fetch-Site": "same-site"}),
    ):
        async with api.client.post(cancel, headers=headers) as refused:
            assert refused.status == 403, headers
            assert refused.content_type == "application/problem+json"
    assert (await api.get(f"/v1/jobs/{job['id']}")).body["state"] == "queued"

    origin = f"http://{api.client.host}:{api.client.port}"
    async with api.client.post(
        cancel, headers=with_csrf(session, Origin=origin, **{"Sec-Fetch-Site": "same-origin"})
    ) as done:
        assert done.status == 200, await done.text()
    assert (await api.get(f"/v1/jobs/{job['id']}")).body["state"] == "cancelled"


async def test_a_viewer_gets_no_cancel_button_and_a_403_for_a_forged_cancel(
    api: CheckedClient, settings: Settings, tenants: None
) -> None:
    job = await submit(api, job_spec(tenant="alpha"))
    viewer = await session_of(api, settings, alpha=Role.VIEWER)
    submitter = await session_of(api, settings, alpha=Role.SUBMITTER)

    status, body, _ = await page(api, f"/ui/jobs/{job['id']}", viewer)
    assert status == 200
    assert 'id="cancel"' not in body
    status, body, _ = await page(api, f"/ui/jobs/{job['id']}", submitter)
    assert status == 200
    assert 'id="cancel"' in body

    async with api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=with_csrf(viewer)) as forged:
        assert forged.status == 403
        assert "viewer" in (await forged.json())["detail"]
    assert (await api.get(f"/v1/jobs/{job['id']}")).body["state"] == "queued"


async def test_a_tenants_user_never_sees_another_tenants_jobs_on_any_page(
    api: CheckedClient, settings: Settings, tenants: None
) -> None:
    mine = await submit(api, job_spec("mine", tenant="alpha"))
    theirs = await submit(api, job_spec("theirs", tenant="beta"))
    session = await session_of(api, settings, alpha=Role.TENANT_ADMIN)

    for path in (*PAGES, "/ui/jobs?tenant=beta", "/ui/queue?tenant=beta"):
        status, body, _ = await page(api, path, session)
        assert status == 200, path
        assert theirs["id"] not in body, path
        assert ">theirs<" not in body, path
        assert 'data-tenant="beta"' not in body, path
    status, body, _ = await page(api, "/ui/jobs", session)
    assert mine["id"] in body

    status, body, _ = await page(api, f"/ui/jobs/{theirs['id']}", session)
    assert status == 404
    assert f"job {theirs['id']} does not exist" in body
    status, missing, _ = await page(api, "/ui/jobs/00000000-0000-0000-0000-000000000000", session)
    assert status == 404
    assert missing.replace("00000000-0000-0000-0000-000000000000", theirs["id"]) == body

    status, body, _ = await page(api, "/ui/admin", session)
    assert status == 403
    assert "only platform admins" in body


async def test_a_page_error_is_a_problem_document_for_a_client_that_is_not_a_browser(
    api: CheckedClient, settings: Settings
) -> None:
    session = await session_of(api, settings)
    async with api.client.get(
        "/ui/jobs/not-a-job", headers={**cookie(session), "Accept": "application/json"}
    ) as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"
    status, body, _ = await page(api, "/ui/jobs?state=bogus", session)
    assert status == 400
    assert "state must be one of" in body


async def test_every_dashboard_response_carries_a_strict_content_security_policy(
    api: CheckedClient, settings: Settings, tenants: None
) -> None:
    admin = await sign_in(api.as_(None), code_for(settings, groups=[settings.auth.admin_groups[0]]))
    job = await submit(api, job_spec(tenant="alpha"))
    paths = (*PAGES, "/ui/admin", f"/ui/jobs/{job['id']}", "/ui/login", "/ui/static/muster.js")
    for path in paths:
        status, body, headers = await page(api, path, admin)
        assert status in (200, 401), (path, body[:300])
        policy = headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert directives["default-src"] == "'none'"
        assert "unsafe" not in policy
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        if path.endswith(".js"):
            continue
        assert headers["Cache-Control"] == "no-store"
        # No inline script, no inline style, no event handler attribute: the policy would
        # block them, and the pages have none to block.
        assert not re.search(r"<script(?![^>]*\bsrc=)", body), path
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", body), path


async def test_user_text_is_rendered_as_text(
    api: CheckedClient, settings: Settings, tenants: None
) -> None:
    payload = '<script>window.__xss=1</script><img src=x onerror="window.__xss=1">'
    spec = job_spec(
        "escape",
        tenant="alpha",
        replicas={
            "worker": {"count": 1, "image": "reg/wd:1", "command": [payload], "env": {"X": payload}}
        },
    )
    job = await submit(api, spec)
    await api.post(f"/v1/jobs/{job['id']}/cancel", json={"reason": payload})
    admin = await sign_in(api.as_(None), code_for(settings, groups=[settings.auth.admin_groups[0]]))
    status, body, _ = await page(api, f"/ui/jobs/{job['id']}", admin)
    assert status == 200
    assert payload not in body
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in body
    assert "onerror=" not in body.replace("onerror=&#34;", "").replace("onerror=&quot;", "")


async def test_signing_out_clears_the_cookie_and_needs_the_pages_token(
    api: CheckedClient, settings: Settings
) -> None:
    session = await session_of(api, settings)
    for headers, form in (
        (cookie(session), {"csrf": "wrong"}),
        ({**cookie(session), "Origin": "https://evil.example"}, {"csrf": csrf_token(session)}),
        ({"Sec-Fetch-Site": "cross-site"}, {}),  # another site's form: no cookie comes with it
    ):
        async with api.client.post(
            "/ui/logout", data=form, headers=headers, allow_redirects=False
        ) as refused:
            assert refused.status == 403
            assert SESSION_COOKIE not in refused.cookies
    async with api.client.post(
        "/ui/logout",
        data={"csrf": csrf_token(session)},
        headers=cookie(session),
        allow_redirects=False,
    ) as response:
        assert response.status == 200
        assert "Signed out." in await response.text()
        assert response.cookies[SESSION_COOKIE].value == ""
    async with api.client.post(
        "/ui/logout",
        data="x" * 5000,
        headers={**cookie(session), "Content-Type": "application/x-www-form-urlencoded"},
    ) as oversized:
        assert oversized.status == 413


async def test_a_crafted_job_id_reaches_no_other_route(
    api: CheckedClient, settings: Settings, tenants: None
) -> None:
    job = await submit(api, job_spec(tenant="alpha"))
    session = await session_of(api, settings, alpha=Role.VIEWER)
    for crafted in (
        f"{job['id']}%3F",
        f"{job['id']}%2Flogs%3F",
        f"{job['id']}%2F..%2F..%2Fcluster",
    ):
        status, body, headers = await page(api, f"/ui/jobs/{crafted}", session)
        assert status == 404, crafted
        assert headers["Content-Type"].startswith("text/html")
        assert "does not exist" in body


async def test_a_pages_own_refresh_without_a_session_is_a_401_not_a_redirect(
    api: CheckedClient,
) -> None:
    for headers in ({"X-Muster-Live": "1"}, {"Sec-Fetch-Mode": "cors"}):
        async with api.client.get(
            "/ui/jobs", headers={**HTML, **headers}, allow_redirects=False
        ) as response:
            assert response.status == 401


async def test_behind_a_tls_proxy_the_browsers_https_origin_is_this_gateways(
    api: CheckedClient, settings: Settings, tenants: None
) -> None:
    """The proxy speaks http to the gateway; the browser's Origin says https, same host."""
    job = await submit(api, job_spec(tenant="alpha"))
    session = await session_of(api, settings, alpha=Role.SUBMITTER)
    origin = f"https://{api.client.host}:{api.client.port}"
    async with api.client.post(
        f"/v1/jobs/{job['id']}/cancel", headers=with_csrf(session, Origin=origin)
    ) as done:
        assert done.status == 200
