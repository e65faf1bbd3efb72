"""The dashboard's pages: Queue, Jobs, Job, Cluster, Tenants and Admin.

Each handler asks the API for what it shows (``views.api_get``) and renders one template. A page
is also its own live fragment: the script fetches the page again (``X-Muster-Live: 1``) when an
event arrives and swaps the parts marked ``data-live``, so a page never shows anything its
server-rendered form would not.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.api.auth import access
from gateway.api.dashboard.render import render
from gateway.api.dashboard.views import api_get, page
from gateway.domain.access import Action
from gateway.domain.lifecycle.states import EventType, JobState
from gateway.errors import Forbidden, NotFound

routes = web.RouteTableDef()
JOB_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

QUEUE_PAGE = "100"
JOBS_PAGE = "50"
AUDIT_PAGE = "50"
USAGE_HOURS = 24
EVENT_TYPES = " ".join(kind.value for kind in EventType)


def events_url(**filters: str) -> str:
    """The event stream a page follows: events from now on, of the page's job or tenant."""
    return "/v1/events?" + urlencode({"after": "now", **filters})


async def readable_tenants(request: web.Request) -> list[str]:
    """The tenants the caller may read: its own, or every tenant for a platform admin."""
    tenants = access(request).tenants(Action.READ)
    if tenants is not None:
        return sorted(tenants)
    listed = await api_get(request, "/v1/admin/tenants")
    return sorted(item["name"] for item in listed["items"])


def _query(request: web.Request, *keys: str) -> dict[str, str]:
    return {key: request.query[key] for key in keys if request.query.get(key)}


@routes.get("/ui")
@routes.get("/ui/")
async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/ui/queue")


@routes.get("/ui/queue")
@page
async def queue(request: web.Request) -> web.StreamResponse:
    filters = _query(request, "tenant", "cursor")
    listed, tenants = await asyncio.gather(
        api_get(request, "/v1/queue", {**filters, "limit": QUEUE_PAGE}),
        readable_tenants(request),
    )
    return render(
        request,
        "queue.html",
        {
            "title": "Queue",
            "jobs": listed["items"],
            "next_cursor": listed["next_cursor"],
            "tenants": tenants,
            "filters": filters,
            "events": events_url(**_query(request, "tenant")),
            "event_types": EVENT_TYPES,
        },
    )


@routes.get("/ui/jobs")
@page
async def jobs(request: web.Request) -> web.StreamResponse:
    filters = _query(request, "state", "tenant", "label", "cursor")
    listed, tenants = await asyncio.gather(
        api_get(request, "/v1/jobs", {**filters, "limit": JOBS_PAGE, "order": "newest"}),
        readable_tenants(request),
    )
    return render(
        request,
        "jobs.html",
        {
            "title": "Jobs",
            "jobs": listed["items"],
            "next_cursor": listed["next_cursor"],
            "tenants": tenants,
            "states": [state.value for state in JobState],
            "filters": filters,
            "events": events_url(**_query(request, "tenant")),
            "event_types": EVENT_TYPES,
        },
    )


@routes.get("/ui/jobs/{id}")
@page
async def job(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["id"]
    if not JOB_ID.fullmatch(job_id):  # as the API answers an id that is not a job's
        raise NotFound(f"job {job_id[:100]!r} does not exist")
    found = await api_get(request, f"/v1/jobs/{job_id}")
    replicas, events, deliveries = await asyncio.gather(
        api_get(request, f"/v1/jobs/{job_id}/replicas"),
        api_get(request, f"/v1/jobs/{job_id}/events"),
        api_get(request, f"/v1/jobs/{job_id}/deliveries"),
    )
    caller = access(request)
    tenant = found["tenant"]
    return render(
        request,
        "job.html",
        {
            "title": f"Job {found['name']}",
            "job": found,
            "replicas": replicas["items"],
            "replica_names": _replica_names(found["spec"]),
            "timeline": events["items"],
            "deliveries": deliveries["items"],
            "may_cancel": caller.may(tenant, Action.CANCEL)
            and found["state"] not in TERMINAL_STATES,
            "may_redeliver": caller.may(tenant, Action.REDELIVER),
            "follow": found["state"] not in TERMINAL_STATES,
            "spec_text": _spec_text(found["spec"]),
            "events": events_url(job=found["id"]),
            "event_types": EVENT_TYPES,
        },
    )


TERMINAL_STATES = frozenset(state.value for state in JobState if state.terminal)


def _replica_names(spec: dict[str, Any]) -> list[str]:
    """worker-0, worker-1, ... of each role of the spec, in its order."""
    names: list[str] = []
    for role, replica in spec.get("replicas", {}).items():
        names.extend(f"{role}-{index}" for index in range(int(replica.get("count", 1))))
    return names


def _spec_text(spec: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(spec, sort_keys=False, default_flow_style=False, width=100))


@routes.get("/ui/cluster")
@page
async def cluster(request: web.Request) -> web.StreamResponse:
    found = await api_get(request, "/v1/cluster")
    holders = [
        holder["tenant"]
        for node in found["nodes"]
        for device in node["gpu_devices"]
        for holder in device["holders"]
    ]
    tenants = sorted({tenant for tenant in holders if tenant is not None})
    return render(
        request,
        "cluster.html",
        {
            "title": "Cluster",
            "cluster": found,
            "legend": tenants,
            "hidden_holders": None in holders,
            "events": events_url(),
            "event_types": EVENT_TYPES,
        },
    )


@routes.get("/ui/tenants")
@page
async def tenants(request: web.Request) -> web.StreamResponse:
    names = await readable_tenants(request)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    window = {
        "from": (now - timedelta(hours=USAGE_HOURS)).isoformat(),
        "to": now.isoformat(),
        "step": "3600",
    }
    statuses = await asyncio.gather(*(api_get(request, f"/v1/tenants/{n}") for n in names))
    usages = await asyncio.gather(
        *(api_get(request, f"/v1/tenants/{n}/usage", window) for n in names)
    )
    rows = [
        {"status": status, "series": usage.get("series", []), "gpu_hours": usage["gpu_hours"]}
        for status, usage in zip(statuses, usages, strict=True)
    ]
    return render(
        request,
        "tenants.html",
        {
            "title": "Tenants",
            "rows": rows,
            "usage_hours": USAGE_HOURS,
            "events": events_url(),
            "event_types": EVENT_TYPES,
        },
    )


@routes.get("/ui/admin")
@page
async def admin(request: web.Request) -> web.StreamResponse:
    if not access(request).admin:
        raise Forbidden("only platform admins may see the admin page")
    filters = _query(request, "tenant", "cursor")
    listed, audit = await asyncio.gather(
        api_get(request, "/v1/admin/tenants"),
        api_get(request, "/v1/admin/audit", {**filters, "limit": AUDIT_PAGE}),
    )
    grants = await asyncio.gather(
        *(api_get(request, f"/v1/admin/tenants/{t['name']}/grants") for t in listed["items"])
    )
    return render(
        request,
        "admin.html",
        {
            "title": "Admin",
            "tenants": listed["items"],
            "grants": dict(zip((t["name"] for t in listed["items"]), grants, strict=True)),
            "audit": audit["items"],
            "next_cursor": audit["next_cursor"],
            "filters": filters,
            "events": "",
            "event_types": "",
        },
    )
