"""Browser sessions of the dashboard: one-time sign-in codes, session cookies, CSRF tokens and
the PKCE values of an OIDC sign-in.

Invariants:

- A session cookie holds an ordinary bearer token (the local issuer's, minted at sign-in, or the
  external issuer's own), so it is checked by the same ``Verifier``, roles and grants as any
  token. The cookie is HttpOnly (no script reads it), SameSite=Lax, Secure behind HTTPS, and
  lasts no longer than its token; the browser keeps no token anywhere else (no localStorage).
- A sign-in code (`muster ui`) is a token of the local issuer for another audience
  (``SIGN_IN_AUDIENCE``), valid for ``SIGN_IN_SECONDS``: a code is never accepted as a bearer
  token, and a bearer token is never accepted as a code. The gateway spends a code's ``jti`` in
  the database before it signs anyone in, so each code signs in at most once, on any replica.
- A request that a cookie authenticates and that may change something (any method but GET, HEAD
  and OPTIONS) must carry ``X-CSRF-Token`` equal to ``csrf_token(cookie)``: a one-way hash of the
  cookie that only a page of the gateway's own origin can know (the pages put it in a meta
  tag). Such a request is also refused when the browser says it comes from another site
  (``Origin``, ``Sec-Fetch-Site``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from joserfc.jwk import KeySet

from gateway.auth.tokens import mint

SESSION_COOKIE = "muster_session"
#: The state, PKCE verifier, nonce and destination of an OIDC sign-in in progress.
FLOW_COOKIE = "muster_sign_in"
CSRF_HEADER = "X-CSRF-Token"
SIGN_IN_AUDIENCE = "muster-ui-sign-in"
SIGN_IN_SECONDS = 60
FLOW_SECONDS = 600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CSRF_LABEL = b"muster dashboard csrf v1"


def csrf_token(session: str) -> str:
    """The CSRF token of a session cookie: a one-way function of it, so a page that can show it
    was served to the cookie's holder, and a site that cannot read the cookie cannot make it."""
    digest = hmac.digest(_CSRF_LABEL, session.encode(errors="replace"), "sha256")
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def csrf_matches(session: str, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(
        csrf_token(session).encode(), sent.encode(errors="replace")
    )


def mint_sign_in_code(
    keys: KeySet,
    *,
    subject: str,
    groups: Iterable[str],
    groups_claim: str = "groups",
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A one-time sign-in code for the dashboard: the claims a token of ``subject`` would have,
    for the sign-in audience, valid for SIGN_IN_SECONDS."""
    return mint(
        keys,
        audience=SIGN_IN_AUDIENCE,
        subject=subject,
        groups=groups,
        ttl_seconds=SIGN_IN_SECONDS,
        groups_claim=groups_claim,
        extra=extra,
    )


def new_secret() -> str:
    """A random value for an OIDC state, nonce or PKCE verifier (43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


def pkce_challenge(verifier: str) -> str:
    """RFC 7636's S256 code challenge of ``verifier``."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
