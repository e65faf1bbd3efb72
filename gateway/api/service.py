"""Service routes: liveness, readiness, the OpenAPI document and the local issuer's keys."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from gateway.api.context import ENGINE, SETTINGS
from gateway.api.schema import openapi_document
from gateway.api.views import json_response
from gateway.auth.keys import local_key_set, public_jwks
from gateway.errors import DatabaseUnavailable

routes = web.RouteTableDef()
JWKS_CACHE: web.AppKey[dict[str, Any]] = web.AppKey("jwks_cache")


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    try:
        async with request.app[ENGINE].connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (OSError, DBAPIError, OperationalError) as exc:
        raise DatabaseUnavailable(str(exc)) from exc
    return json_response({"status": "ok"})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    """The local issuer's public keys; none when an external issuer is configured (its tokens
    are the only ones accepted then), or before the key exists.

    Anyone may ask, so the answer is built once per version of the key file (its mtime and
    size), not by reading and checking the private key on every request."""
    settings = request.app[SETTINGS]
    if settings.oidc_issuer is not None:
        return json_response({"keys": []})
    path = settings.issuer_key_file
    try:
        stat = path.stat()
    except FileNotFoundError:
        return json_response({"keys": []})
    version = (stat.st_mtime_ns, stat.st_size)
    cached = request.app[JWKS_CACHE]
    if cached.get("version") != version:
        keys = await asyncio.to_thread(local_key_set, path)
        cached.clear()
        cached.update(version=version, body=json.dumps(public_jwks(keys)))
    return web.Response(
        text=cached["body"],
        content_type="application/json",
        headers={"Cache-Control": "max-age=300"},
    )
