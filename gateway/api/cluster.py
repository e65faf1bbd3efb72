"""Cluster and tenant status: what the cluster offers, what is free, and each tenant's usage.

Invariant: GET /v1/cluster shows every caller each GPU device's holders and their shares, but
names a holder's tenant and job only to a caller who may read that tenant; what the others
hold on a device is one anonymous holder after the named ones, their shares summed, so a caller
learns neither whose they are nor how many pods or jobs they are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from typing import Any

from aiohttp import web

from gateway.api.auth import check_tenant, require_role
from gateway.api.context import ENGINE, INVENTORY
from gateway.api.serializers import json_response, tenant_status_view
from gateway.db import tenants as tenant_store
from gateway.db.admission import load_holdings
from gateway.db.device_holders import DeviceHolder, load_device_holders
from gateway.domain.access import Action
from gateway.domain.resources import (
    GPU_SHARES_PER_DEVICE,
    format_cpu,
    format_extended,
    format_gpu,
    format_memory,
)
from gateway.domain.scheduling.capacity import free_capacity

routes = web.RouteTableDef()


@routes.get("/v1/cluster")
async def cluster(request: web.Request) -> web.Response:
    readable = require_role(request).tenants(Action.READ)  # None: an admin reads every tenant
    nodes = await request.app[INVENTORY].nodes()
    async with request.app[ENGINE].connect() as conn:
        holdings = await load_holdings(conn)
        holders = _holders_by_device(await load_device_holders(conn), readable)
    free = {f.name: f for f in free_capacity(nodes, holdings)}
    items = []
    totals = {"cpu": 0, "memory": 0, "gpu": 0, "free_cpu": 0, "free_memory": 0, "free_gpu": 0}
    extended: dict[str, list[int]] = {}  # name -> [capacity, free] over ready nodes
    for node in sorted(nodes, key=lambda n: n.name):
        left = free[node.name]
        gpu_free = sum(left.gpu)
        left_extended = dict(left.extended)
        items.append(
            {
                "name": node.name,
                "ready": node.ready,
                "gpu_mode": node.gpu_mode.value,
                "labels": dict(node.labels),
                "capacity": {
                    "cpu": format_cpu(node.cpu_millis),
                    "memory": format_memory(node.memory_bytes),
                    "gpu": node.gpu_devices,
                },
                "free": {
                    "cpu": format_cpu(max(left.cpu_millis, 0)),
                    "memory": format_memory(max(left.memory_bytes, 0)),
                    "gpu": format_gpu(max(gpu_free, 0)),
                },
                "gpu_devices": [
                    {
                        "index": i,
                        "free_shares": shares,
                        "holders": holders.get((node.name, i), []),
                    }
                    for i, shares in enumerate(left.gpu)
                ],
                "extended": {
                    name: {
                        "capacity": format_extended(name, amount),
                        "free": format_extended(name, max(left_extended.get(name, 0), 0)),
                    }
                    for name, amount in sorted(node.extended.items())
                },
            }
        )
        if node.ready:
            for name, amount in node.extended.items():
                sums = extended.setdefault(name, [0, 0])
                sums[0] += amount
                sums[1] += max(left_extended.get(name, 0), 0)
        if node.ready:
            totals["cpu"] += node.cpu_millis
            totals["memory"] += node.memory_bytes
            totals["gpu"] += node.gpu_devices * GPU_SHARES_PER_DEVICE
            totals["free_cpu"] += max(left.cpu_millis, 0)
            totals["free_memory"] += max(left.memory_bytes, 0)
            totals["free_gpu"] += max(gpu_free, 0)
    return json_response(
        {
            "nodes": items,
            "capacity": {
                "cpu": format_cpu(totals["cpu"]),
                "memory": format_memory(totals["memory"]),
                "gpu": format_gpu(totals["gpu"]),
            },
            "free": {
                "cpu": format_cpu(totals["free_cpu"]),
                "memory": format_memory(totals["free_memory"]),
                "gpu": format_gpu(totals["free_gpu"]),
            },
            "extended": {
                name: {
                    "capacity": format_extended(name, capacity),
                    "free": format_extended(name, left),
                }
                for name, (capacity, left) in sorted(extended.items())
            },
        }
    )


def _holders_by_device(
    holders: Iterable[DeviceHolder], readable: Collection[str] | None
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Each device's holders as GET /v1/cluster shows them, by (node, device index): named where
    the caller may read the tenant (``readable``; None: every tenant), by tenant then job; then
    what tenants it may not read hold there, as one anonymous holder of their shares together,
    so a caller learns how much of a device others use but not how many pods or jobs."""
    found: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    hidden: dict[tuple[str, int], int] = defaultdict(int)
    for holder in holders:
        device = (holder.node, holder.device)
        if readable is not None and holder.tenant not in readable:
            hidden[device] += holder.shares
            continue
        found[device].append(
            {
                "tenant": holder.tenant,
                "job_id": holder.job_id,
                "job_name": holder.job_name,
                "shares": holder.shares,
            }
        )
    for listed in found.values():
        listed.sort(key=lambda h: (h["tenant"], h["job_name"], h["job_id"], h["shares"]))
    for device, shares in hidden.items():
        found[device].append({"tenant": None, "job_id": None, "job_name": None, "shares": shares})
    return found


@routes.get("/v1/tenants/{tenant}")
async def tenant_status(request: web.Request) -> web.Response:
    name = request.match_info["tenant"]
    check_tenant(request, name)
    status = await tenant_store.status(request.app[ENGINE], name)
    return json_response(tenant_status_view(status))
