"""Values -> the JSON the API returns. The shapes are the OpenAPI document's Job, Event, Tenant,
Cohort, PriorityClass.

Every JSON body the API sends is encoded by ``json_response`` (orjson: compact UTF-8, several
times faster than the standard library on job documents).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.domain.jobs.policy import policy_document
from gateway.domain.lifecycle.records import Job, JobEvent
from gateway.domain.resources import (
    Resources,
    format_cpu,
    format_extended,
    format_gpu,
    format_memory,
)
from gateway.domain.scheduling.cohorts import CohortTerms, Limits, Standing
from gateway.domain.scheduling.quota import Quota, TenantUsage
from gateway.domain.tenants import (
    AuditEntry,
    Cohort,
    CohortStatus,
    PriorityClassRecord,
    Tenant,
    TenantStatus,
)
from gateway.jsontext import json_bytes


def json_response(
    data: Any,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> web.Response:
    return web.Response(
        body=json_bytes(data),
        status=status,
        headers=headers,
        content_type=content_type,
        charset="utf-8",
    )


def timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def job_view(job: Job) -> dict[str, Any]:
    queue = job.queue
    return {
        "id": job.id,
        "name": job.name,
        "tenant": job.tenant,
        "framework": job.framework.value,
        "state": job.state.value,
        "reason": job.reason,
        "message": job.message,
        "priority": job.priority,
        "priority_class": job.priority_class,
        "preemptible": job.preemptible,
        "attempt": job.attempt,
        "labels": job.labels,
        "spec": job.spec,
        "submitted_by": job.submitted_by,
        "created_at": timestamp(job.created_at),
        "updated_at": timestamp(job.updated_at),
        "admitted_at": timestamp(job.admitted_at),
        "started_at": timestamp(job.started_at),
        "finished_at": timestamp(job.finished_at),
        "queue": None
        if queue is None
        else {"position": queue.position, "tenant_position": queue.tenant_position},
    }


def event_view(event: JobEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "job_id": event.job_id,
        "type": event.type.value,
        "from_state": None if event.from_state is None else event.from_state.value,
        "to_state": None if event.to_state is None else event.to_state.value,
        "reason": event.reason,
        "message": event.message,
        "actor": event.actor,
        "data": event.data,
        "created_at": timestamp(event.created_at),
    }


def limits_view(limits: Limits) -> dict[str, Any]:
    """A cohort member's borrowing or lending limit, in the quota's units; null: no limit."""
    cpu, memory, gpu = limits.cpu_millis, limits.memory_bytes, limits.gpu_shares
    return {
        "cpu": None if cpu is None else format_cpu(cpu),
        "memory": None if memory is None else format_memory(memory),
        "gpu": None if gpu is None else format_gpu(gpu),
    }


def quota_view(quota: Quota, terms: CohortTerms | None = None) -> dict[str, Any]:
    """A tenant's (nominal) quota, with its limits when it is in a cohort."""
    view: dict[str, Any] = {
        "cpu": format_cpu(quota.cpu_millis),
        "memory": format_memory(quota.memory_bytes),
        "gpu": format_gpu(quota.gpu_shares),
        "max_running_jobs": quota.max_running_jobs,
        "max_queued_jobs": quota.max_queued_jobs,
        **{name: format_extended(name, limit) for name, limit in quota.extended},
    }
    if terms is not None:
        view["borrowing_limit"] = limits_view(terms.borrowing_limit)
        view["lending_limit"] = limits_view(terms.lending_limit)
    return view


def tenant_view(tenant: Tenant) -> dict[str, Any]:
    settings = tenant.settings
    return {
        "name": tenant.name,
        "namespace": settings.namespace,
        "quota": quota_view(settings.quota, settings.cohort),
        "cohort": None if settings.cohort is None else settings.cohort.cohort,
        "weight": settings.weight,
        "max_priority": settings.max_priority,
        "priority_classes": list(settings.priority_classes),
        "preemption_policy": settings.preemption_policy.value,
        "pod_policy": policy_document(settings.pod_policy),
        "created_at": timestamp(tenant.created_at),
        "updated_at": timestamp(tenant.updated_at),
    }


def audit_view(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "actor": entry.actor,
        "action": entry.action.value,
        "tenant": entry.tenant,
        "cohort": entry.cohort,
        "priority_class": entry.priority_class,
        "before": entry.before,
        "after": entry.after,
        "created_at": timestamp(entry.created_at),
    }


def usage_view(usage: TenantUsage | Resources) -> dict[str, Any]:
    """An amount of each resource (what a tenant holds, borrows or lends, a cohort's idle
    quota), in the quota's units."""
    return {
        "cpu": format_cpu(usage.cpu_millis),
        "memory": format_memory(usage.memory_bytes),
        "gpu": format_gpu(usage.gpu_shares),
    }


def standing_view(standing: Standing) -> dict[str, Any]:
    return {
        "nominal": usage_view(standing.nominal),
        "borrowed": usage_view(standing.borrowed),
        "lent": usage_view(standing.lent),
    }


def tenant_status_view(status: TenantStatus) -> dict[str, Any]:
    return {
        **tenant_view(status.tenant),
        "usage": usage_view(status.usage),
        **standing_view(status.standing),
        "running_jobs": status.usage.running_jobs,
        "queued_jobs": status.queued_jobs,
    }


def cohort_view(cohort: Cohort) -> dict[str, Any]:
    return {
        "name": cohort.name,
        "description": cohort.description,
        "members": list(cohort.members),
        "created_at": timestamp(cohort.created_at),
        "updated_at": timestamp(cohort.updated_at),
    }


def priority_class_view(record: PriorityClassRecord) -> dict[str, Any]:
    priority_class = record.priority_class
    return {
        "name": priority_class.name,
        "value": priority_class.value,
        "preemptible": priority_class.preemptible,
        "description": record.description,
        "tenants": list(record.tenants),
        "created_at": timestamp(record.created_at),
        "updated_at": timestamp(record.updated_at),
    }


def cohort_status_view(status: CohortStatus) -> dict[str, Any]:
    return {
        **cohort_view(status.cohort),
        "members": [
            {
                "name": member.name,
                "borrowing_limit": limits_view(member.terms.borrowing_limit),
                "lending_limit": limits_view(member.terms.lending_limit),
                **standing_view(member.standing),
            }
            for member in status.members
        ],
        "idle": usage_view(status.idle),
    }
