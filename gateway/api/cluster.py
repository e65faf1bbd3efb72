"""Cluster and tenant status: what the cluster offers, what is free, and each tenant's usage."""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import check_tenant, require_role
from gateway.api.context import ENGINE, INVENTORY
from gateway.api.serializers import json_response, tenant_status_view
from gateway.db import tenants as tenant_store
from gateway.db.admission import load_holdings
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
    require_role(request)
    nodes = await request.app[INVENTORY].nodes()
    async with request.app[ENGINE].connect() as conn:
        holdings = await load_holdings(conn)
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
                    {"index": i, "free_shares": shares} for i, shares in enumerate(left.gpu)
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


@routes.get("/v1/tenants/{tenant}")
async def tenant_status(request: web.Request) -> web.Response:
    name = request.match_info["tenant"]
    check_tenant(request, name)
    status = await tenant_store.status(request.app[ENGINE], name)
    return json_response(tenant_status_view(status))
