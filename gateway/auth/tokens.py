"""Bearer tokens: verification (one path for every issuer) and minting for the local issuer.

``Verifier.verify`` accepts a compact JWS only when all of these hold, in this order:

1. its ``alg`` is in the allow-list, which holds asymmetric algorithms only (``none`` and the
   HMAC algorithms are refused by the settings parser, so a public key can never be used as an
   HMAC secret);
2. the issuer publishes a key with its ``kid`` (see ``CachedKeys`` for when keys are refetched),
   of the family its ``alg`` needs;
3. the signature verifies with that key;
4. ``iss`` equals the issuer, ``aud`` names the audience, ``exp`` is present and not passed,
   ``nbf`` (if present) has passed, each with the configured leeway (at most five minutes);
   ``sub`` is present.

A verified token is remembered until it expires (bounded LRU), so a client's repeated requests
cost one dictionary lookup, not one signature check each; a remembered token is still refused
once ``exp`` passes.

The local issuer mints tokens with the same claims an OIDC provider would put in an access token,
and the gateway checks them through this same path, with ``CachedKeys`` reading the key file.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from joserfc import jws, jwt
from joserfc.errors import (
    ExpiredTokenError,
    InvalidClaimError,
    InvalidTokenError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from gateway.auth.keys import LOCAL_ALGORITHM, CachedKeys, signing_key
from gateway.errors import InvalidToken

#: The asymmetric JWS algorithms Muster can verify, by the key type each needs.
ALGORITHM_KEY_TYPES: Mapping[str, type[RSAKey | ECKey | OKPKey]] = {
    "RS256": RSAKey,
    "RS384": RSAKey,
    "RS512": RSAKey,
    "PS256": RSAKey,
    "PS384": RSAKey,
    "PS512": RSAKey,
    "ES256": ECKey,
    "ES384": ECKey,
    "ES512": ECKey,
    "EdDSA": OKPKey,
}

LOCAL_ISSUER = "urn:muster:local-issuer"
MAX_LEEWAY_SECONDS = 300
REMEMBERED_TOKENS = 4096


@dataclass
class Verifier:
    keys: CachedKeys
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    leeway: int = 30
    clock: Callable[[], float] = time.time
    _remembered: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        unknown = set(self.algorithms) - set(ALGORITHM_KEY_TYPES)
        if unknown:
            raise ValueError(f"algorithms not allowed: {', '.join(sorted(unknown))}")
        if not 0 <= self.leeway <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway must be 0..{MAX_LEEWAY_SECONDS} seconds")

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or InvalidToken (a 401). Raises IssuerUnavailable when the
        issuer's keys cannot be loaded at all (a 503: the token may well be good)."""
        remembered = self._remembered.get(token)
        if remembered is not None:
            self._check_times(remembered)
            self._remembered.move_to_end(token)
            return remembered
        claims = await self._verify(token)
        self._remembered[token] = claims
        if len(self._remembered) > REMEMBERED_TOKENS:
            self._remembered.popitem(last=False)
        return claims

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError) as exc:
            raise InvalidToken("the token is not a signed JWT") from exc
        alg = header.get("alg")
        if alg not in self.algorithms:
            allowed = ", ".join(self.algorithms)
            raise InvalidToken(f"the token's algorithm {alg!r} is not accepted (only {allowed})")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the token's kid is not a string")
        key = await self.keys.get(kid)
        if key is None:
            raise InvalidToken(f"the issuer publishes no key {kid!r}")
        if not isinstance(key, ALGORITHM_KEY_TYPES[alg]):
            raise InvalidToken(f"the key {kid!r} cannot verify {alg}")
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except (JoseError, ValueError) as exc:
            raise InvalidToken("the token's signature does not verify") from exc
        claims = dict(decoded.claims)
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self.clock()),
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise InvalidToken("the token has expired") from exc
        except MissingClaimError as exc:
            raise InvalidToken(f"the token lacks a claim: {exc.description}") from exc
        except InvalidClaimError as exc:
            raise InvalidToken(_claim_message(exc, self.issuer, self.audience)) from exc
        except (InvalidTokenError, JoseError) as exc:
            raise InvalidToken(f"the token is not valid: {exc.description}") from exc
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self.clock()
        if now - self.leeway >= claims["exp"]:
            raise InvalidToken("the token has expired")


def _claim_message(exc: InvalidClaimError, issuer: str, audience: str) -> str:
    text = exc.description or ""
    if "'iss'" in text:
        return f"the token was not issued by {issuer}"
    if "'aud'" in text:
        return f"the token is not meant for audience {audience!r}"
    if "'nbf'" in text:
        return "the token is not valid yet (nbf is in the future)"
    if "'iat'" in text:
        return "the token was issued in the future (iat)"
    return f"the token is not valid: {text}"


def mint(
    keys: KeySet,
    *,
    audience: str,
    subject: str,
    groups: Iterable[str],
    ttl_seconds: float,
    now: float | None = None,
    issuer: str = LOCAL_ISSUER,
    email: str | None = None,
    groups_claim: str = "groups",
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A token of the local issuer, signed with the first key of ``keys``."""
    issued = int(time.time() if now is None else now)
    key = signing_key(keys)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl_seconds),
        "jti": uuid4().hex,
        groups_claim: sorted(set(groups)),
        **(extra or {}),
    }
    if email is not None:
        claims["email"] = email
        claims["email_verified"] = True  # the local issuer vouches for what its admin typed
    return jwt.encode({"alg": LOCAL_ALGORITHM, "kid": key.kid, "typ": "JWT"}, claims, key)
