"""Small helpers the API integration tests share: a tenant to submit to, valid job specs, row
counts that show whether a request wrote anything, and a reader of the event stream."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import ClientResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.admission import (
    CycleResult,
    LeaderQueue,
    places_to_write,
    run_cycle,
    write_places,
)
from gateway.domain.scheduling.nodes import Node
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


async def grant_priority(api: CheckedClient, ceiling: int, name: str = TENANT) -> None:
    """As an admin, let tenant ``name`` submit jobs of priority up to ``ceiling``."""
    response = await api.patch(f"/v1/admin/tenants/{name}", json={"max_priority": ceiling})
    assert response.status == 200, response.text
    assert response.body["max_priority"] == ceiling


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


STREAM_ID = re.compile(r"([0-9]+)-([0-9]+)")
STREAM_READ_SECONDS = 10  # a bound on a wait for an event, so a lost one fails instead of hanging


class EventStream:
    """An open GET /v1/events response, read one event at a time."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response

    async def next(self) -> dict[str, Any]:
        """The next event's data, with its SSE id under ``stream_id``. Checks that the SSE id is
        ``<txid>-<id>`` with the event's id, and that the SSE event is its type."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(STREAM_READ_SECONDS):
            while True:
                line = (await self.response.content.readline()).decode().rstrip("\n")
                if line:
                    if not line.startswith(":"):  # comments keep the connection alive
                        key, _, value = line.partition(": ")
                        fields[key] = value
                    continue
                if "data" in fields:
                    break
                fields = {}
        event: dict[str, Any] = json.loads(fields["data"])
        position = STREAM_ID.fullmatch(fields["id"])
        assert position is not None, fields["id"]
        assert position[2] == str(event["id"])
        assert fields["event"] == event["type"]
        return {**event, "stream_id": fields["id"]}


@contextlib.asynccontextmanager
async def event_stream(
    api: CheckedClient, query: str = "", last_event_id: str | None = None
) -> AsyncIterator[EventStream]:
    """GET /v1/events?query (resuming after ``last_event_id``), disconnected on exit."""
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    if api.token is not None:
        headers["Authorization"] = f"Bearer {api.token}"
    response = await api.client.get(f"/v1/events?{query}", headers=headers)
    try:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert response.headers["X-Request-ID"]
        yield EventStream(response)
    finally:
        response.close()


async def admit_and_place(
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
    queue: LeaderQueue,
    clock: Callable[[], float],
    *,
    starvation_seconds: float = 300,
) -> CycleResult:
    """One admission cycle, then the pass that writes every queued job's positions and the
    reasons of jobs no cycle considers (the loop runs both; tests run them one after the other)."""
    result = await run_cycle(
        engine, nodes, queue, clock=clock, starvation_seconds=starvation_seconds
    )
    await write_places(engine, queue, places_to_write(result.snapshot, queue.jobs, queue))
    return result
