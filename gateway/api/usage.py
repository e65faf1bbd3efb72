"""GET /v1/tenants/{tenant}/usage: what a tenant's jobs held in a time window."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client.registry import Collector

from gateway.api.auth import check_tenant
from gateway.api.context import ENGINE
from gateway.api.serializers import json_response
from gateway.db.usage import Consumption, tenant_usage
from gateway.errors import BadRequest
from gateway.logs import bind

IS_LEADER: web.AppKey[Callable[[], bool]] = web.AppKey("is_leader")
COLLECTORS: web.AppKey[tuple[Collector, ...]] = web.AppKey("collectors")

routes = web.RouteTableDef()


def _instant(query: Mapping[str, str], key: str, default: datetime) -> datetime:
    raw = query.get(key)
    if raw is None:
        return default
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise BadRequest(f"{key} must be an RFC 3339 date-time") from exc
    if value.tzinfo is None:
        raise BadRequest(f"{key} must carry a time zone offset")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+00:01 is before year 1 in UTC
        raise BadRequest(f"{key} is out of range") from exc


def _flag(query: Mapping[str, str], key: str) -> bool:
    raw = query.get(key, "false")
    if raw not in ("true", "false"):
        raise BadRequest(f"{key} must be true or false")
    return raw == "true"


def _consumption_view(consumed: Consumption) -> dict[str, float]:
    return {
        "cpu_core_hours": consumed.cpu_core_hours,
        "memory_gib_hours": consumed.memory_gib_hours,
        "gpu_hours": consumed.gpu_hours,
    }


@routes.get("/v1/tenants/{tenant}/usage")
async def usage(request: web.Request) -> web.Response:
    name = request.match_info["tenant"]
    check_tenant(request, name)
    bind(tenant=name)
    now = datetime.now(UTC)
    until = _instant(request.query, "to", now)
    since = _instant(request.query, "from", datetime(1970, 1, 1, tzinfo=UTC))
    if since >= until:
        raise BadRequest("from must be before to")
    per_job = _flag(request.query, "per_job")
    jobs = await tenant_usage(request.app[ENGINE], name, since, until)
    total = Consumption(
        cpu_core_hours=sum(j.consumed.cpu_core_hours for j in jobs),
        memory_gib_hours=sum(j.consumed.memory_gib_hours for j in jobs),
        gpu_hours=sum(j.consumed.gpu_hours for j in jobs),
    )
    body: dict[str, Any] = {
        "tenant": name,
        "from": since.isoformat().replace("+00:00", "Z"),
        "to": until.isoformat().replace("+00:00", "Z"),
        **_consumption_view(total),
    }
    if per_job:
        body["jobs"] = [
            {"id": j.job_id, "name": j.name, **_consumption_view(j.consumed)} for j in jobs
        ]
    return json_response(body)
