"""Webhook routes: a job's deliveries and their attempts, redelivery, and secret rotation; and the
submit-time check of a job's callback URL against the SSRF guard."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from aiohttp import web

from gateway.api.auth import actor, check_job, check_tenant
from gateway.api.context import ENGINE, SETTINGS
from gateway.api.serializers import json_response, timestamp
from gateway.db import jobs as job_rows
from gateway.db import webhooks as rows
from gateway.db.tenants import new_webhook_secret
from gateway.domain.access import Action
from gateway.domain.jobs.spec import JobSpec
from gateway.domain.problems import FieldProblem, pointer
from gateway.domain.webhooks import webhook_id
from gateway.settings import Settings
from gateway.webhooks.ssrf import Guard

routes = web.RouteTableDef()


def guard(settings: Settings) -> Guard:
    return Guard.from_settings(settings.webhooks.allow_nets, settings.webhooks.allow_http)


def callback_problems(settings: Settings, spec: JobSpec) -> list[FieldProblem]:
    """The SSRF guard's refusal of the job's callback URL, if any, as a 422 problem."""
    if spec.callback is None:
        return []
    refusal = guard(settings).check_url(spec.callback.url)
    if refusal is None:
        return []
    return [FieldProblem(pointer=pointer("callback", "url"), detail=refusal.detail)]


def attempt_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "number": row["number"],
        "attempted_at": timestamp(row["attempted_at"]),
        "duration_ms": row["duration_ms"],
        "status_code": row["status_code"],
        "error": row["error"],
        "outcome": row["outcome"],
    }


def delivery_view(delivery: rows.Delivery) -> dict[str, Any]:
    row = delivery.row
    pending = row["status"] == "pending"
    return {
        "id": str(row["id"]),
        "webhook_id": webhook_id(str(row["id"])),
        "job_id": str(row["job_id"]),
        "type": row["event_type"],
        "url": row["url"],
        "status": row["status"],
        "attempt_count": row["attempts"],
        "next_attempt_at": timestamp(row["next_attempt_at"]) if pending else None,
        "last_error": row["last_error"],
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
        "delivered_at": timestamp(row["delivered_at"]),
        "attempts": [attempt_view(a) for a in delivery.attempts],
    }


@routes.get("/v1/jobs/{id}/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    check_job(request, await job_rows.get(request.app[ENGINE], job_id))
    found = await rows.for_job(request.app[ENGINE], job_id)
    return json_response({"items": [delivery_view(d) for d in found]})


@routes.post("/v1/jobs/{id}/deliveries/{delivery}/redeliver")
async def redeliver(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    check_job(request, await job_rows.get(request.app[ENGINE], job_id), Action.REDELIVER)
    delivery = await rows.redeliver(
        request.app[ENGINE], request.match_info["id"], request.match_info["delivery"]
    )
    return json_response(delivery_view(delivery), status=202)


@routes.post("/v1/tenants/{tenant}/webhook-secret/rotate")
async def rotate_secret(request: web.Request) -> web.Response:
    tenant = request.match_info["tenant"]
    check_tenant(request, tenant, Action.ROTATE_WEBHOOK_SECRET)
    rotated = await rows.rotate_secret(
        request.app[ENGINE], tenant, new_webhook_secret(), actor=actor(request)
    )
    overlap = timedelta(seconds=request.app[SETTINGS].webhooks.secret_overlap)
    return json_response(
        {
            "tenant": rotated.tenant,
            "webhook_secret": rotated.secret,
            "rotated_at": timestamp(rotated.rotated_at),
            "previous_secret_valid_until": timestamp(rotated.rotated_at + overlap),
        }
    )
