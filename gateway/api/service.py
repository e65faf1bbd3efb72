"""Service routes: liveness, readiness, the OpenAPI document, and the local issuer's public keys
and its proof of holding the private one (``gateway.auth.proof``).

The key routes are public, so what they derive from the key file is computed once per version of
the file (its mtime and size), not per request: an unauthenticated caller costs a stat() and, for
a proof, one HMAC.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from sqlalchemy import text

from gateway.api.context import ENGINE, RUNTIME, SETTINGS
from gateway.api.schema import openapi_document
from gateway.api.serializers import json_response
from gateway.auth.keys import local_key_set, public_jwks
from gateway.auth.proof import CHALLENGE, ProofKey, proof_key, prove
from gateway.errors import BadRequest, IssuerUnavailable, NotFound

routes = web.RouteTableDef()


@dataclass(frozen=True, kw_only=True)
class LocalIssuer:
    """What the public routes serve from one version of the local issuer's key file."""

    version: tuple[int, int]
    jwks_body: str
    proof_key: ProofKey


ISSUER_CACHE: web.AppKey[dict[str, LocalIssuer]] = web.AppKey("issuer_cache")


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers (else 503). The cluster's state is reported beside it:
    an API server outage degrades reconciling, not the API, so it does not make the replica
    unready."""
    # A database that cannot answer raises DatabaseUnavailable (gateway.db.engine): a 503.
    async with request.app[ENGINE].connect() as conn:
        await conn.execute(text("SELECT 1"))
    runtime = request.app[RUNTIME]
    trouble = None if runtime is None else runtime.health()
    cluster = {"status": "ok"} if trouble is None else {"status": "unknown", "detail": trouble}
    return json_response({"status": "ok", "cluster": cluster})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())


async def _local_issuer(request: web.Request) -> LocalIssuer | None:
    """The local issuer's current key file, as the public routes serve it; None when an
    external issuer is configured or before the key file exists."""
    settings = request.app[SETTINGS]
    if settings.auth.oidc_issuer is not None:
        return None
    path = settings.issuer_key_file
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    version = (stat.st_mtime_ns, stat.st_size)
    cache = request.app[ISSUER_CACHE]
    cached = cache.get("current")
    if cached is None or cached.version != version:
        try:
            keys = await asyncio.to_thread(local_key_set, path)
        except (OSError, ValueError) as exc:  # unreadable, or no key set with a private key
            raise _unreadable(path, exc) from exc
        cached = LocalIssuer(
            version=version, jwks_body=json.dumps(public_jwks(keys)), proof_key=proof_key(keys)
        )
        cache["current"] = cached
    return cached


def _unreadable(path: Path, exc: Exception) -> IssuerUnavailable:
    return IssuerUnavailable(f"the local issuer's key {path} cannot be read: {exc}")


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    """The local issuer's public keys; none when an external issuer is configured (its tokens
    are the only ones accepted then), or before the key exists."""
    issuer = await _local_issuer(request)
    if issuer is None:
        return json_response({"keys": []})
    return web.Response(
        text=issuer.jwks_body,
        content_type="application/json",
        headers={"Cache-Control": "max-age=300"},
    )


@routes.get("/v1/issuer/proof")
async def issuer_proof(request: web.Request) -> web.Response:
    """Proof that this gateway holds the local issuer's signing key, for the client commands
    before they send a token of their own: an HMAC bound to the caller's challenge, the key's kid
    and the port this request arrived on (see ``gateway.auth.proof``)."""
    if request.app[SETTINGS].auth.oidc_issuer is not None:
        raise NotFound("this gateway's tokens come from an external issuer: it has no key to prove")
    challenge = request.query.get("challenge", "")
    if not CHALLENGE.fullmatch(challenge):
        raise BadRequest("challenge must be 32 to 128 URL-safe characters (A-Z, a-z, 0-9, - and _)")
    issuer = await _local_issuer(request)
    if issuer is None:
        raise NotFound("the local issuer has no key yet")
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        raise NotFound("this gateway can prove its key only over TCP")
    answer = prove(issuer.proof_key, challenge=challenge, port=int(sockname[1]))
    return json_response(answer, headers={"Cache-Control": "no-store"})
