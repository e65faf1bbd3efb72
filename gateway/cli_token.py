"""Tokens of the local issuer on the command line: ``muster token``, and the client commands' own.

Invariants kept here:

- Only the local issuer's tokens are minted, signed with its key (MUSTER_ISSUER_KEY); with an
  external issuer configured (MUSTER_OIDC_ISSUER) minting is refused with a `ConfigError`.
- A lifetime is 1 second to 30 days (`parse_ttl`), refused otherwise before anything is signed.
- `own_token` gives a 10-minute admin token when this user can read the key and an admin group is
  configured, and None otherwise: a missing or unreadable key is never an error of its own.
- That token is minted only after the server at the loopback URL proved it holds the very key
  that signs it (``gateway.auth.proof``: a fresh challenge, sent without any token, answered
  with an HMAC only a holder of the private key can make), so it goes only to a server that
  could have minted it itself. Anything else (an error answer, a redirect, no answer, a proof
  for another challenge, port or key) raises `Unproven` and nothing more is sent; only a
  refused connection stays `Unreachable`, since nothing listens to receive a token.
- ``gateway.auth`` is imported only when a token may be minted (a loopback URL and a readable
  key, or ``muster token``), so the client commands stay light.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.client import Client, is_loopback
from gateway.domain.access import Role, role_group
from gateway.errors import ApiProblem, ConfigError, ProofRefused, Unproven, Unreachable
from gateway.settings import ClientSettings, Settings

if TYPE_CHECKING:
    from joserfc.jwk import KeySet

    from gateway.auth.proof import ProofKey

MAX_TTL_SECONDS = 30 * 86400
OWN_TOKEN_TTL_SECONDS = 600
PROOF_TIMEOUT = 10.0
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    number, unit = (text[:-1], text[-1]) if text[-1:] in _TTL_UNITS else (text, "s")
    if not number.isdigit() or not 0 < int(number) * _TTL_UNITS[unit] <= MAX_TTL_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1s to 30d, such as 90s, 30m, 12h or 7d")
    return int(number) * _TTL_UNITS[unit]


def _login_name() -> str:
    try:
        return os.getlogin()
    except OSError:
        return os.environ.get("USER") or "muster-user"


def mint_token(settings: Settings, args: argparse.Namespace, keys: KeySet | None = None) -> str:
    """A token as ``args`` asks, signed with ``keys`` (by default, read from the key file)."""
    from gateway.auth.keys import local_key_set
    from gateway.auth.tokens import mint

    if settings.auth.oidc_issuer is not None:
        raise ConfigError(
            f"tokens come from {settings.auth.oidc_issuer} (MUSTER_OIDC_ISSUER); "
            "`muster token` mints only the local issuer's"
        )
    groups = [role_group(tenant, Role(args.role)) for tenant in args.tenant]
    if args.admin:
        if not settings.auth.admin_groups:
            raise ConfigError("--admin needs MUSTER_ADMIN_GROUPS to name a group")
        groups.append(settings.auth.admin_groups[0])
    if not groups and not args.group:
        print("muster: this token grants no role (add --tenant or --admin)", file=sys.stderr)
    user = args.user or _login_name()
    return mint(
        keys or local_key_set(settings.issuer_key_file),
        audience=settings.auth.oidc_audience,
        subject=user,
        groups=[*groups, *args.group],
        ttl_seconds=args.ttl,
        groups_claim=settings.auth.oidc_groups_claim,
        extra=_user_claim(settings.auth.oidc_user_claim, user),
    )


def _user_claim(claim: str, user: str) -> dict[str, str] | None:
    """The user claim as an issuer would set it (an email claim only for an address); without
    it the gateway takes the user from sub, which is ``user`` too."""
    if claim == "sub" or (claim == "email" and "@" not in user):
        return None
    return {claim: user}


def own_token(url: str) -> str | None:
    """A short-lived admin token signed with the local issuer's key, for a gateway at ``url`` on
    this machine (a loopback address) that proves it holds that key, when this user can read the
    key and no external issuer is configured; None otherwise. A token is never made for a
    gateway elsewhere.

    Raises Unproven when the server at ``url`` does not prove it holds the key, and Unreachable
    when nothing listens there."""
    if not is_loopback(urlsplit(url).hostname):
        return None
    try:
        settings = Settings.load(os.environ)
    except ConfigError:
        return None
    if settings.auth.oidc_issuer is not None or not settings.auth.admin_groups:
        return None
    if not os.access(settings.issuer_key_file, os.R_OK):
        return None
    from gateway.auth.keys import local_key_set
    from gateway.auth.proof import proof_key

    try:
        keys = local_key_set(settings.issuer_key_file)
        key = proof_key(keys)
    except (OSError, ValueError):
        return None
    _require_proof(url, key)
    args = argparse.Namespace(
        tenant=[], role="viewer", admin=True, user=None, group=[], ttl=OWN_TOKEN_TTL_SECONDS
    )
    try:
        return mint_token(settings, args, keys)
    except (OSError, ValueError, ConfigError):
        return None


def sign_in_link(settings: Settings, args: argparse.Namespace, url: str) -> str:
    """A one-time link that signs a browser in to the dashboard of the gateway at ``url`` as
    ``args`` asks (by default as a platform admin), valid for a minute. The gateway must first
    prove it holds the local issuer's key, as for the client commands' own token."""
    from gateway.auth.keys import local_key_set
    from gateway.auth.proof import proof_key
    from gateway.auth.sessions import mint_sign_in_code

    if settings.auth.oidc_issuer is not None:
        raise ConfigError(
            f"the dashboard signs in through {settings.auth.oidc_issuer} (MUSTER_OIDC_ISSUER): "
            f"open {url}/ui/"
        )
    if not args.tenant and not args.group and not args.admin:
        args.admin = True  # the key's holder is an admin of this gateway anyway
    groups = [role_group(tenant, Role(args.role)) for tenant in args.tenant]
    if args.admin:
        if not settings.auth.admin_groups:
            raise ConfigError("--admin needs MUSTER_ADMIN_GROUPS to name a group")
        groups.append(settings.auth.admin_groups[0])
    keys = local_key_set(settings.issuer_key_file)
    try:
        _require_proof(url, proof_key(keys))
    except (Unproven, Unreachable) as exc:
        message = str(exc).replace("no token was sent", "no sign-in link was made")
        raise ConfigError(message) from exc
    user = args.user or _login_name()
    code = mint_sign_in_code(
        keys,
        subject=user,
        groups=[*groups, *args.group],
        groups_claim=settings.auth.oidc_groups_claim,
        extra=_user_claim(settings.auth.oidc_user_claim, user),
    )
    return f"{url}/ui/login?code={code}"


def _require_proof(url: str, key: ProofKey) -> None:
    """Pass when the server at ``url`` proves it holds the issuer key ``key`` was derived from;
    else raise Unproven (or Unreachable, when the connection is refused)."""
    from gateway.auth.proof import check_proof, new_challenge

    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # a port out of range
        raise ConfigError(f"{url}: {exc}") from exc
    challenge = new_challenge()
    # No token on this client: the challenge travels without one, and redirects are not followed.
    client = Client(ClientSettings(url=url), timeout=PROOF_TIMEOUT)
    try:
        answer = client.issuer_proof(challenge)
    except ApiProblem as exc:
        raise Unproven(url, f"it answered the challenge with HTTP {exc.status}") from exc
    except Unreachable as exc:
        if exc.refused:
            raise
        raise Unproven(url, exc.reason) from exc
    try:
        check_proof(key, answer, challenge=challenge, port=port)
    except ProofRefused as exc:
        raise Unproven(url, str(exc)) from exc
