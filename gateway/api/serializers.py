"""Rows -> the JSON the API returns. The shapes are the OpenAPI document's Job, Event, Tenant.

Every JSON body the API sends is encoded by ``json_response`` (orjson: compact UTF-8, several
times faster than the standard library on job documents).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.domain.resources import format_cpu, format_gpu, format_memory
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


def job_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "tenant": row["tenant"],
        "framework": row["framework"],
        "state": row["state"],
        "reason": row["reason"],
        "message": row["message"],
        "priority": row["priority"],
        "attempt": row["attempt"],
        "labels": row["labels"],
        "spec": row["spec"],
        "submitted_by": row["submitted_by"],
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
        "admitted_at": timestamp(row["admitted_at"]),
        "started_at": timestamp(row["started_at"]),
        "finished_at": timestamp(row["finished_at"]),
        "queue": None
        if row["state"] != "queued" or row["queue_position"] is None
        else {"position": row["queue_position"], "tenant_position": row["tenant_queue_position"]},
    }


def event_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "job_id": str(row["job_id"]),
        "type": row["type"],
        "from_state": row["from_state"],
        "to_state": row["to_state"],
        "reason": row["reason"],
        "message": row["message"],
        "actor": row["actor"],
        "data": row["data"],
        "created_at": timestamp(row["created_at"]),
    }


def tenant_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "name": row["name"],
        "namespace": row["namespace"],
        "quota": {
            "cpu": format_cpu(row["quota_cpu_millis"]),
            "memory": format_memory(row["quota_memory_bytes"]),
            "gpu": format_gpu(row["quota_gpu_shares"]),
            "max_running_jobs": row["max_running_jobs"],
            "max_queued_jobs": row["max_queued_jobs"],
        },
        "weight": row["weight"],
        "max_priority": row["max_priority"],
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
    }


def audit_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "actor": row["actor"],
        "action": row["action"],
        "tenant": row["tenant"],
        "before": row["before"],
        "after": row["after"],
        "created_at": timestamp(row["created_at"]),
    }


def usage_view(cpu: int, memory: int, gpu: int) -> dict[str, Any]:
    return {"cpu": format_cpu(cpu), "memory": format_memory(memory), "gpu": format_gpu(gpu)}


def tenant_status_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        **tenant_view(row),
        "usage": usage_view(int(row["used_cpu"]), int(row["used_memory"]), int(row["used_gpu"])),
        "running_jobs": int(row["running_jobs"]),
        "queued_jobs": int(row["queued_jobs"]),
    }
