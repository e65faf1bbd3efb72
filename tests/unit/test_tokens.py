"""Bearer token verification (gateway.auth.tokens.Verifier) over the key cache
(gateway.auth.keys.CachedKeys), with an in-memory issuer and an injected clock: the JWT attacks a
verifier must refuse, the claims it checks, and when it refetches the issuer's keys.

No test sleeps: time is the ``Clock`` below, which both the verifier (token times) and the key
cache (refresh intervals) read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from gateway.auth.keys import CachedKeys, local_key_set, public_jwks
from gateway.auth.proof import CHALLENGE as CHALLENGE_PATTERN
from gateway.auth.proof import ProofKey, check_proof, new_challenge, proof_key, prove
from gateway.auth.tokens import LOCAL_ISSUER, Verifier, mint
from gateway.errors import ConfigError, InvalidToken, IssuerUnavailable, ProofRefused
from gateway.settings import Settings

ISSUER = "https://idp.example"
AUDIENCE = "muster"
START = 1_700_000_000.0
LEEWAY = 30
MIN_REFRESH = 10.0
MAX_AGE = 3600.0


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeIssuer:
    """A JWKS loader in memory: publishes ``keys``, counts calls, fails while ``down``."""

    def __init__(self, *keys: RSAKey | ECKey) -> None:
        self.keys = list(keys)
        self.down = False
        self.calls = 0

    async def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("the issuer does not answer")
        return public_jwks(KeySet(self.keys))


def rsa_key(kid: str | None = None) -> RSAKey:
    key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
    if kid is None:
        return key
    return RSAKey.import_key({**key.as_dict(private=True), "kid": kid})


@pytest.fixture(scope="module")
def key() -> RSAKey:
    return rsa_key()


@pytest.fixture(scope="module")
def other_key() -> RSAKey:
    return rsa_key()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(key: RSAKey) -> FakeIssuer:
    return FakeIssuer(key)


@pytest.fixture
def keys(issuer: FakeIssuer, clock: Clock) -> CachedKeys:
    return CachedKeys(issuer, clock=clock, min_refresh=MIN_REFRESH, max_age=MAX_AGE)


@pytest.fixture
def verifier(keys: CachedKeys, clock: Clock) -> Verifier:
    return Verifier(
        keys=keys,
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=("RS256", "ES256"),
        leeway=LEEWAY,
        clock=clock,
    )


def claims(clock: Clock, **changes: Any) -> dict[str, Any]:
    """Good claims for the verifier above; a change to None drops that claim."""
    now = int(clock())
    found: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "ada",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "groups": ["muster:a:viewer"],
    }
    found.update(changes)
    return {k: v for k, v in found.items() if v is not None}


def sign(
    found: Mapping[str, Any], key: RSAKey | ECKey, *, alg: str = "RS256", kid: str | None = None
) -> str:
    header = {"alg": alg, "typ": "JWT", "kid": key.kid if kid is None else kid}
    return jwt.encode(header, dict(found), key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: Mapping[str, Any], found: Mapping[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(found).encode()), b64(signature)]
    )


def hs256(found: Mapping[str, Any], secret: bytes, kid: str) -> str:
    """An HS256 token whose HMAC secret is ``secret``: the classic key-confusion forgery."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64(json.dumps(found).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(mac)}"


async def refused(verifier: Verifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    return str(caught.value)


# --- the good path --------------------------------------------------------------------------


async def test_a_valid_token_is_accepted_with_its_claims(
    verifier: Verifier, key: RSAKey, clock: Clock
) -> None:
    good = claims(clock)
    assert await verifier.verify(sign(good, key)) == good


async def test_a_token_minted_by_the_local_issuer_verifies(
    key: RSAKey, clock: Clock, keys: CachedKeys
) -> None:
    token = mint(
        KeySet([key]),
        audience=AUDIENCE,
        subject="ada",
        groups=["muster:a:submitter", "muster:a:submitter"],
        ttl_seconds=600,
        now=clock(),
        email="ada@example.com",
    )
    local = Verifier(
        keys=keys, issuer=LOCAL_ISSUER, audience=AUDIENCE, algorithms=("RS256",), clock=clock
    )
    found = await local.verify(token)

    assert found["iss"] == LOCAL_ISSUER
    assert found["sub"] == "ada"
    assert found["email"] == "ada@example.com"
    assert found["groups"] == ["muster:a:submitter"]
    assert found["exp"] == int(clock()) + 600


async def test_a_token_without_a_kid_verifies_when_the_issuer_has_one_key(
    verifier: Verifier, key: RSAKey, clock: Clock
) -> None:
    token = jwt.encode({"alg": "RS256"}, claims(clock), key, algorithms=["RS256"])
    assert (await verifier.verify(token))["sub"] == "ada"


async def test_a_token_without_a_kid_is_refused_when_the_issuer_has_several_keys(
    verifier: Verifier, issuer: FakeIssuer, key: RSAKey, other_key: RSAKey, clock: Clock
) -> None:
    issuer.keys.append(other_key)
    token = jwt.encode({"alg": "RS256"}, claims(clock), key, algorithms=["RS256"])
    assert "no key None" in await refused(verifier, token)


# --- algorithm attacks ----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_an_unsigned_token_alg_none_is_refused(
    verifier: Verifier, key: RSAKey, clock: Clock, issuer: FakeIssuer, alg: str
) -> None:
    token = unsigned({"alg": alg, "typ": "JWT", "kid": key.kid}, claims(clock))
    assert "is not accepted" in await refused(verifier, token)
    assert issuer.calls == 0  # refused before any key is looked at


def _secrets_from_public_key(key: RSAKey) -> dict[str, bytes]:
    public = key.as_dict(private=False)
    pem = key.get_op_key("verify").public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "jwk-json": json.dumps(public).encode(),
        "jwk-json-sorted": json.dumps(public, sort_keys=True, separators=(",", ":")).encode(),
        "pem": pem,
        "modulus": public["n"].encode(),
    }


@pytest.mark.parametrize("form", ["jwk-json", "jwk-json-sorted", "pem", "modulus"])
async def test_hs256_signed_with_the_published_rsa_public_key_is_refused(
    verifier: Verifier, key: RSAKey, clock: Clock, form: str
) -> None:
    secret = _secrets_from_public_key(key)[form]
    token = hs256(claims(clock), secret, key.kid)

    assert "'HS256' is not accepted" in await refused(verifier, token)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", "none"])
def test_a_verifier_cannot_be_built_to_allow_hmac_or_none(keys: CachedKeys, alg: str) -> None:
    with pytest.raises(ValueError, match="not allowed"):
        Verifier(keys=keys, issuer=ISSUER, audience=AUDIENCE, algorithms=("RS256", alg))


@pytest.mark.parametrize("value", ["HS256", "RS256,HS256", "none", "RS256,none", ""])
def test_the_settings_parser_refuses_hmac_and_none_algorithms(value: str) -> None:
    with pytest.raises(ConfigError, match="MUSTER_OIDC_ALGORITHMS"):
        Settings.load({"XDG_DATA_HOME": "/srv", "MUSTER_OIDC_ALGORITHMS": value})


async def test_an_allowed_algorithm_the_verifier_was_not_configured_for_is_refused(
    keys: CachedKeys, key: RSAKey, clock: Clock
) -> None:
    only_es = Verifier(
        keys=keys, issuer=ISSUER, audience=AUDIENCE, algorithms=("ES256",), clock=clock
    )
    assert "'RS256' is not accepted" in await refused(only_es, sign(claims(clock), key))


async def test_es256_naming_the_kid_of_a_published_rsa_key_is_refused(
    verifier: Verifier, key: RSAKey, clock: Clock
) -> None:
    forger = ECKey.generate_key("P-256")
    token = sign(claims(clock), forger, alg="ES256", kid=key.kid)

    assert "cannot verify ES256" in await refused(verifier, token)


async def test_rs256_naming_the_kid_of_a_published_ec_key_is_refused(
    verifier: Verifier, issuer: FakeIssuer, key: RSAKey, clock: Clock
) -> None:
    ec = ECKey.generate_key("P-256", auto_kid=True)
    issuer.keys.append(ec)
    token = sign(claims(clock), key, kid=ec.kid)

    assert "cannot verify RS256" in await refused(verifier, token)


async def test_a_token_signed_by_another_key_with_the_published_kid_is_refused(
    verifier: Verifier, key: RSAKey, other_key: RSAKey, clock: Clock
) -> None:
    token = sign(claims(clock), other_key, kid=key.kid)
    assert "signature does not verify" in await refused(verifier, token)


async def test_a_token_whose_payload_was_changed_after_signing_is_refused(
    verifier: Verifier, key: RSAKey, clock: Clock
) -> None:
    header, _, signature = sign(claims(clock), key).split(".")
    forged = b64(json.dumps(claims(clock, groups=["muster-admins"])).encode())
    assert "signature does not verify" in await refused(verifier, f"{header}.{forged}.{signature}")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        "a.b",
        "a.b.c.d.e",  # a JWE's shape
        "ünïcode.x.y",
        b64(b"[1, 2]") + ".e30.",
        b64(b"not json") + ".e30.c2ln",
        "x" * 5000,
    ],
    ids=[
        "empty",
        "word",
        "three-dots",
        "two-parts",
        "five-parts",
        "non-ascii",
        "header-array",
        "header-not-json",
        "long",
    ],
)
async def test_garbage_that_is_not_a_jwt_is_refused(verifier: Verifier, token: str) -> None:
    assert "not a signed JWT" in await refused(verifier, token)


async def test_a_kid_that_is_not_a_string_is_refused(
    verifier: Verifier, key: RSAKey, clock: Clock
) -> None:
    token = unsigned({"alg": "RS256", "kid": 7}, claims(clock), b"sig")
    assert "kid is not a string" in await refused(verifier, token)


# --- claims ---------------------------------------------------------------------------------


async def test_an_expired_token_is_refused(verifier: Verifier, key: RSAKey, clock: Clock) -> None:
    token = sign(claims(clock, exp=int(clock()) - LEEWAY - 1), key)
    assert "expired" in await refused(verifier, token)


async def test_a_token_expired_less_than_the_leeway_ago_is_accepted(
    verifier: Verifier, key: RSAKey, clock: Clock
) -> None:
    token = sign(claims(clock, exp=int(clock()) - LEEWAY + 5), key)
    assert (await verifier.verify(token))["sub"] == "ada"


async def test_a_token_not_valid_yet_is_refused(
    verifier: Verifier, key: RSAKey, clock: Clock
) -> None:
    token = sign(claims(clock, nbf=int(clock()) + LEEWAY + 60), key)
    message = await refused(verifier, token)
    assert "not yet valid" in message or "not valid yet" in message


async def test_a_token_valid_within_the_leeway_from_now_is_accepted(
    verifier: Verifier, key: RSAKey, clock: Clock
) -> None:
    token = sign(claims(clock, nbf=int(clock()) + LEEWAY - 5), key)
    assert (await verifier.verify(token))["sub"] == "ada"


async def test_a_token_of_another_issuer_is_refused(
    verifier: Verifier, key: RSAKey, clock: Clock
) -> None:
    message = await refused(verifier, sign(claims(clock, iss="https://evil.example"), key))
    assert message == f"the token was not issued by {ISSUER}"


@pytest.mark.parametrize("aud", ["other-client", ["other-client", "another"], ""])
async def test_a_token_for_another_audience_is_refused(
    verifier: Verifier, key: RSAKey, clock: Clock, aud: object
) -> None:
    message = await refused(verifier, sign(claims(clock, aud=aud), key))
    assert message == f"the token is not meant for audience {AUDIENCE!r}"


async def test_a_token_whose_audience_list_names_muster_is_accepted(
    verifier: Verifier, key: RSAKey, clock: Clock
) -> None:
    token = sign(claims(clock, aud=["other-client", AUDIENCE]), key)
    assert (await verifier.verify(token))["sub"] == "ada"


@pytest.mark.parametrize("claim", ["aud", "exp", "sub", "iss"])
async def test_a_token_missing_an_essential_claim_is_refused(
    verifier: Verifier, key: RSAKey, clock: Clock, claim: str
) -> None:
    message = await refused(verifier, sign(claims(clock, **{claim: None}), key))
    assert "lacks a claim" in message
    assert repr(claim) in message


@pytest.mark.parametrize(
    ("claim", "value"),
    [("exp", "tomorrow"), ("exp", True), ("nbf", "now"), ("sub", 42), ("sub", "")],
)
async def test_a_claim_of_the_wrong_type_is_refused(
    verifier: Verifier, key: RSAKey, clock: Clock, claim: str, value: object
) -> None:
    await refused(verifier, sign(claims(clock, **{claim: value}), key))


async def test_a_remembered_token_is_refused_once_it_expires(
    verifier: Verifier, key: RSAKey, clock: Clock, issuer: FakeIssuer
) -> None:
    token = sign(claims(clock, exp=int(clock()) + 60), key)
    assert (await verifier.verify(token))["sub"] == "ada"
    clock.advance(60 + LEEWAY - 1)
    assert (await verifier.verify(token))["sub"] == "ada"  # within the leeway: still good
    loads = issuer.calls

    clock.advance(2)
    assert await refused(verifier, token) == "the token has expired"
    assert await refused(verifier, token) == "the token has expired"
    assert issuer.calls == loads  # refused from memory, without another look at the keys


# --- keys: rotation, rate limits, failures --------------------------------------------------


async def test_keys_load_lazily_once_for_many_tokens(
    verifier: Verifier, keys: CachedKeys, key: RSAKey, clock: Clock
) -> None:
    assert keys.loads == 0
    for n in range(20):
        await verifier.verify(sign(claims(clock, sub=f"user-{n}"), key))
    assert keys.loads == 1


async def test_a_new_kid_after_rotation_is_accepted_after_exactly_one_refetch(
    verifier: Verifier, keys: CachedKeys, issuer: FakeIssuer, key: RSAKey, clock: Clock
) -> None:
    await verifier.verify(sign(claims(clock), key))
    assert keys.loads == 1
    rotated = rsa_key()
    issuer.keys.insert(0, rotated)  # the issuer publishes a new key; the old one stays
    clock.advance(MIN_REFRESH)

    found = await verifier.verify(sign(claims(clock, sub="after-rotation"), rotated))

    assert found["sub"] == "after-rotation"
    assert keys.loads == 2
    # both keys now verify without another load
    await verifier.verify(sign(claims(clock, sub="old-key"), key))
    await verifier.verify(sign(claims(clock, sub="new-key"), rotated))
    assert keys.loads == 2


async def test_a_new_kid_within_min_refresh_of_the_last_load_waits_for_the_next_refresh(
    verifier: Verifier, keys: CachedKeys, issuer: FakeIssuer, key: RSAKey, clock: Clock
) -> None:
    await verifier.verify(sign(claims(clock), key))
    rotated = rsa_key()
    issuer.keys.append(rotated)
    clock.advance(MIN_REFRESH / 2)

    assert "publishes no key" in await refused(verifier, sign(claims(clock), rotated))
    assert keys.loads == 1  # no load: the last one was too recent

    clock.advance(MIN_REFRESH / 2)
    assert (await verifier.verify(sign(claims(clock), rotated)))["sub"] == "ada"
    assert keys.loads == 2


async def test_a_removed_key_stops_verifying_after_the_keys_are_reloaded(
    verifier: Verifier, keys: CachedKeys, issuer: FakeIssuer, key: RSAKey, clock: Clock
) -> None:
    await verifier.verify(sign(claims(clock), key))
    rotated = rsa_key()
    issuer.keys = [rotated]
    clock.advance(MAX_AGE)

    await verifier.verify(sign(claims(clock), rotated))
    assert "publishes no key" in await refused(verifier, sign(claims(clock, sub="new"), key))


async def test_an_unknown_kid_that_never_appears_is_refused_without_a_refetch_storm(
    verifier: Verifier, keys: CachedKeys, issuer: FakeIssuer, other_key: RSAKey, clock: Clock
) -> None:
    await verifier.verify(sign(claims(clock), issuer.keys[0]))
    clock.advance(MIN_REFRESH)  # the next unknown kid may cause one load
    loads = keys.loads

    for n in range(100):
        token = sign(claims(clock, sub=f"forger-{n}"), other_key, kid=f"forged-{n}")
        assert "publishes no key" in await refused(verifier, token)
        clock.advance(MIN_REFRESH / 200)  # 100 requests within min_refresh

    assert keys.loads - loads <= 1
    assert issuer.calls == keys.loads


async def test_an_unknown_kid_causes_at_most_one_load_per_min_refresh(
    verifier: Verifier, keys: CachedKeys, other_key: RSAKey, clock: Clock
) -> None:
    for n in range(50):  # 5 requests a second for 10 periods of min_refresh
        token = sign(claims(clock, sub=f"forger-{n}"), other_key, kid="forged")
        await refused(verifier, token)
        clock.advance(MIN_REFRESH / 5)
    assert keys.loads <= 11


async def test_an_issuer_down_at_first_load_makes_keys_unavailable(
    verifier: Verifier, keys: CachedKeys, issuer: FakeIssuer, key: RSAKey, clock: Clock
) -> None:
    issuer.down = True
    token = sign(claims(clock), key)

    with pytest.raises(IssuerUnavailable, match="does not answer"):
        await verifier.verify(token)
    with pytest.raises(IssuerUnavailable):  # again at once: no new load, still unavailable
        await verifier.verify(token)
    assert keys.loads == 1

    issuer.down = False
    clock.advance(MIN_REFRESH)
    assert (await verifier.verify(token))["sub"] == "ada"
    assert keys.loads == 2


async def test_an_issuer_failing_later_keeps_serving_the_keys_it_had(
    verifier: Verifier, keys: CachedKeys, issuer: FakeIssuer, key: RSAKey, clock: Clock
) -> None:
    await verifier.verify(sign(claims(clock), key))
    issuer.down = True
    clock.advance(MAX_AGE)  # the keys are due for a refresh, which fails

    assert (await verifier.verify(sign(claims(clock, sub="later"), key)))["sub"] == "later"
    await settle()  # the refresh runs in the background
    assert keys.loads == 2
    # an unknown kid is a bad token, not an unavailable issuer
    clock.advance(MIN_REFRESH)
    assert "publishes no key" in await refused(verifier, sign(claims(clock), key, kid="unknown"))


@pytest.mark.parametrize(
    "document",
    [{}, {"keys": "nope"}, {"keys": [{"kty": "RSA"}]}, {"keys": [{"kty": "nope", "kid": "k"}]}],
    ids=["no-keys", "keys-not-a-list", "rsa-without-n", "unknown-kty"],
)
async def test_a_malformed_jwks_at_first_load_makes_keys_unavailable(
    clock: Clock, document: dict[str, Any]
) -> None:
    async def loader() -> Mapping[str, Any]:
        return document

    with pytest.raises(IssuerUnavailable):
        await CachedKeys(loader, clock=clock).get("k")


async def test_symmetric_keys_in_a_jwks_are_never_used(clock: Clock, key: RSAKey) -> None:
    async def loader() -> Mapping[str, Any]:
        return {"keys": [{"kty": "oct", "kid": "shared", "k": b64(b"secret" * 8)}]}

    cached = CachedKeys(loader, clock=clock)
    assert await cached.get("shared") is None


# --- the local issuer's key file ------------------------------------------------------------


def test_the_local_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "issuer-key.json"
    first = local_key_set(path)
    second = local_key_set(path)

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [k.kid for k in first.keys] == [k.kid for k in second.keys]
    assert all(k.is_private for k in first.keys)
    assert not any(p.name.startswith(".issuer-key-") for p in path.parent.iterdir())


def test_the_published_jwks_holds_public_parts_only(tmp_path: Path) -> None:
    document = public_jwks(local_key_set(tmp_path / "k.json"))

    assert len(document["keys"]) == 1
    published = document["keys"][0]
    assert published["kty"] == "RSA"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(published)


async def settle() -> None:
    """Let background tasks (a key refresh) run to their next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_keys_due_for_a_refresh_keep_serving_while_a_slow_issuer_answers(
    clock: Clock, key: RSAKey
) -> None:
    release = asyncio.Event()
    loads = 0

    async def loader() -> Mapping[str, Any]:
        nonlocal loads
        loads += 1
        if loads > 1:
            await release.wait()  # the issuer hangs on the refresh
        return {"keys": [key.as_dict(private=False)]}

    keys = CachedKeys(loader, clock=clock, min_refresh=MIN_REFRESH, max_age=MAX_AGE)
    assert await keys.get(key.kid) is not None
    clock.advance(MAX_AGE)
    # While the refresh hangs, requests are answered from the keys already loaded.
    for _ in range(10):
        assert await keys.get(key.kid) is not None
    await settle()
    assert loads == 2
    release.set()
    await settle()


# --- the local issuer's proof of holding its key (gateway.auth.proof) -----------------------

CHALLENGE = "c" * 43
PORT = 8080


def test_a_proof_verifies_with_the_key_read_again_from_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "issuer-key.json"
    server_side = proof_key(local_key_set(path))
    client_side = proof_key(local_key_set(path))

    answer = prove(server_side, challenge=CHALLENGE, port=PORT)

    assert answer["kid"] == local_key_set(path).keys[0].kid
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", answer["proof"])
    check_proof(client_side, answer, challenge=CHALLENGE, port=PORT)


def _forged(ours: ProofKey, theirs: ProofKey) -> dict[str, dict[str, Any]]:
    """Answers a server without our key (or on another port) could give, by how it got them."""
    genuine = prove(ours, challenge=CHALLENGE, port=PORT)
    return {
        "a proof for another challenge": prove(ours, challenge="d" * 43, port=PORT),
        "a proof relayed from a gateway on another port": prove(
            ours, challenge=CHALLENGE, port=PORT + 1
        ),
        "a proof made with another key, naming ours": {
            **prove(theirs, challenge=CHALLENGE, port=PORT),
            "kid": ours.kid,
        },
        "a genuine proof of another key": prove(theirs, challenge=CHALLENGE, port=PORT),
        "our proof with one character changed": {
            **genuine,
            "proof": ("A" if genuine["proof"][0] != "A" else "B") + genuine["proof"][1:],
        },
        "our proof with base64 padding": {**genuine, "proof": genuine["proof"] + "="},
        "an empty proof": {**genuine, "proof": ""},
        "a proof that is not text": {**genuine, "proof": 12345},
        "a proof in non-ASCII text": {**genuine, "proof": "é" * 43},
        "no proof": {"kid": ours.kid},
        "no kid": {"proof": genuine["proof"]},
    }


@pytest.mark.parametrize(
    "case",
    [
        "a proof for another challenge",
        "a proof relayed from a gateway on another port",
        "a proof made with another key, naming ours",
        "a genuine proof of another key",
        "our proof with one character changed",
        "our proof with base64 padding",
        "an empty proof",
        "a proof that is not text",
        "a proof in non-ASCII text",
        "no proof",
        "no kid",
    ],
)
def test_a_proof_is_refused_unless_made_with_our_key_for_our_challenge_and_port(
    key: RSAKey, other_key: RSAKey, case: str
) -> None:
    ours, theirs = proof_key(KeySet([key])), proof_key(KeySet([other_key]))
    answer = _forged(ours, theirs)[case]

    with pytest.raises(ProofRefused):
        check_proof(ours, answer, challenge=CHALLENGE, port=PORT)


@pytest.mark.parametrize("answer", [None, [], "proof", 1, {"items": []}])
def test_an_answer_that_is_not_a_proof_document_is_refused(key: RSAKey, answer: Any) -> None:
    with pytest.raises(ProofRefused, match="not a proof"):
        check_proof(proof_key(KeySet([key])), answer, challenge=CHALLENGE, port=PORT)


def test_a_refusal_for_another_key_names_both_kids(key: RSAKey, other_key: RSAKey) -> None:
    ours, theirs = proof_key(KeySet([key])), proof_key(KeySet([other_key]))

    with pytest.raises(ProofRefused) as caught:
        check_proof(
            ours, prove(theirs, challenge=CHALLENGE, port=PORT), challenge=CHALLENGE, port=PORT
        )

    assert str(other_key.kid) in str(caught.value)
    assert str(key.kid) in str(caught.value)


def test_a_proof_key_does_not_show_its_secret(key: RSAKey) -> None:
    derived = proof_key(KeySet([key]))

    assert b64(derived.secret) not in repr(derived)
    assert derived.secret.hex() not in repr(derived)


@pytest.mark.parametrize(
    ("challenge", "valid"),
    [
        ("a" * 32, True),
        ("A-z_0" * 25 + "abc", True),  # 128
        ("a" * 31, False),
        ("a" * 129, False),
        ("a" * 42 + "=", False),
        ("a" * 42 + "/", False),
        ("a" * 42 + "\n", False),
        ("é" * 43, False),
        ("", False),
    ],
)
def test_a_challenge_is_32_to_128_url_safe_characters(challenge: str, valid: bool) -> None:
    assert bool(CHALLENGE_PATTERN.fullmatch(challenge)) is valid


def test_each_new_challenge_is_fresh_and_valid() -> None:
    challenges = {new_challenge() for _ in range(100)}

    assert len(challenges) == 100
    assert all(CHALLENGE_PATTERN.fullmatch(challenge) for challenge in challenges)
