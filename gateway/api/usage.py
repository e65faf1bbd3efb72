"""GET /v1/tenants/{tenant}/usage: what a tenant's jobs held in a time window, and with
``step`` as a series of buckets of that many seconds (at most ``MAX_BUCKETS`` of them, so one
request costs a bounded statement)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from prometheus_client.registry import Collector

from gateway.api.auth import check_tenant
from gateway.api.context import ENGINE
from gateway.api.serializers import json_response
from gateway.db.usage import Consumption, bucket_count, tenant_usage
from gateway.errors import BadRequest
from gateway.logs import bind

IS_LEADER: web.AppKey[Callable[[], bool]] = web.AppKey("is_leader")
COLLECTORS: web.AppKey[tuple[Collector, ...]] = web.AppKey("collectors")

routes = web.RouteTableDef()

MIN_STEP_SECONDS = 60
MAX_STEP_SECONDS = 30 * 86_400
MAX_BUCKETS = 1000
#: Without ``from``, a series covers the week before ``to`` (a total still starts at the epoch).
SERIES_WINDOW = timedelta(days=7)
STEP = re.compile(r"[0-9]{1,7}")


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


def _step(query: Mapping[str, str]) -> int | None:
    """The ``step`` query parameter: whole seconds, MIN_STEP_SECONDS to MAX_STEP_SECONDS."""
    raw = query.get("step")
    if raw is None:
        return None
    if not STEP.fullmatch(raw) or not MIN_STEP_SECONDS <= int(raw) <= MAX_STEP_SECONDS:
        raise BadRequest(
            f"step must be whole seconds from {MIN_STEP_SECONDS} to {MAX_STEP_SECONDS}"
        )
    return int(raw)


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


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
    step = _step(request.query)
    until = _instant(request.query, "to", now)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    if step is not None:
        try:
            epoch = until - SERIES_WINDOW
        except OverflowError as exc:  # a `to` in the first week of year 1
            raise BadRequest("from must be given when to is this early") from exc
    since = _instant(request.query, "from", epoch)
    if since >= until:
        raise BadRequest("from must be before to")
    per_job = _flag(request.query, "per_job")
    if step is not None and (buckets := bucket_count(since, until, step)) > MAX_BUCKETS:
        raise BadRequest(
            f"step {step} cuts the window into {buckets} buckets; at most {MAX_BUCKETS} are "
            "allowed: make the step longer or the window (from, to) shorter"
        )
    usage = await tenant_usage(request.app[ENGINE], name, since, until, step_seconds=step)
    jobs = usage.jobs
    total = Consumption(
        cpu_core_hours=sum(j.consumed.cpu_core_hours for j in jobs),
        memory_gib_hours=sum(j.consumed.memory_gib_hours for j in jobs),
        gpu_hours=sum(j.consumed.gpu_hours for j in jobs),
    )
    body: dict[str, Any] = {
        "tenant": name,
        "from": _timestamp(since),
        "to": _timestamp(until),
        **_consumption_view(total),
    }
    if per_job:
        body["jobs"] = [
            {"id": j.job_id, "name": j.name, **_consumption_view(j.consumed)} for j in jobs
        ]
    if usage.series is not None:
        body["series"] = [
            {
                "from": _timestamp(bucket.starts),
                "to": _timestamp(bucket.ends),
                **_consumption_view(bucket.consumed),
            }
            for bucket in usage.series
        ]
    return json_response(body)
