"""Proof that a server holds the local issuer's private key: the client commands ask for one
before they send it a token of their own.

The client sends a fresh random challenge to ``GET /v1/issuer/proof`` without a token; the
gateway answers ``{"kid", "proof"}``, where the proof is HMAC-SHA256 over a fixed label, the
signing key's kid, the port the gateway received the request on and the challenge, under a key
derived (HKDF-SHA256, fixed label) from the signing key's private part. The client, which reads
the same key file, computes the same HMAC and compares.

Invariants:

- Only a holder of the private signing key can answer: the derived key is a one-way function of
  the private part, and HMAC answers to chosen challenges reveal nothing about it. The derived
  key serves nothing else, and a proof cannot pass for a token (tokens are RS256; the verifier
  refuses HMAC algorithms), so the public endpoint helps nobody forge a token.
- A proof is bound to its challenge (fresh per command, so an old proof cannot be replayed), to
  the key that will sign the token (the client requires its own signing key's kid, so the token
  goes only to a server that could have minted it itself), and to the port (an impostor on a
  loopback port cannot relay the challenge to a real gateway on another port and pass its proof
  off as its own; a gateway behind a port mapping or a proxy cannot prove either, and the user
  passes a token instead).
- One HMAC per request, with the derived key computed once per key: an unauthenticated endpoint
  doing an RSA signature per request would let anyone buy a millisecond of gateway CPU per
  request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import KeySet

from gateway.auth.keys import signing_key
from gateway.errors import ProofRefused

#: 32 to 128 URL-safe characters; the client's own is 43 (32 random bytes).
CHALLENGE = re.compile(r"[A-Za-z0-9_-]{32,128}")
_KEY_LABEL = b"muster issuer proof key v1"
_PROOF_LABEL = b"muster issuer proof v1"


@dataclass(frozen=True, kw_only=True, repr=False)
class ProofKey:
    """The HMAC key derived from one issuer key, and that key's kid. Never shown (no repr)."""

    kid: str
    secret: bytes


def proof_key(keys: KeySet) -> ProofKey:
    """The proof key of the key set's signing key (its first key)."""
    key = signing_key(keys)
    private = key.as_dict(private=True).get("d")
    if not isinstance(private, str) or not isinstance(key.kid, str):
        raise ValueError("the local issuer's signing key has no private part or no kid")
    material = base64.urlsafe_b64decode(private + "=" * (-len(private) % 4))
    # HKDF (RFC 5869) with SHA-256, no salt, one block of output.
    extracted = hmac.digest(b"\0" * hashlib.sha256().digest_size, material, "sha256")
    secret = hmac.digest(extracted, _KEY_LABEL + b"\x01", "sha256")
    return ProofKey(kid=key.kid, secret=secret)


def new_challenge() -> str:
    return secrets.token_urlsafe(32)


def prove(key: ProofKey, *, challenge: str, port: int) -> dict[str, str]:
    """The answer to ``challenge`` received on ``port``. The challenge must match CHALLENGE."""
    return {"kid": key.kid, "proof": _mac(key, challenge, port)}


def check_proof(key: ProofKey, answer: Any, *, challenge: str, port: int) -> None:
    """Pass when ``answer`` proves, for ``challenge`` on ``port``, that its sender holds the key
    ``key`` was derived from; else ProofRefused."""
    if not isinstance(answer, dict):
        raise ProofRefused("its answer to the challenge is not a proof")
    kid, proof = answer.get("kid"), answer.get("proof")
    if not isinstance(kid, str) or not isinstance(proof, str):
        raise ProofRefused("its answer to the challenge is not a proof")
    if kid != key.kid:
        raise ProofRefused(f"it holds issuer key {kid[:64]!r}, not this machine's {key.kid!r}")
    expected = _mac(key, challenge, port).encode()
    if not hmac.compare_digest(proof.encode(errors="replace"), expected):
        raise ProofRefused("its proof does not verify")


def _mac(key: ProofKey, challenge: str, port: int) -> str:
    message = b"\0".join((_PROOF_LABEL, key.kid.encode(), str(port).encode(), challenge.encode()))
    digest = hmac.digest(key.secret, message, "sha256")
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
