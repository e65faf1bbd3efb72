"""Service routes: liveness, readiness, the OpenAPI document and the local issuer's keys."""

from __future__ import annotations

import asyncio

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from gateway.api.context import ENGINE, SETTINGS
from gateway.api.schema import openapi_document
from gateway.auth.keys import local_key_set, public_jwks
from gateway.errors import DatabaseUnavailable

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    try:
        async with request.app[ENGINE].connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (OSError, DBAPIError, OperationalError) as exc:
        raise DatabaseUnavailable(str(exc)) from exc
    return web.json_response({"status": "ok"})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    """The local issuer's public keys; none when an external issuer is configured (its tokens
    are the only ones accepted then)."""
    settings = request.app[SETTINGS]
    if settings.oidc_issuer is not None:
        return web.json_response({"keys": []})
    keys = await asyncio.to_thread(local_key_set, settings.issuer_key_file)
    return web.json_response(public_jwks(keys), headers={"Cache-Control": "max-age=300"})
