"""Signing a browser in and out of the dashboard.

- ``GET /ui/login?code=...``: a `muster ui` link. The code is verified as a token of the local
  issuer for the sign-in audience, spent once (``gateway.db.sign_in``), and exchanged for a
  session cookie holding a token of the same user and groups, of MUSTER_UI_SESSION_SECONDS.
- ``GET /ui/login`` with an external issuer and MUSTER_UI_CLIENT_ID: the authorization code
  flow with PKCE (S256), a state and a nonce, kept in a short-lived HttpOnly cookie until
  ``GET /ui/callback`` exchanges the code at the issuer's token endpoint; the token that the
  gateway's own verifier accepts becomes the session cookie.
- ``POST /ui/logout``: the session cookie is cleared (with the page's CSRF token).

Invariants: no token ever travels in a URL but a one-time sign-in code of at most a minute; a
``next`` destination is always a dashboard path of this gateway (no open redirect); every
refusal is a page that says what went wrong and how to sign in again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import aiohttp
from aiohttp import web

from gateway.api.auth import from_this_site, own_origin
from gateway.api.body import read_form
from gateway.api.context import AUTHENTICATOR, ENGINE, SETTINGS
from gateway.api.dashboard.render import render
from gateway.auth.keys import LOCAL_ALGORITHM, local_key_set
from gateway.auth.sessions import (
    FLOW_COOKIE,
    FLOW_SECONDS,
    SESSION_COOKIE,
    SIGN_IN_AUDIENCE,
    csrf_matches,
    new_secret,
    pkce_challenge,
)
from gateway.auth.tokens import LOCAL_ISSUER, Verifier, mint
from gateway.db import sign_in
from gateway.errors import InvalidToken, Unauthorized
from gateway.settings import Settings

routes = web.RouteTableDef()

HOME = "/ui/queue"
ERROR_CODE = re.compile(r"[a-z_]{1,64}")
MAX_CODE_BYTES = 8192
ISSUER_TIMEOUT = 10.0
SIGN_IN_VERIFIER: web.AppKey[dict[str, Verifier]] = web.AppKey("sign_in_verifier")
DISCOVERY: web.AppKey[dict[str, dict[str, Any]]] = web.AppKey("oidc_discovery")


def safe_next(raw: str | None) -> str:
    """Where to go after signing in: a dashboard path of this gateway, else the home page."""
    if raw is None or any(ord(c) < 0x21 or c == "\\" for c in raw):
        return HOME
    parts = urlsplit(raw)
    path = unquote(parts.path)
    if (
        parts.scheme
        or parts.netloc
        or not (path == "/ui" or path.startswith("/ui/"))
        or raw.startswith("//")
        or any(segment in (".", "..") for segment in path.split("/"))
        or path.startswith(("/ui/login", "/ui/callback", "/ui/logout"))
    ):
        return HOME
    return raw


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _refused(
    request: web.Request, detail: str, *, status: int = 400, next: str = HOME
) -> web.Response:
    return render(
        request,
        "signin.html",
        {
            "title": "Sign in",
            "detail": detail,
            "oidc": _oidc(request.app[SETTINGS]),
            "sign_in": "/ui/login?" + urlencode({"next": next}),
        },
        status=status,
    )


def _oidc(settings: Settings) -> bool:
    return settings.auth.oidc_issuer is not None and settings.ui.client_id is not None


def _secure(request: web.Request) -> bool:
    """Whether the browser reached the gateway over HTTPS: MUSTER_UI_PUBLIC_URL says so, or the
    request came over TLS, or a TLS proxy says it did (trusted only to add Secure to a cookie)."""
    return (
        own_origin(request).startswith("https://")
        or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    )


def _signed_in(request: web.Request, token: str, lifetime: int, destination: str) -> web.Response:
    response = see_other(destination)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max(lifetime, 1),
        path="/",
        httponly=True,
        samesite="Lax",
        secure=_secure(request),
    )
    response.del_cookie(FLOW_COOKIE, path="/ui/")
    return response


@routes.get("/ui/login")
async def login(request: web.Request) -> web.StreamResponse:
    destination = safe_next(request.query.get("next"))
    code = request.query.get("code")
    if code is not None:
        return await _confirm(request, code, destination)
    if "signed_out" in request.query:
        return _signed_out(request)
    if _oidc(request.app[SETTINGS]):
        return await _start_flow(request, destination)
    return _refused(
        request, "You are not signed in (or your session has ended).", status=401, next=destination
    )


def _signed_out(request: web.Request) -> web.Response:
    return _refused(request, "Signed out.", status=200)


# --- the local issuer: `muster ui` links -------------------------------------------------------


def _sign_in_verifier(app: web.Application) -> Verifier:
    cache = app[SIGN_IN_VERIFIER]
    if "verifier" not in cache:
        settings = app[SETTINGS]
        cache["verifier"] = Verifier(
            keys=app[AUTHENTICATOR].verifier.keys,
            issuer=LOCAL_ISSUER,
            audience=SIGN_IN_AUDIENCE,
            algorithms=(LOCAL_ALGORITHM,),
            leeway=settings.auth.oidc_leeway,
        )
    return cache["verifier"]


async def _code_claims(request: web.Request, code: str) -> dict[str, Any] | str:
    """A sign-in code's claims, or why it cannot sign anyone in (nothing is spent)."""
    settings = request.app[SETTINGS]
    if settings.auth.oidc_issuer is not None:
        return (
            f"Sign-in links are for the local issuer; this gateway trusts "
            f"{settings.auth.oidc_issuer}."
        )
    if len(code) > MAX_CODE_BYTES:
        return "This sign-in link is not one that `muster ui` made."
    try:
        claims = await _sign_in_verifier(request.app).verify(code)
    except InvalidToken as exc:
        return f"This sign-in link cannot be used: {exc.detail}. Run `muster ui` again."
    jti, expires = claims.get("jti"), claims.get("exp")
    if not isinstance(jti, str) or not jti or not isinstance(expires, int):
        return "This sign-in link is not one that `muster ui` made."
    return claims


def _groups(settings: Settings, claims: dict[str, Any]) -> list[str]:
    groups = claims.get(settings.auth.oidc_groups_claim, [])
    return [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []


async def _confirm(request: web.Request, code: str, destination: str) -> web.Response:
    """GET of a sign-in link: a page that asks to sign in, spending nothing, so a link preview
    or a mail scanner that fetches the link does not use it up, and a link forwarded to someone
    signs nobody in without their click."""
    claims = await _code_claims(request, code)
    if isinstance(claims, str):
        return _refused(request, claims)
    settings = request.app[SETTINGS]
    user = claims.get(settings.auth.oidc_user_claim) or claims["sub"]
    return render(
        request,
        "confirm.html",
        {
            "title": "Sign in",
            "signing_in_as": str(user),
            "groups": _groups(settings, claims),
            "code": code,
            "next": destination,
        },
    )


@routes.post("/ui/login")
async def redeem(request: web.Request) -> web.StreamResponse:
    """The confirmation's POST: the code is spent and the browser signed in."""
    if not from_this_site(request):
        return _refused(request, "Sign in from the page of your sign-in link.", status=403)
    form = await read_form(request, MAX_CODE_BYTES + 4096)
    destination = safe_next(form.get("next"))
    claims = await _code_claims(request, form.get("code", ""))
    if isinstance(claims, str):
        return _refused(request, claims)
    settings = request.app[SETTINGS]
    spent = await sign_in.spend(
        request.app[ENGINE], claims["jti"][:128], datetime.fromtimestamp(claims["exp"], UTC)
    )
    if not spent:
        return _refused(
            request, "This sign-in link has been used already. Run `muster ui` for a new one."
        )
    keys = await asyncio.to_thread(local_key_set, settings.issuer_key_file)
    auth = settings.auth
    carried = {
        claim: claims[claim]
        for claim in {auth.oidc_user_claim, "email", "email_verified"} - {"sub"}
        if claim in claims
    }
    token = mint(
        keys,
        audience=auth.oidc_audience,
        subject=str(claims["sub"]),
        groups=_groups(settings, claims),
        ttl_seconds=settings.ui.session_seconds,
        groups_claim=auth.oidc_groups_claim,
        extra=carried,
    )
    return _signed_in(request, token, settings.ui.session_seconds, destination)


# --- an external issuer: the authorization code flow with PKCE --------------------------------


def _redirect_uri(request: web.Request) -> str:
    return own_origin(request) + "/ui/callback"


async def _discovery(app: web.Application) -> dict[str, Any]:
    cache = app[DISCOVERY]
    if "document" not in cache:
        issuer = str(app[SETTINGS].auth.oidc_issuer).rstrip("/")
        document = await _get_json(issuer + "/.well-known/openid-configuration")
        for key in ("authorization_endpoint", "token_endpoint"):
            if not isinstance(document.get(key), str):
                raise OSError(f"the issuer's discovery document names no {key}")
        cache["document"] = document
    return cache["document"]


async def _get_json(url: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=ISSUER_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            if response.status != 200:
                raise OSError(f"{url} answered {response.status}")
            document = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise OSError(f"{url}: {exc or type(exc).__name__}") from exc
    if not isinstance(document, dict):
        raise OSError(f"{url} did not answer a JSON object")
    return document


def _encode_flow(flow: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(flow).encode()).decode().rstrip("=")


def _decode_flow(raw: str | None) -> dict[str, str] | None:
    if not raw or len(raw) > 4096:
        return None
    try:
        flow = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except ValueError:
        return None
    keys = {"state", "verifier", "nonce", "next"}
    if not isinstance(flow, dict) or set(flow) != keys:
        return None
    if not all(isinstance(flow[key], str) for key in keys):
        return None
    return flow


async def _start_flow(request: web.Request, destination: str) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    try:
        discovery = await _discovery(request.app)
    except OSError as exc:
        return _refused(request, f"The sign-in service cannot be reached: {exc}", status=503)
    flow = {
        "state": new_secret(),
        "verifier": new_secret(),
        "nonce": new_secret(),
        "next": destination,
    }
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.ui.client_id,
            "redirect_uri": _redirect_uri(request),
            "scope": " ".join(settings.ui.scopes),
            "state": flow["state"],
            "nonce": flow["nonce"],
            "code_challenge": pkce_challenge(flow["verifier"]),
            "code_challenge_method": "S256",
        }
    )
    endpoint = discovery["authorization_endpoint"]
    response = see_other(endpoint + ("&" if urlsplit(endpoint).query else "?") + query)
    response.set_cookie(
        FLOW_COOKIE,
        _encode_flow(flow),
        max_age=FLOW_SECONDS,
        path="/ui/",
        httponly=True,
        samesite="Lax",
        secure=_secure(request),
    )
    return response


@routes.get("/ui/callback")
async def callback(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    if not _oidc(settings):
        return _refused(request, "This gateway does not sign in through an external issuer.")
    query = request.query
    if "error" in query:
        # Only the error code (OAuth's are short snake_case words): a description is the
        # sender's free text, and anyone can send a browser here with any.
        code = query["error"] if ERROR_CODE.fullmatch(query["error"]) else "an error"
        return _refused(request, f"The sign-in service refused: {code}.")
    flow = _decode_flow(request.cookies.get(FLOW_COOKIE))
    if flow is None:
        return _refused(request, "This sign-in has expired or began elsewhere; sign in again.")
    if query.get("state") != flow["state"] or not query.get("code"):
        return _refused(request, "This sign-in's answer does not match its request; try again.")
    try:
        tokens = await _exchange(request, query["code"], flow["verifier"])
    except OSError as exc:
        return _refused(request, f"The sign-in service did not give a token: {exc}", status=502)
    chosen = await _session_token(request, tokens, flow["nonce"])
    if chosen is None:
        audience = settings.auth.oidc_audience
        return _refused(
            request,
            f"The sign-in service's tokens are not accepted by this gateway (they must be "
            f"issued by {settings.auth.oidc_issuer} for audience {audience!r}).",
        )
    token, expires = chosen
    return _signed_in(request, token, int(expires - time.time()), flow["next"])


async def _exchange(request: web.Request, code: str, verifier: str) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    discovery = await _discovery(request.app)
    form = {
        "grant_type": "authorization_code",
        "code": code[:4096],
        "redirect_uri": _redirect_uri(request),
        "client_id": str(settings.ui.client_id),
        "code_verifier": verifier,
    }
    timeout = aiohttp.ClientTimeout(total=ISSUER_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(discovery["token_endpoint"], data=form, allow_redirects=False) as answer,
        ):
            document = await answer.json(content_type=None)
            status = answer.status
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        raise OSError(str(exc) or type(exc).__name__) from exc
    if not isinstance(document, dict):
        raise OSError("the token endpoint did not answer a JSON object")
    if status != 200:
        raise OSError(f"{document.get('error', status)} {document.get('error_description', '')}")
    return document


async def _session_token(
    request: web.Request, tokens: dict[str, Any], nonce: str
) -> tuple[str, float] | None:
    """The first of the access and ID tokens that the gateway itself accepts, and its expiry."""
    authenticator = request.app[AUTHENTICATOR]
    for key in ("access_token", "id_token"):
        token = tokens.get(key)
        if not isinstance(token, str):
            continue
        try:
            claims = await authenticator.claims(f"Bearer {token}")
        except Unauthorized:
            continue
        if "nonce" in claims and claims["nonce"] != nonce:
            continue
        return token, float(claims["exp"])
    return None


@routes.post("/ui/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    """Clear the session cookie, when the form comes from the dashboard's own page with its
    CSRF token; another site cannot sign a user out."""
    if not from_this_site(request):
        return _refused(request, "Sign out from the dashboard's own pages.", status=403)
    session = request.cookies.get(SESSION_COOKIE)
    if session and not csrf_matches(session, (await read_form(request, 4096)).get("csrf")):
        return _refused(request, "Sign out from the dashboard's own pages.", status=403)
    response = _signed_out(request)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
