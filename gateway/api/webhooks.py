"""Webhook routes: a job's deliveries and their attempts, redelivery, and secret rotation; and the
submit-time check of a job's callback URL against the SSRF guard."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from gateway.api.auth import actor, check_job, check_tenant
from gateway.api.context import ENGINE, SETTINGS
from gateway.api.serializers import json_response, timestamp
from gateway.db import jobs as job_store
from gateway.db import webhooks as outbox
from gateway.db.tenants import new_webhook_secret
from gateway.domain.access import Action
from gateway.domain.jobs.spec import JobSpec
from gateway.domain.problems import FieldProblem, pointer
from gateway.domain.webhooks import Delivery, DeliveryAttempt, DeliveryStatus, webhook_id
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


def attempt_view(attempt: DeliveryAttempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "attempted_at": timestamp(attempt.attempted_at),
        "duration_ms": attempt.duration_ms,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "outcome": attempt.outcome.value,
    }


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    pending = delivery.status is DeliveryStatus.PENDING
    return {
        "id": delivery.id,
        "webhook_id": webhook_id(delivery.id),
        "job_id": delivery.job_id,
        "type": delivery.event_type.value,
        "url": delivery.url,
        "status": delivery.status.value,
        "attempt_count": delivery.attempt_count,
        "next_attempt_at": timestamp(delivery.next_attempt_at) if pending else None,
        "last_error": delivery.last_error,
        "created_at": timestamp(delivery.created_at),
        "updated_at": timestamp(delivery.updated_at),
        "delivered_at": timestamp(delivery.delivered_at),
        "attempts": [attempt_view(a) for a in delivery.attempts],
    }


@routes.get("/v1/jobs/{id}/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    check_job(request, await job_store.get(request.app[ENGINE], job_id))
    found = await outbox.for_job(request.app[ENGINE], job_id)
    return json_response({"items": [delivery_view(d) for d in found]})


@routes.post("/v1/jobs/{id}/deliveries/{delivery}/redeliver")
async def redeliver(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    check_job(request, await job_store.get(request.app[ENGINE], job_id), Action.REDELIVER)
    delivery = await outbox.redeliver(
        request.app[ENGINE], request.match_info["id"], request.match_info["delivery"]
    )
    return json_response(delivery_view(delivery), status=202)


@routes.post("/v1/tenants/{tenant}/webhook-secret/rotate")
async def rotate_secret(request: web.Request) -> web.Response:
    tenant = request.match_info["tenant"]
    check_tenant(request, tenant, Action.ROTATE_WEBHOOK_SECRET)
    rotated = await outbox.rotate_secret(
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
