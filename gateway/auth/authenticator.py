"""From an ``Authorization`` header to an ``Access``: verify the bearer token, read the principal
from its claims, and resolve its roles against the tenant grants.

Invariants:

- authentication is never off: with no external issuer configured the local issuer is the issuer,
  and its tokens go through the same ``Verifier`` as an external issuer's;
- the grants are cached whole for ``grants_ttl`` seconds (a few rows per tenant), so a change made
  through another replica takes effect within that time; this replica's own changes at once;
- every refusal is an ``Unauthorized`` (``InvalidToken`` from the verifier) with a message that
  says what is wrong, never a 500; an issuer whose keys cannot be loaded at all is an
  ``IssuerUnavailable`` (503), since the token may well be good.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth.keys import LOCAL_ALGORITHM, CachedKeys, JwksLoader, local_loader
from gateway.auth.tokens import LOCAL_ISSUER, Verifier
from gateway.db import grants as grant_store
from gateway.domain.access import Access, Grant, principal_from_claims, resolve
from gateway.errors import Unauthorized
from gateway.settings import Settings

MAX_TOKEN_BYTES = 16 * 1024
RESOLVED_ACCESSES = 4096


def oidc_loader(issuer: str, *, timeout: float = 10.0) -> JwksLoader:
    """A loader of an OIDC issuer's keys: discovery once (``jwks_uri``), then the JWKS.

    Loads are rare (see ``CachedKeys``), so each opens its own HTTP session.
    """
    jwks_uri: str | None = None
    base = issuer.rstrip("/")

    async def get_json(url: str) -> Any:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                session.get(url, allow_redirects=False) as response,
            ):
                if response.status != 200:
                    raise OSError(f"{url} answered {response.status}")
                return await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise OSError(f"{url}: {exc or type(exc).__name__}") from exc

    async def load() -> Mapping[str, Any]:
        nonlocal jwks_uri
        if jwks_uri is None:
            discovery = await get_json(base + "/.well-known/openid-configuration")
            if not isinstance(discovery, dict) or not isinstance(discovery.get("jwks_uri"), str):
                raise ValueError("the issuer's discovery document names no jwks_uri")
            if str(discovery.get("issuer", "")).rstrip("/") != base:
                raise ValueError(
                    f"the discovery document names issuer {discovery.get('issuer')!r}, "
                    f"not {issuer!r}"
                )
            jwks_uri = discovery["jwks_uri"]
        document = await get_json(jwks_uri)
        if not isinstance(document, dict):
            raise ValueError("the JWKS is not a JSON object")
        return document

    return load


class Authenticator:
    def __init__(
        self,
        verifier: Verifier,
        engine: AsyncEngine,
        *,
        admin_groups: Iterable[str],
        user_claim: str,
        groups_claim: str,
        role_groups: bool = True,
        grants_ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verifier = verifier
        self._engine = engine
        self._admin_groups = frozenset(admin_groups)
        self._user_claim = user_claim
        self._groups_claim = groups_claim
        self._role_groups = role_groups
        self._grants_ttl = grants_ttl
        self._clock = clock
        self._grants: list[Grant] = []
        self._grants_at: float | None = None
        self._grants_lock = asyncio.Lock()
        # Header -> (the grants list it was resolved against, its access): reused while those
        # grants are current (a reload makes a new list). The token is verified every time.
        self._resolved: OrderedDict[str, tuple[list[Grant], Access]] = OrderedDict()

    async def access(self, authorization: str | None) -> Access:
        """What the bearer of this ``Authorization`` header may do; Unauthorized if nothing."""
        claims = await self.claims(authorization)
        grants = await self.grants()
        key = authorization or ""  # claims() refused a missing header
        resolved = self._resolved.get(key)
        if resolved is not None and resolved[0] is grants:
            return resolved[1]
        principal = principal_from_claims(
            claims, user_claim=self._user_claim, groups_claim=self._groups_claim
        )
        if isinstance(principal, str):
            raise Unauthorized(principal)
        access = resolve(principal, grants, self._admin_groups, role_groups=self._role_groups)
        self._resolved[key] = (grants, access)
        if len(self._resolved) > RESOLVED_ACCESSES:
            self._resolved.popitem(last=False)
        return access

    async def claims(self, authorization: str | None) -> dict[str, Any]:
        if authorization is None:
            raise Unauthorized(
                "this endpoint needs a bearer token (Authorization: Bearer <token>)", error=None
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            # RFC 6750, 3.1: no bearer credentials at all (another scheme) gets no error code;
            # a Bearer header without a token is a malformed request.
            raise Unauthorized(
                "the Authorization header must be 'Bearer <token>'",
                error="invalid_request" if scheme.lower() == "bearer" else None,
            )
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        # InvalidToken is an Unauthorized; IssuerUnavailable passes through as it is.
        return await self.verifier.verify(token)

    async def grants(self) -> list[Grant]:
        fresh = self._grants_at is not None and self._clock() - self._grants_at < self._grants_ttl
        if fresh:
            return self._grants
        async with self._grants_lock:
            if self._grants_at is None or self._clock() - self._grants_at >= self._grants_ttl:
                self._grants = await grant_store.all_grants(self._engine)
                self._grants_at = self._clock()
        return self._grants

    def forget_grants(self) -> None:
        """Reload the grants on the next request (after this replica changed them)."""
        self._grants_at = None


def make_authenticator(
    settings: Settings, engine: AsyncEngine, *, clock: Callable[[], float] = time.monotonic
) -> Authenticator:
    """The settings' issuer: the external one when MUSTER_OIDC_ISSUER is set (its keys fetched
    over HTTP), else the local issuer (its keys read from the key file). ``clock`` paces the
    key cache's refreshes."""
    if settings.auth.oidc_issuer is not None:
        keys = CachedKeys(oidc_loader(settings.auth.oidc_issuer), clock=clock)
        issuer, algorithms = settings.auth.oidc_issuer, settings.auth.oidc_algorithms
    else:
        keys = CachedKeys(local_loader(settings.issuer_key_file), clock=clock, min_refresh=5.0)
        issuer, algorithms = LOCAL_ISSUER, (LOCAL_ALGORITHM,)
    verifier = Verifier(
        keys=keys,
        issuer=issuer,
        audience=settings.auth.oidc_audience,
        algorithms=algorithms,
        leeway=settings.auth.oidc_leeway,
    )
    return Authenticator(
        verifier,
        engine,
        admin_groups=settings.auth.admin_groups,
        user_claim=settings.auth.oidc_user_claim,
        groups_claim=settings.auth.oidc_groups_claim,
        # The local issuer's role groups come from `muster token`; an external issuer's only
        # count when the operator trusts its group names (MUSTER_OIDC_ROLE_GROUPS).
        role_groups=settings.auth.oidc_issuer is None or settings.auth.oidc_role_groups,
    )
