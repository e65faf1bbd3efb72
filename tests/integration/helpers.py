"""Small helpers the API integration tests share: a tenant to submit to, valid job specs, and row
counts that show whether a request wrote anything."""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.openapi_check import CheckedClient

TENANT = "search"
QUOTA: dict[str, Any] = {
    "cpu": "100",
    "memory": "1Ti",
    "gpu": 8,
    "max_running_jobs": 10,
    "max_queued_jobs": 100,
}
COUNTED_TABLES = ("jobs", "job_events", "tenants", "audit_log")


def tenant_body(**quota: Any) -> dict[str, Any]:
    """The body of PUT /v1/admin/tenants/<name>: the standard quota, ``quota`` overriding it."""
    return {"quota": {**QUOTA, **quota}}


async def create_tenant(api: CheckedClient, name: str = TENANT, **body: Any) -> dict[str, Any]:
    """Create a tenant with the standard quota; ``body`` entries replace the body's top level."""
    payload = {**tenant_body(), **body}
    response = await api.put(f"/v1/admin/tenants/{name}", json=payload)
    assert response.status == 201, response.text
    tenant: dict[str, Any] = response.body
    return tenant


def job_spec(name: str = "wd", *, tenant: str = TENANT, **fields: Any) -> dict[str, Any]:
    """A valid generic job with one worker; ``fields`` replace top-level entries."""
    spec: dict[str, Any] = {
        "name": name,
        "tenant": tenant,
        "replicas": {"worker": {"count": 2, "image": "reg/wd:1"}},
    }
    spec.update(copy.deepcopy(fields))
    return spec


async def submit(api: CheckedClient, spec: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = await api.post("/v1/jobs", json=spec, **kwargs)
    assert response.status == 201, response.text
    job: dict[str, Any] = response.body
    return job


async def row_counts(engine: AsyncEngine) -> dict[str, int]:
    """How many rows each table that a request could write holds."""
    counts: dict[str, int] = {}
    async with engine.connect() as conn:
        for table in COUNTED_TABLES:
            counts[table] = int(await conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
    return counts
