"""Service routes: liveness, readiness and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from gateway.api.context import ENGINE
from gateway.api.schema import openapi_document
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
