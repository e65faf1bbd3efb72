"""Admin routes: tenants and their quotas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.api import schema
from gateway.api.body import read_json
from gateway.api.context import ENGINE, SETTINGS, actor
from gateway.api.views import tenant_view
from gateway.db import tenants as tenant_rows
from gateway.domain.jobspec import DNS_1123_LABEL
from gateway.domain.problems import FieldProblem, pointer
from gateway.domain.resources import QuantityError, cpu_millis, gpu_quota_shares, memory_bytes
from gateway.errors import NotFound, ValidationFailed

routes = web.RouteTableDef()


def _tenant_name(request: web.Request) -> str:
    name = request.match_info["tenant"]
    if not DNS_1123_LABEL.fullmatch(name):
        raise NotFound(f"tenant {name!r} does not exist (tenant names are DNS-1123 labels)")
    return name


def tenant_values(name: str, body: Mapping[str, Any]) -> tenant_rows.TenantValues:
    """A schema-valid TenantPut body -> values in Muster's units, or every problem in it."""
    quota = body["quota"]
    problems: list[FieldProblem] = []
    amounts: dict[str, int] = {}
    parsers = (("cpu", cpu_millis), ("memory", memory_bytes), ("gpu", gpu_quota_shares))
    for key, parse in parsers:
        try:
            amounts[key] = parse(quota[key])
        except QuantityError as exc:
            problems.append(FieldProblem(pointer=pointer("quota", key), detail=str(exc)))
    if problems:
        raise ValidationFailed(problems)
    return tenant_rows.TenantValues(
        namespace=body.get("namespace", name),
        quota_cpu_millis=amounts["cpu"],
        quota_memory_bytes=amounts["memory"],
        quota_gpu_shares=amounts["gpu"],
        max_running_jobs=quota["max_running_jobs"],
        max_queued_jobs=quota["max_queued_jobs"],
        weight=float(body.get("weight", 1)),
    )


@routes.put("/v1/admin/tenants/{tenant}")
async def put_tenant(request: web.Request) -> web.Response:
    name = _tenant_name(request)
    body = await read_json(request, request.app[SETTINGS].max_body_bytes)
    problems = schema.check("TenantPut", body)
    if problems:
        raise ValidationFailed(problems)
    row, created = await tenant_rows.put(
        request.app[ENGINE], name, tenant_values(name, body), actor=actor(request)
    )
    headers = {"Location": f"/v1/admin/tenants/{name}"} if created else None
    return web.json_response(tenant_view(row), status=201 if created else 200, headers=headers)


@routes.get("/v1/admin/tenants/{tenant}")
async def get_tenant(request: web.Request) -> web.Response:
    row = await tenant_rows.get(request.app[ENGINE], _tenant_name(request))
    return web.json_response(tenant_view(row))


@routes.get("/v1/admin/tenants")
async def list_tenants(request: web.Request) -> web.Response:
    rows = await tenant_rows.list_all(request.app[ENGINE])
    return web.json_response({"items": [tenant_view(row) for row in rows]})
